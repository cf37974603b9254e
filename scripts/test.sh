#!/usr/bin/env bash
# Run the whole Sluice test suite: formatting, lints, Rust unit and integration tests, and the
# end-to-end suite (real binaries and WebAssembly connectors built from plugins/, read back
# by PyIceberg and DuckDB).
# Installs what it needs: a Python venv with the pinned readers from tests/requirements.txt,
# Debian's PostgreSQL server (catalog tests), s3s-fs, an S3 server from crates.io
# (warehouse tests), tansu, a Kafka-compatible broker from crates.io, Debian's kcat
# (Kafka tests), Debian's mosquitto and its clients (the MQTT connector's broker) and
# Debian's Chromium (the status page, headless). Tests start their own
# instances on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
VENV="${SLUICE_VENV:-$PWD/.venv}"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"

step() { printf '\n==> %s\n' "$*"; }
# Debian packages, through sudo when not root.
apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@"
}

step "python venv ($VENV)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt

step "test services: PostgreSQL (Debian) and s3s-fs (crates.io)"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
fi
TOOLS="${SLUICE_TOOLS:-$HOME/.cache/sluice/tools}"
if [ ! -x "$TOOLS/bin/s3s-fs" ]; then
  cargo install s3s-fs --version 0.14.1 --features binary --locked --root "$TOOLS"
fi
export SLUICE_S3_SERVER="$TOOLS/bin/s3s-fs"

step "Kafka: tansu (a Kafka-compatible broker from crates.io, SQLite storage) and kcat (Debian)"
if ! command -v kcat >/dev/null 2>&1; then
  apt_install kcat
fi
if [ ! -x "$TOOLS/bin/tansu" ]; then
  # About 11 minutes on 2 cores, once: the binary is kept in $TOOLS.
  cargo install tansu --version 0.6.0 --features libsql --locked --root "$TOOLS"
fi
export SLUICE_KAFKA_BROKER="$TOOLS/bin/tansu"

step "MQTT: mosquitto and mosquitto_pub (Debian)"
if [ ! -x /usr/sbin/mosquitto ] || ! command -v mosquitto_pub >/dev/null 2>&1; then
  apt_install mosquitto mosquitto-clients
fi

step "headless browser: Chromium (Debian), for the status page test"
if [ ! -x /usr/bin/chromium ] && [ -z "${SLUICE_CHROMIUM:-}" ]; then
  apt_install chromium
fi

step "cargo fmt --check"
cargo fmt --all -- --check
(cd plugins && cargo fmt --all -- --check)

step "wasm connectors (plugins/: Rust, Python, JavaScript)"
export SLUICE_PLUGIN_DIR="$TARGET_DIR/plugins"
PATH="$VENV/bin:$PATH" plugins/build.sh "$SLUICE_PLUGIN_DIR"

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
(cd plugins && cargo clippy --release --target wasm32-wasip2 --all-targets --locked -- -D warnings)
# Connector logic that needs no host (value parsing) runs as native unit tests.
(cd plugins && cargo test --locked -p postgres-cdc -p mqtt)

step "cargo build (debug binaries)"
cargo build --workspace --bins --locked

step "cargo nextest (unit and integration tests)"
cargo nextest run --workspace --locked --no-fail-fast

step "cargo build -p sluice-agent (as shipped: without the processor's unified features)"
# The workspace build enables features (e.g. arrow's time-zone database) that the agent
# alone does not have; the end-to-end tests run the agent exactly as it is shipped.
cargo build -p sluice-agent --bins --locked

step "end-to-end tests (pytest)"
SLUICE_BIN_DIR="$TARGET_DIR/debug" "$VENV/bin/python" -m pytest tests/e2e -v -p no:cacheprovider "$@"

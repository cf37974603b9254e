#!/usr/bin/env bash
# Build Sluice and run the demo on embedded defaults: a processor and an agent on loopback.
# The agent runs a scenario simulation and a WebAssembly connector with an edge transform,
# ships over QUIC, the processor lands bronze and refines it with SQL models into silver and
# gold; then the demo prints row counts, a query over gold and where the status page is.
# Extra arguments go to `sluice-processor demo` (e.g. --exit to stop at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${SLUICE_PROFILE:-dev}"
cargo build --profile "$PROFILE" --locked --bins
# The connector and the transform, compiled to WebAssembly components from their source.
rustup target add wasm32-wasip2 >/dev/null
(cd plugins && cargo build --release --locked --target wasm32-wasip2 -p counter -p redact)
PLUGINS_TARGET="$(cd plugins && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
OUT=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
exec "$TARGET_DIR/$OUT/sluice-processor" demo --plugins "$PLUGINS_TARGET/wasm32-wasip2/release" "$@"

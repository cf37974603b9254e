#!/usr/bin/env bash
# Build Sluice and run the end-to-end demo: a processor and an agent on loopback, a bounded
# simulation landing in bronze Iceberg tables, then row counts and a sample query.
# Extra arguments go to `sluice-processor demo` (e.g. --rows 1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${SLUICE_PROFILE:-dev}"
cargo build --profile "$PROFILE" --locked --bins
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
OUT=$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
exec "$TARGET_DIR/$OUT/sluice-processor" demo "$@"

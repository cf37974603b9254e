#!/usr/bin/env bash
# Build every connector in plugins/ into one directory of components (default: plugins/dist):
#   Rust (cargo, wasm32-wasip2), Python (componentize-py, from PyPI; must be on PATH) and
#   JavaScript (componentize-js, from npm; preview2-shim is pinned to 0.17.5 because with
#   0.26 componentize-js cannot read the WIT files; `npm install` rather than `npm ci`: npm refuses
#   `ci` when a lock file lacks optional packages of other platforms).
set -euo pipefail
cd "$(dirname "$0")"
OUT="${1:-$PWD/dist}"
mkdir -p "$OUT"

rustup target add wasm32-wasip2 >/dev/null
cargo build --release --locked --target wasm32-wasip2
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
cp "$TARGET_DIR"/wasm32-wasip2/release/*.wasm "$OUT/"

# A connector's `wit-dir` file names the contract it is built against (default: 0.1.0 in
# wit/; 0.2.0 is in wit/v0.2), relative to its directory. One that needs more than the
# contract (wasi:http) lists componentize-py's WIT and world options, one per line, in
# `componentize-args` instead.
for dir in python/*/; do
  name="$(basename "$dir")"
  if [ -f "$dir/componentize-args" ]; then
    mapfile -t args < <(grep -v '^$' "$dir/componentize-args" | tr ' ' '\n')
  else
    args=(-d "$(cat "$dir/wit-dir" 2>/dev/null || echo ../../../wit)" -w source)
  fi
  (cd "$dir" && componentize-py "${args[@]}" componentize app -o "$OUT/python_$name.wasm")
done

for dir in js/*/; do
  name="$(basename "$dir")"
  # componentize-js reads the WIT from inside the project (its file access is sandboxed);
  # only the package's own files (wit/ holds 0.1.0, wit/v0.2 the 0.2.0 contract).
  wit="$(cat "$dir/wit-dir" 2>/dev/null || echo ../wit)"
  rm -rf "$dir/wit" && mkdir "$dir/wit" && cp "$wit"/*.wit "$dir/wit/"
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error \
    && npx componentize-js app.js --wit wit --world-name source -d http -d fetch-event -o "$OUT/js_$name.wasm")
done
ls -l "$OUT"

#!/usr/bin/env bash
# Exports XL-256 (random init) in every attention mode and checks each with the ONNX checker, ONNX Runtime
# (load) and the parameter count read back from the initializers. Needs ~10 GB of disk and a release build.
# Usage: tools/check_xl.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/pixeldit-xl}
mkdir -p "$out"
cargo build --release -q -p pixeldit-cli --bin pixeldit-export
for mode in custom onnx23 decomposed; do
  /usr/bin/time -f "$mode: export wall %e s, peak RSS %M KB" \
    target/release/pixeldit-export --preset XL --random-init -q --attention $mode -o "$out/xl_$mode.onnx"
  .venv/bin/python tools/onnx_check.py check "$out/xl_$mode.onnx"
  echo "$mode: parameters $(.venv/bin/python tools/onnx_check.py params "$out/xl_$mode.onnx")"
  rm -f "$out/xl_$mode.onnx" "$out/xl_$mode.onnx.data"
done

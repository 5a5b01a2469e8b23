#!/usr/bin/env bash
# Exports the released text-to-image model (preset t2i, 1024x1024, random weights) in a release build and checks
# the parameter count, the external data and the peak resident set; then runs the official ONNX checker on it.
# Needs ~5.7 GB of free disk (fp32; ~3 GB with fp16) in PIXELDIT_MEMORY_DIR (default: the temp dir).
#
# Usage: tools/check_t2i_export.sh [fp32|fp16]
set -euo pipefail
cd "$(dirname "$0")/.."
export PIXELDIT_T2I_PRECISION="${1:-fp32}"
cargo test --release -p pixeldit-exporter --test t2i_large -- --nocapture
cargo build --release -p pixeldit-cli --bin pixeldit-export
dir="$(mktemp -d "${PIXELDIT_MEMORY_DIR:-${TMPDIR:-/tmp}}/t2i.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
target/release/pixeldit-export --preset t2i --random-init --precision "$PIXELDIT_T2I_PRECISION" -q -o "$dir/t2i.onnx"
.venv/bin/python tools/onnx_check.py check "$dir/t2i.onnx"
echo "parameters in the graph: $(.venv/bin/python tools/onnx_check.py params "$dir/t2i.onnx") (1302.47M minus the 21.24M dead text-side weights of the last block)"

#!/usr/bin/env bash
# CPU comparison of PixelDiT forwards: pixeldit-run (ORT CPU, tract), Python onnxruntime, PyTorch eager.
#   tools/bench/run.sh                       # tiny and B @256, batch 2 (one CFG step); inserts into BENCHMARKS.md
#   tools/bench/run.sh --presets XL-256 --runs 2 --warmup 1
# Not part of scripts/test.sh: it measures time.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[ -x .venv/bin/python ] || scripts/setup.sh
tools/bench/setup_torch.sh >/dev/null
if ! cargo build --release -q -p pixeldit-cli; then
  [ -x target/release/pixeldit-run ] && [ -x target/release/pixeldit-export ] || exit 1
  echo "warning: release build failed (tree mid-edit?); measuring the existing target/release binaries" >&2
fi
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$root/.cache/onnxruntime/libonnxruntime.so.1.31.1}
echo "load: $(uptime)"
exec .venv/bin/python tools/bench/compare.py "$@"

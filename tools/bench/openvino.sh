#!/usr/bin/env bash
# The fastest CPU path vs OpenVINO (static shapes) on the same graphs, fp32 and int8 (issue 23):
#   tools/bench/openvino.sh                      # B @256, batch 2, 3 interleaved rounds; inserts into BENCHMARKS.md
#   tools/bench/openvino.sh --profile --no-table # plus OpenVINO's per-layer counters
# OpenVINO comes from the PyPI wheel in its own venv (.cache/openvino-venv). Not part of scripts/test.sh: it
# measures time.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
[ -x .venv/bin/python ] || scripts/setup.sh
venv=.cache/openvino-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import openvino" 2>/dev/null; then
  echo "openvino-bench: creating $venv (openvino==2026.4.0)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "openvino==2026.4.0" "numpy<2.3"
fi
if ! cargo build --release -q -p pixeldit-cli; then
  [ -x target/release/pixeldit-run ] && [ -x target/release/pixeldit-export ] || exit 1
  echo "warning: release build failed (tree mid-edit?); measuring the existing target/release binaries" >&2
fi
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$root/.cache/onnxruntime/libonnxruntime.so.1.31.1}
echo "load: $(uptime)"
exec .venv/bin/python tools/bench/cpu_vs_openvino.py --ov-python "$venv/bin/python" "$@"

#!/usr/bin/env bash
# One-time (idempotent) set-up: Python venv with the test tooling, and the ONNX Runtime shared library that the
# Rust `ort` backend loads (from the PyPI onnxruntime==1.31.1 wheel) copied to .cache/onnxruntime/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import onnx, onnxruntime, numpy, ml_dtypes, safetensors, PIL, scipy" 2>/dev/null; then
  echo "setup: installing tools/requirements.txt" >&2
  .venv/bin/pip install -q --disable-pip-version-check -r tools/requirements.txt
fi

lib=$(.venv/bin/python -c "import onnxruntime, os, glob; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi', 'libonnxruntime.so.*')))[-1])")
mkdir -p .cache/onnxruntime
for f in "$(dirname "$lib")"/libonnxruntime*.so*; do
  cp -u "$f" .cache/onnxruntime/
done
echo "setup: ONNX Runtime library at .cache/onnxruntime/$(basename "$lib")" >&2

#!/usr/bin/env bash
# Idempotent set-up of the Triton test tooling (see shared/docs/triton.md for how this was worked out):
#   * a separate venv, .cache/triton-venv (nvidia-pytriton needs numpy<2, .venv has numpy 2), with the pinned
#     tools/triton/requirements.txt: a real tritonserver 2.51.0 (python backend only) from nvidia-pytriton 0.7.0,
#     tritonclient 2.73.0 (its model_config_pb2 is Triton's ModelConfig schema) and onnxruntime;
#   * a runnable server tree .cache/triton-venv/tritonserver: pytriton's tritonserver with the python backend stub
#     for this Python version, plus the TEST STAND-IN for the onnxruntime backend (tools/triton/onnxruntime_standin,
#     a python-backend model.py; the wheel has no onnxruntime backend);
#   * .cache/triton-venv/triton.env: KEY=VALUE lines read by tools/triton/serve.sh and the Rust tests.
# Usage: tools/triton/setup.sh   (PIXELDIT_TRITON_VENV overrides the venv location)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${PIXELDIT_TRITON_VENV:-$root/.cache/triton-venv}
req=$root/tools/triton/requirements.txt
py=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  echo "triton-setup: creating $venv" >&2
  mkdir -p "$(dirname "$venv")"
  "$py" -m venv "$venv"
fi
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "triton-setup: installing tools/triton/requirements.txt" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$venv/.requirements.sha256"
  rm -rf "$venv/tritonserver"
fi

sp=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
pyv=$("$venv/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
libdir=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR") or "")')
ts=$venv/tritonserver
if [ ! -x "$ts/bin/tritonserver" ]; then
  stub=$sp/pytriton/tritonserver/python_backend_stubs/$pyv/triton_python_backend_stub
  [ -x "$stub" ] || { echo "triton-setup: no python backend stub for Python $pyv in nvidia-pytriton" >&2; exit 1; }
  rm -rf "$ts.tmp"
  cp -r "$sp/pytriton/tritonserver" "$ts.tmp"
  rm -rf "$ts.tmp/python_backend_stubs"
  cp "$stub" "$ts.tmp/backends/python/"
  mv "$ts.tmp" "$ts"
fi
# The stand-in is copied on every run so that edits to it take effect.
mkdir -p "$ts/backends/onnxruntime"
cp -f "$root/tools/triton/onnxruntime_standin/model.py" "$ts/backends/onnxruntime/model.py"

ld=$sp/nvidia_pytriton.libs
# The stub links libpython$pyv.so.1.0: prefer the venv interpreter's own (pyenv builds ship it in LIBDIR).
if [ -n "$libdir" ] && [ -e "$libdir/libpython$pyv.so.1.0" ]; then
  ld=$ld:$libdir
fi
if LD_LIBRARY_PATH=$ld ldd "$ts/backends/python/triton_python_backend_stub" | grep -q "not found"; then
  echo "triton-setup: the python backend stub has unresolved libraries (install libpython$pyv):" >&2
  LD_LIBRARY_PATH=$ld ldd "$ts/backends/python/triton_python_backend_stub" | grep "not found" >&2
  exit 1
fi

cat > "$venv/triton.env.tmp" <<ENV
TRITONSERVER=$ts/bin/tritonserver
TRITON_BACKEND_DIR=$ts/backends
TRITON_CACHE_DIR=$ts/caches
TRITON_LD_LIBRARY_PATH=$ld
TRITON_VENV_BIN=$venv/bin
TRITON_PYTHON=$venv/bin/python
ENV
mv "$venv/triton.env.tmp" "$venv/triton.env"
echo "triton-setup: tritonserver ready ($venv/triton.env)" >&2

#!/usr/bin/env bash
# Downloads the onnxruntime-gpu==1.31.1 wheel (256 MB, a CUDA 13 build) once, extracts only its ONNX Runtime
# shared libraries (libonnxruntime.so.1.31.1 and libonnxruntime_providers_{cuda,tensorrt,shared}.so) into
# .cache/onnxruntime-gpu/ (or $1), then deletes the wheel. No-op when they are already there.
# The libraries load on any x86_64 Linux; without a GPU and the CUDA 13 pip libraries the CUDA/TensorRT providers
# fail to register with a message naming what is missing, which is what the provider tests check.
set -euo pipefail
cd "$(dirname "$0")/../.."
version=1.31.1
dest=${1:-.cache/onnxruntime-gpu}
libs=(libonnxruntime.so.$version libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so
      libonnxruntime_providers_tensorrt.so)
have_all() { for f in "${libs[@]}"; do [ -s "$dest/$f" ] || return 1; done; }
if have_all; then
  echo "fetch_ort_gpu: $dest already has the onnxruntime-gpu $version libraries" >&2
  exit 0
fi
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
mkdir -p "$dest"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/ort-gpu.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetch_ort_gpu: downloading onnxruntime-gpu==$version (256 MB, once)" >&2
"$python" -m pip download -q --disable-pip-version-check --no-cache-dir --no-deps --only-binary=:all: \
  --platform manylinux_2_28_x86_64 --python-version 3.11 --implementation cp --abi cp311 \
  "onnxruntime-gpu==$version" -d "$tmp"
wheel=$(ls "$tmp"/onnxruntime_gpu-"$version"-*.whl)
# Extract to temporary names in $dest, then rename: never a half-written library under its real name.
"$python" - "$wheel" "$dest" "${libs[@]}" <<'PY'
import os, sys, zipfile
wheel, dest, wanted = sys.argv[1], sys.argv[2], set(sys.argv[3:])
with zipfile.ZipFile(wheel) as z:
    found = {}
    for info in z.infolist():
        name = os.path.basename(info.filename)
        if info.filename.startswith("onnxruntime/capi/") and name in wanted:
            found[name] = info
    missing = wanted - set(found)
    if missing:
        sys.exit(f"fetch_ort_gpu: {wheel} lacks {sorted(missing)}")
    for name, info in sorted(found.items()):
        part = os.path.join(dest, name + ".part")
        with z.open(info) as src, open(part, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        os.chmod(part, 0o755)
        os.replace(part, os.path.join(dest, name))
        print(f"fetch_ort_gpu: {dest}/{name} ({info.file_size / 1e6:.1f} MB)", file=sys.stderr)
PY
rm -f "$wheel"
have_all

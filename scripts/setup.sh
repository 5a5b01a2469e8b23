#!/usr/bin/env bash
# One-time (idempotent) set-up: Python venv with the test tooling, and the ONNX Runtime shared library that the
# Rust `ort` backend loads (from the PyPI onnxruntime==1.31.1 wheel) copied to .cache/onnxruntime/.
#
# On a machine with an NVIDIA GPU (or with --gpu) it also installs the GPU stack into .cache/gpu-venv:
# onnxruntime-gpu[cuda,cudnn]==1.31.1 (a CUDA 13 build; the extras bring the CUDA 13 runtime, cuBLAS, cuDNN,
# cuFFT, cuRAND and NVRTC wheels) and TensorRT 10 for CUDA 13 (tensorrt-cu13-libs, see $TENSORRT_PIN), and copies
# the GPU build's libonnxruntime*.so* to .cache/onnxruntime-gpu/, where pixeldit-run looks first when a GPU is
# present. The file .cache/onnxruntime-gpu/site-packages names the venv's site-packages, where pixeldit-run finds
# the CUDA/TensorRT libraries of those wheels and preloads them (no LD_LIBRARY_PATH needed).
#
# It also installs OpenVINO (PyPI openvino==$OPENVINO_VERSION) into .cache/openvino-venv and copies the wheel's
# libraries (C API, CPU plugin, ONNX front end, TBB) to .cache/openvino/, where `pixeldit-run --backend openvino`
# finds them.
#
# Usage: scripts/setup.sh [--gpu | --cpu] [--print-plan]
#   --gpu         install the GPU stack even when no GPU is detected
#   --cpu         never install the GPU stack
#   --print-plan  print what would be installed and copied, install nothing
# GPU detection: $PIXELDIT_NVIDIA_DEVICE (default /dev/nvidia0) or $PIXELDIT_NVIDIA_PROC (default
# /proc/driver/nvidia/version) exists; pixeldit-run probes the same paths.
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION=1.31.1
# TensorRT: the onnxruntime-gpu 1.31.1 TensorRT provider links libnvinfer.so.10 / libnvonnxparser.so.10 and the
# CUDA 13 runtime, so it needs TensorRT 10 built for CUDA 13. The newest 10.x on PyPI for CUDA 13 is 10.16.1.11
# (tensorrt-cu13 11.x ships libnvinfer.so.11, which that provider cannot load). Only the libraries are needed.
# PyPI holds only source stubs of tensorrt-cu13-libs that download the real wheel from NVIDIA's index, so it is
# installed with --extra-index-url $NVIDIA_INDEX, best effort: without it the CUDA provider still works and
# `--device tensorrt` names the missing libnvinfer (measured 2026-11-28: pypi.nvidia.com is unreachable from this
# project's CPU machines, so the install is skipped there with that message).
TENSORRT_PIN=tensorrt-cu13-libs==10.16.1.11
NVIDIA_INDEX=https://pypi.nvidia.com
OPENVINO_VERSION=2026.4.0
OPENVINO_VENV=.cache/openvino-venv
GPU_VENV=.cache/gpu-venv
GPU_LIB_DIR=.cache/onnxruntime-gpu

mode=detect
print_plan=0
for arg in "$@"; do
  case "$arg" in
    --gpu) mode=gpu ;;
    --cpu) mode=cpu ;;
    --print-plan) print_plan=1 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup: unknown argument '$arg' (expected --gpu, --cpu or --print-plan)" >&2; exit 2 ;;
  esac
done

nvidia_device=${PIXELDIT_NVIDIA_DEVICE:-/dev/nvidia0}
nvidia_proc=${PIXELDIT_NVIDIA_PROC:-/proc/driver/nvidia/version}
case "$mode" in
  gpu) gpu=1; reason="--gpu given" ;;
  cpu) gpu=0; reason="--cpu given" ;;
  *)
    if [ -e "$nvidia_device" ]; then gpu=1; reason="NVIDIA GPU found ($nvidia_device exists)"
    elif [ -e "$nvidia_proc" ]; then gpu=1; reason="NVIDIA driver found ($nvidia_proc exists)"
    else gpu=0; reason="no NVIDIA GPU ($nvidia_device and $nvidia_proc missing)"
    fi ;;
esac

if [ "$print_plan" = 1 ]; then
  if [ "$gpu" = 1 ]; then echo "mode: gpu ($reason)"; else echo "mode: cpu ($reason)"; fi
  echo "venv: .venv"
  echo "pip .venv: -r tools/requirements.txt"
  echo "copy: onnxruntime $ORT_VERSION (CPU) libonnxruntime*.so* -> .cache/onnxruntime/"
  echo "pip $OPENVINO_VENV: openvino==$OPENVINO_VERSION"
  echo "copy: openvino $OPENVINO_VERSION libs/* -> .cache/openvino/"
  if [ "$gpu" = 1 ]; then
    echo "venv: $GPU_VENV"
    echo "pip $GPU_VENV: onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION"
    echo "pip $GPU_VENV (best effort, --extra-index-url $NVIDIA_INDEX): $TENSORRT_PIN"
    echo "copy: onnxruntime-gpu $ORT_VERSION libonnxruntime*.so* -> $GPU_LIB_DIR/"
    echo "write: $GPU_LIB_DIR/site-packages"
  fi
  exit 0
fi

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

# OpenVINO in its own venv (its numpy pin is not the test tooling's); its libs/ directory holds the C API library,
# the CPU plugin, the ONNX front end and TBB, which find each other next to libopenvino.so.
[ -x "$OPENVINO_VENV/bin/python" ] || python3 -m venv "$OPENVINO_VENV"
if ! "$OPENVINO_VENV/bin/python" -c "import openvino" 2>/dev/null; then
  echo "setup: installing openvino==$OPENVINO_VERSION into $OPENVINO_VENV" >&2
  "$OPENVINO_VENV/bin/pip" install -q --disable-pip-version-check "openvino==$OPENVINO_VERSION" "numpy<2.3"
fi
ovlibs=$("$OPENVINO_VENV/bin/python" -c "import openvino, os; print(os.path.join(os.path.dirname(openvino.__file__), 'libs'))")
mkdir -p .cache/openvino
cp -u "$ovlibs"/* .cache/openvino/
echo "setup: OpenVINO library at .cache/openvino/$(cd .cache/openvino && ls libopenvino_c.so* | sort | tail -1)" >&2

[ "$gpu" = 1 ] || exit 0

# The GPU stack lives in its own venv: onnxruntime and onnxruntime-gpu install the same Python package
# (onnxruntime/), so one venv cannot hold both, and the test tooling in .venv keeps the CPU build.
echo "setup: $reason: installing the GPU stack into $GPU_VENV" >&2
[ -x "$GPU_VENV/bin/python" ] || python3 -m venv "$GPU_VENV"
if ! "$GPU_VENV/bin/python" -c "import onnxruntime" 2>/dev/null; then
  "$GPU_VENV/bin/pip" install -q --disable-pip-version-check "onnxruntime-gpu[cuda,cudnn]==$ORT_VERSION"
fi
if ! "$GPU_VENV/bin/python" -c "import tensorrt_libs" 2>/dev/null; then
  if ! "$GPU_VENV/bin/pip" install -q --disable-pip-version-check --extra-index-url "$NVIDIA_INDEX" \
    "$TENSORRT_PIN" >"$GPU_VENV/tensorrt-install.log" 2>&1; then
    echo "setup: warning: $TENSORRT_PIN could not be installed (it is served by $NVIDIA_INDEX; log in" \
      "$GPU_VENV/tensorrt-install.log): the CUDA provider works, --device tensorrt will name the missing" \
      "libnvinfer.so.10" >&2
  fi
fi
site=$("$GPU_VENV/bin/python" -c "import onnxruntime, os; print(os.path.dirname(os.path.dirname(onnxruntime.__file__)))")
mkdir -p "$GPU_LIB_DIR"
for f in "$site"/onnxruntime/capi/libonnxruntime*.so*; do
  cp -u "$f" "$GPU_LIB_DIR/"
done
printf '%s\n' "$(cd "$site" && pwd)" > "$GPU_LIB_DIR/site-packages.part"
mv "$GPU_LIB_DIR/site-packages.part" "$GPU_LIB_DIR/site-packages"
echo "setup: ONNX Runtime GPU library at $GPU_LIB_DIR/libonnxruntime.so.$ORT_VERSION (CUDA/TensorRT libraries from $site)" >&2

#!/usr/bin/env bash
# Tests the GPU detection of scripts/setup.sh with fake device paths (run from scripts/test.sh; installs nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # name, expected substring, actual output
  if grep -qF -- "$2" <<<"$3"; then echo "ok   $1"; else echo "FAIL $1: expected '$2' in:"; sed 's/^/     /' <<<"$3"; fails=$((fails + 1)); fi
}
absent() { # name, unexpected substring, actual output
  if grep -qF -- "$2" <<<"$3"; then echo "FAIL $1: unexpected '$2' in:"; sed 's/^/     /' <<<"$3"; fails=$((fails + 1)); else echo "ok   $1"; fi
}
plan() { scripts/setup.sh --print-plan "$@"; }

touch "$tmp/nvidia0" "$tmp/version"
# No device, no driver file: today's CPU set-up, nothing GPU.
out=$(PIXELDIT_NVIDIA_DEVICE="$tmp/none0" PIXELDIT_NVIDIA_PROC="$tmp/none" plan)
check "cpu: mode" "mode: cpu (no NVIDIA GPU ($tmp/none0 and $tmp/none missing))" "$out"
check "cpu: CPU library" "copy: onnxruntime 1.31.1 (CPU) libonnxruntime*.so* -> .cache/onnxruntime/" "$out"
check "cpu: OpenVINO library" "copy: openvino 2026.4.0 libs/* -> .cache/openvino/" "$out"
absent "cpu: no onnxruntime-gpu" "onnxruntime-gpu" "$out"
absent "cpu: no tensorrt" "tensorrt" "$out"
# A fake device node: the GPU stack.
out=$(PIXELDIT_NVIDIA_DEVICE="$tmp/nvidia0" PIXELDIT_NVIDIA_PROC="$tmp/none" plan)
check "device: mode" "mode: gpu (NVIDIA GPU found ($tmp/nvidia0 exists))" "$out"
check "device: onnxruntime-gpu" "pip .cache/gpu-venv: onnxruntime-gpu[cuda,cudnn]==1.31.1" "$out"
check "device: tensorrt" "pip .cache/gpu-venv (best effort, --extra-index-url https://pypi.nvidia.com): tensorrt-cu13-libs==10.16.1.11" "$out"
check "device: GPU library" "-> .cache/onnxruntime-gpu/" "$out"
check "device: CPU library kept" "-> .cache/onnxruntime/" "$out"
# Only the driver's proc file.
out=$(PIXELDIT_NVIDIA_DEVICE="$tmp/none0" PIXELDIT_NVIDIA_PROC="$tmp/version" plan)
check "proc: mode" "mode: gpu (NVIDIA driver found ($tmp/version exists))" "$out"
# Flags override detection.
out=$(PIXELDIT_NVIDIA_DEVICE="$tmp/none0" PIXELDIT_NVIDIA_PROC="$tmp/none" plan --gpu)
check "--gpu: mode" "mode: gpu (--gpu given)" "$out"
check "--gpu: onnxruntime-gpu" "onnxruntime-gpu[cuda,cudnn]==1.31.1" "$out"
out=$(PIXELDIT_NVIDIA_DEVICE="$tmp/nvidia0" plan --cpu)
check "--cpu: mode" "mode: cpu (--cpu given)" "$out"
absent "--cpu: no onnxruntime-gpu" "onnxruntime-gpu" "$out"
# A wrong argument is an error, not a silent set-up.
if out=$(scripts/setup.sh --gpus 2>&1); then echo "FAIL bad argument accepted"; fails=$((fails + 1));
else check "bad argument" "unknown argument '--gpus'" "$out"; fi
[ "$fails" = 0 ] || { echo "setup_plan_test: $fails failure(s)"; exit 1; }
echo "setup_plan_test: all passed"

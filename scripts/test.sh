#!/usr/bin/env bash
# The test command: set-up, then every Rust test (unit, integration, golden) and the Python reference checks.
# Python-dependent, ONNX Runtime (CPU and GPU build) and Triton tests are mandatory here (PIXELDIT_REQUIRE_PYTHON=1,
# PIXELDIT_REQUIRE_ORT=1, PIXELDIT_REQUIRE_ORT_GPU=1, PIXELDIT_REQUIRE_TRITON=1), not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PIXELDIT_REQUIRE_PYTHON=1
# Triton tests (a real CPU tritonserver from the pinned venv .cache/triton-venv) are mandatory here too.
tools/triton/setup.sh
export PIXELDIT_REQUIRE_TRITON=1
export ORT_DYLIB_PATH="$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1"
export PIXELDIT_REQUIRE_ORT=1
# The OpenVINO backend's tests (library copied to .cache/openvino/ by scripts/setup.sh) are mandatory too.
export PIXELDIT_REQUIRE_OPENVINO=1
echo "== set-up GPU detection (fake device paths)" >&2
scripts/setup_plan_test.sh
# The GPU build of ONNX Runtime (downloaded once into .cache/onnxruntime-gpu/): the CUDA/TensorRT provider tests in
# crates/cli/tests/gpu_providers.rs are mandatory here.
tools/gpu/fetch_ort_gpu.sh
export PIXELDIT_ORT_GPU_LIB="$PWD/.cache/onnxruntime-gpu/libonnxruntime.so.1.31.1"
export PIXELDIT_REQUIRE_ORT_GPU=1
echo "== reference golden files are current" >&2
.venv/bin/python reference/check_golden.py
echo "== cargo test" >&2
# The Triton pipeline's sampler library (a cdylib) next to pixeldit-export, where --triton-repo finds it.
cargo build -p pixeldit-triton-pipeline --locked 2>&1
cargo test --workspace --locked 2>&1
echo "== tools/gpu/check.sh: the parts that need no GPU" >&2
PIXELDIT_CHECK_BIN_DIR="${CARGO_TARGET_DIR:-target}/debug" tools/gpu/check.sh --self-test

#!/usr/bin/env bash
# The test command: set-up, then every Rust test (unit, integration, golden) and the Python reference checks.
# Python-dependent, ONNX Runtime and Triton tests are mandatory here (PIXELDIT_REQUIRE_PYTHON=1,
# PIXELDIT_REQUIRE_ORT=1, PIXELDIT_REQUIRE_TRITON=1), not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PIXELDIT_REQUIRE_PYTHON=1
# Triton tests (a real CPU tritonserver from the pinned venv .cache/triton-venv) are mandatory here too.
tools/triton/setup.sh
export PIXELDIT_REQUIRE_TRITON=1
export ORT_DYLIB_PATH="$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1"
export PIXELDIT_REQUIRE_ORT=1
echo "== reference golden files are current" >&2
.venv/bin/python reference/check_golden.py
echo "== cargo test" >&2
cargo test --workspace --locked 2>&1

#!/usr/bin/env bash
# The test command: set-up, then every Rust test (unit, integration, golden) and the Python reference checks.
# Python-dependent tests are mandatory here (PIXELDIT_REQUIRE_PYTHON=1), not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PIXELDIT_REQUIRE_PYTHON=1
export ORT_DYLIB_PATH="$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1"
echo "== reference golden files are current" >&2
.venv/bin/python reference/check_golden.py
echo "== cargo test" >&2
cargo test --workspace --locked 2>&1

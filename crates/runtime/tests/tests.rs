//! Integration tests of pixeldit-runtime on committed fixture models, one binary (fixtures:
//! `tests/fixtures/gen_fixtures.py`). End-to-end tests (export, quantize, sample, CLI, Triton) are in `crates/cli`.
//!
//! Tests that need ONNX Runtime find the library like the CLI does, plus the project venv; without one they print
//! a note and pass, unless `PIXELDIT_REQUIRE_ORT` is set (scripts/test.sh sets it).

mod util;

mod custom_op;
mod lowp;

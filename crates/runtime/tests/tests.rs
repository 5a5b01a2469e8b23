//! Integration tests of pixeldit-runtime, one binary (fixtures: `tests/fixtures/gen_fixtures.py`).
//!
//! Tests that need ONNX Runtime find the library like the CLI does, plus the project venv; without one they print
//! a note and pass, unless `PIXELDIT_REQUIRE_ORT` is set (scripts/test.sh sets it).

mod util;

mod cli;
mod custom_op;
mod digits;
mod exported;
mod forward;
mod lowp;
mod t2i;
#[cfg(feature = "triton")]
mod triton;

//! End-to-end tests of pixeldit, one binary: export (library and `pixeldit-export`), quantize, sample on every
//! backend against the golden images, the `pixeldit-run` CLI, and Triton (repository and a real server).
//!
//! Tests that need ONNX Runtime, the project's Python venv or the Triton venv print a note and pass without them,
//! unless `PIXELDIT_REQUIRE_ORT`, `PIXELDIT_REQUIRE_PYTHON` or `PIXELDIT_REQUIRE_TRITON` is set
//! (scripts/test.sh sets all three).

mod util;

mod checkpoint_layouts;
mod digits;
mod digits_t2i;
mod dynamic_size;
mod export_cli;
mod export_quantize;
mod exported;
mod forward;
mod gpu_providers;
mod patch_cache;
mod prompt;
mod quantize_variants;
mod run_cli;
mod t2i;
mod t2i_quantize;
mod triton;
mod triton_pipeline;
mod triton_repo;

//! Helpers of the exporter's integration tests (each test file is its own binary and uses `mod common;`).
#![allow(unused_imports)]

pub use pixeldit_testkit::*;

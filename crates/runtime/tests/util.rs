//! Shared helpers.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

pub use pixeldit_testkit::{max_abs_diff, need_ort, workspace};

//! Shared helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The ONNX Runtime library: ORT_DYLIB_PATH, the project cache, or the project venv.
pub fn ort_lib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    let ws = workspace();
    [
        ws.join(".cache/onnxruntime/libonnxruntime.so.1.31.1"),
        ws.join(".venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// `ort_lib()` or a note that the test is skipped; a failure instead when `PIXELDIT_REQUIRE_ORT` is set
/// (scripts/test.sh sets it).
pub fn need_ort(test: &str) -> Option<PathBuf> {
    let lib = ort_lib();
    if lib.is_none() {
        assert!(
            !std::env::var("PIXELDIT_REQUIRE_ORT").is_ok_and(|v| !v.is_empty() && v != "0"),
            "{test}: PIXELDIT_REQUIRE_ORT is set but no ONNX Runtime library was found (ORT_DYLIB_PATH, \
             .cache/onnxruntime/; run scripts/setup.sh)"
        );
        eprintln!("{test}: no ONNX Runtime library found, ORT part skipped");
    }
    lib
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

//! Helpers shared by the workspace's integration tests: the workspace root, the project's Python venv (a skip,
//! or a failure under `PIXELDIT_REQUIRE_PYTHON`), the ONNX Runtime library (a skip, or a failure under
//! `PIXELDIT_REQUIRE_ORT`), the reference tools of `tools/`, `/proc` and `df` readings, and numeric comparisons.

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The venv Python with onnx/onnxruntime, or None (a skip, unless PIXELDIT_REQUIRE_PYTHON is set).
pub fn python() -> Option<PathBuf> {
    let p = root().join(".venv/bin/python");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("PIXELDIT_REQUIRE_PYTHON").is_none(),
        "PIXELDIT_REQUIRE_PYTHON set but {} missing",
        p.display()
    );
    eprintln!("skipped: {} not found (run scripts/setup.sh)", p.display());
    None
}

/// Free bytes on the file system of `dir` (`df -Pk`), or None when `df` cannot tell.
pub fn free_disk_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(dir)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

/// The kB value of `key` in a `/proc` status file such as `/proc/self/status` (`VmHWM:`).
pub fn proc_kb(file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(file).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `python tool forward <args>` (a reference comparison that prints one relative L2) from the workspace root
/// and returns the printed value; panics with the tool's stderr when it fails.
pub fn reference_rel_l2(py: &Path, tool: &Path, args: &[&str]) -> f64 {
    let out = std::process::Command::new(py)
        .current_dir(root())
        .arg(tool)
        .arg("forward")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Runs `python tool check <paths>` (onnx.checker and ONNX Runtime on each model); panics with its output when it
/// fails.
pub fn python_check_models(py: &Path, tool: &Path, paths: &[PathBuf]) {
    let out = std::process::Command::new(py)
        .arg(tool)
        .arg("check")
        .args(paths)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The workspace root (same as [`root`]).
pub fn workspace() -> PathBuf {
    root()
}

/// The ONNX Runtime library: ORT_DYLIB_PATH, the project cache, or the project venv.
pub fn ort_lib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    let ws = root();
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

/// OpenVINO's C library: `$PIXELDIT_OPENVINO_LIB` or `.cache/openvino/libopenvino_c.so*` of the workspace
/// (scripts/setup.sh copies it there).
pub fn openvino_lib() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PIXELDIT_OPENVINO_LIB")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
    {
        return Some(p);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(root().join(".cache/openvino"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libopenvino_c.so"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// `openvino_lib()` or a note that the test is skipped; a failure instead when `PIXELDIT_REQUIRE_OPENVINO` is
/// set (scripts/test.sh sets it).
pub fn need_openvino(test: &str) -> Option<PathBuf> {
    let lib = openvino_lib();
    if lib.is_none() {
        assert!(
            !std::env::var("PIXELDIT_REQUIRE_OPENVINO").is_ok_and(|v| !v.is_empty() && v != "0"),
            "{test}: PIXELDIT_REQUIRE_OPENVINO is set but no OpenVINO library was found (PIXELDIT_OPENVINO_LIB, \
             .cache/openvino/; run scripts/setup.sh)"
        );
        eprintln!("{test}: no OpenVINO library found, OpenVINO part skipped");
    }
    lib
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Little-endian f32 values of raw tensor bytes (e.g. a safetensors tensor's `data()`).
pub fn le_f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Little-endian f64 values of raw tensor bytes.
pub fn le_f64s(bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Little-endian i64 values of raw tensor bytes.
pub fn le_i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Relative L2 distance of `a` from `reference`.
pub fn rel_l2(a: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(a.len(), reference.len());
    let num: f64 = a
        .iter()
        .zip(reference)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = reference.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

//! Helpers shared by the exporter's integration tests (each test file is its own binary and uses `mod common;`,
//! so not every binary uses every helper).
#![allow(dead_code)]

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

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

//! Shared helpers.

#![allow(dead_code)]

use pixeldit_runtime::backend::{self, Candidate, LoadOptions};
use pixeldit_runtime::Denoiser;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A committed fixture model of the runtime's tests.
pub fn fixture(name: &str) -> PathBuf {
    workspace().join("crates/runtime/tests/fixtures").join(name)
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

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pixeldit-run"));
    c.env_remove("ORT_DYLIB_PATH");
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn pixeldit-run");
    eprintln!(
        "--- {:?}\nstatus {:?}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Names of the files in `dir`.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

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

/// The backends to test: tract always, ORT CPU when a library is available.
pub fn candidates(test: &str) -> Vec<(Candidate, LoadOptions)> {
    let mut v = vec![(Candidate::Tract, LoadOptions::default())];
    if let Some(lib) = need_ort(test) {
        v.push((
            Candidate::Ort(backend::ort::OrtProvider::Cpu),
            LoadOptions::default().with_ort_lib(Some(lib)),
        ));
    }
    v
}

/// `model` loaded on candidate `c` (explicitly: a failure is an error), behind its model adapter.
pub fn load_denoiser(model: &Path, c: Candidate, opts: &LoadOptions) -> pixeldit_runtime::Result<Denoiser> {
    let meta = pixeldit_runtime::model::read_metadata(model)?;
    let b = backend::load_candidate(model, c, opts, false)?;
    Ok(Denoiser::new(b, &meta))
}

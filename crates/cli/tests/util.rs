//! Shared helpers.

#![allow(dead_code)]

use ndarray::Array4;
use pixeldit_runtime::backend::{self, Candidate, LoadOptions};
use pixeldit_runtime::generate::{generate, ImageShape, Noise, Request, VelocityModel};
use pixeldit_runtime::{Conditions, Denoiser, SamplerConfig};
pub use pixeldit_testkit::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A committed fixture model of the runtime's tests.
pub fn fixture(name: &str) -> PathBuf {
    workspace().join("crates/runtime/tests/fixtures").join(name)
}

/// Samples the images of `conditions` from `noise` ([K,C,H,W]) with the runtime's generation API.
pub fn sample(
    model: &mut dyn VelocityModel,
    conditions: Conditions,
    sampler: SamplerConfig,
    noise: Array4<f32>,
) -> pixeldit_runtime::Result<Array4<f32>> {
    let s = noise.shape();
    let image = ImageShape {
        channels: s[1],
        height: s[2],
        width: s[3],
    };
    let req = Request {
        conditions,
        sampler,
        image,
        noise: Noise::Given(noise),
    };
    Ok(generate(model, &req, &mut |_| {})?.x)
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

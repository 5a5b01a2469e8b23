//! Text-to-image models exported by `pixeldit-exporter` against the independent Python reference
//! (tests/golden/t2i/): forward cases (tolerance 1e-4 relative L2) and a full DPM-Solver++ 2M sample with CFG and
//! negative embeddings (1e-4), on ONNX Runtime CPU and tract, for every attention lowering; the CLI end to end.

use crate::util::*;
use ndarray::{Array3, Array4};
use pixeldit_cli::variant::export_to_file;
use pixeldit_exporter::{ExportOptions, WeightsSpec};
use pixeldit_runtime::backend::Candidate;
use pixeldit_runtime::generate::{generate, ImageShape, Noise, Request};
use pixeldit_runtime::samplers::dpmpp_2m;
use pixeldit_runtime::Denoiser;
use pixeldit_runtime::{io, Result};
use pixeldit_runtime::{Conditions, SamplerConfig, SamplerKind};
use pixeldit_spec::{AttentionMode, ModelConfig, Precision};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    workspace().join("tests").join("golden").join("t2i")
}

/// Every tensor of a golden safetensors file as (shape, f32 values); f64 and i64 tensors are converted.
fn load(name: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(golden_dir().join(name)).expect("golden file");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, t)| {
            let v: Vec<f32> = match t.dtype() {
                safetensors::Dtype::F32 => le_f32s(t.data()),
                safetensors::Dtype::F64 => le_f64s(t.data()).into_iter().map(|v| v as f32).collect(),
                safetensors::Dtype::I64 => le_i64s(t.data()).into_iter().map(|v| v as f32).collect(),
                d => panic!("{k}: unexpected dtype {d:?}"),
            };
            (k, (t.shape().to_vec(), v))
        })
        .collect()
}

fn a3(t: &(Vec<usize>, Vec<f32>)) -> Array3<f32> {
    Array3::from_shape_vec([t.0[0], t.0[1], t.0[2]], t.1.clone()).unwrap()
}
fn a4(t: &(Vec<usize>, Vec<f32>)) -> Array4<f32> {
    Array4::from_shape_vec([t.0[0], t.0[1], t.0[2], t.0[3]], t.1.clone()).unwrap()
}

fn export(dir: &Path, attention: AttentionMode, precision: Precision, h: usize, w: usize) -> PathBuf {
    let mut opts = ExportOptions::new(
        ModelConfig::preset("t2i-tiny").unwrap(),
        WeightsSpec::Checkpoint(golden_dir().join("t2i_tiny.safetensors")),
    );
    opts.attention = attention;
    opts.precision = precision;
    opts.height = h;
    opts.width = w;
    let path = dir.join(format!("t2i_{attention}_{precision}_{h}x{w}.onnx"));
    export_to_file(&opts, &path).expect("export t2i-tiny");
    path
}

fn check_forward(attention: AttentionMode) {
    let cases = load("cases.safetensors");
    let dir = tempfile::tempdir().unwrap();
    for (case, h, w) in [("case_a", 32, 48), ("case_b", 32, 32), ("case_c", 48, 32)] {
        let path = export(dir.path(), attention, Precision::Fp32, h, w);
        let (x, text) = (
            a4(&cases[&format!("{case}.x")]),
            a3(&cases[&format!("{case}.text")]),
        );
        let t = ndarray::Array1::from(cases[&format!("{case}.t")].1.clone());
        let v_ref = &cases[&format!("{case}.v")].1;
        for (c, opts) in candidates("t2i check_forward") {
            let mut b = load_denoiser(&path, c, &opts).unwrap_or_else(|e| panic!("{c}: {e}"));
            let v = b.forward(x.view(), t.view(), text.view().into()).unwrap();
            let err = rel_l2(v.as_slice().unwrap(), v_ref);
            eprintln!("t2i {attention} {case} {c}: relative L2 vs reference {err:.3e}");
            assert!(err < 1e-4, "t2i {attention} {case} {c}: relative L2 {err}");
        }
    }
}

#[test]
fn t2i_forward_custom_attention() {
    check_forward(AttentionMode::Custom);
}

#[test]
fn t2i_forward_onnx23_attention() {
    check_forward(AttentionMode::Onnx23);
}

#[test]
fn t2i_forward_decomposed_attention() {
    check_forward(AttentionMode::Decomposed);
}

fn golden_sampler() -> SamplerConfig {
    SamplerConfig {
        kind: SamplerKind::Dpmpp2m,
        steps: 6,
        cfg_scale: 3.0,
        interval: (0.0, 0.99),
        shift: 4.0,
    }
}

/// Samples the golden case; returns the images and how many forwards were guided.
fn sample_with(
    b: &mut Denoiser,
    g: &HashMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<(Array4<f32>, usize)> {
    let (noise, text) = (a4(&g["noise"]), a3(&g["text"]));
    let neg = a3(&g["negative"]);
    let neg = ndarray::concatenate(ndarray::Axis(0), &[neg.view(), neg.view()]).unwrap();
    let s = noise.shape().to_vec();
    let req = Request {
        conditions: Conditions::text(text, Some(neg)),
        sampler: golden_sampler(),
        image: ImageShape {
            channels: s[1],
            height: s[2],
            width: s[3],
        },
        noise: Noise::Given(noise),
    };
    let out = generate(b, &req, &mut |_| {})?;
    Ok((out.x, out.guided_forwards))
}

#[test]
fn t2i_sigmas_and_guidance_match_the_reference() {
    let g = load("sample_t2i_tiny.safetensors");
    let bytes = std::fs::read(golden_dir().join("sample_t2i_tiny.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let sig = le_f64s(st.tensor("sigmas").unwrap().data());
    let ours = dpmpp_2m::flow_sigmas(6, 4.0);
    for (a, b) in ours.iter().zip(&sig) {
        assert!((a - b).abs() < 1e-15, "{ours:?} vs {sig:?}");
    }
    let guided: Vec<f32> = ours[..6]
        .iter()
        .map(|&s| f32::from(u8::from(0.0 < s && s < 0.99)))
        .collect();
    assert_eq!(guided, g["guided"].1);
}

fn check_sample(attention: AttentionMode, precision: Precision, tol: f64) {
    let g = load("sample_t2i_tiny.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let path = export(dir.path(), attention, precision, 32, 32);
    for (c, opts) in candidates("t2i check_sample") {
        if precision == Precision::Bf16 && c != Candidate::Tract {
            continue; // ONNX Runtime's CPU provider has no bf16 Gemm
        }
        let mut b = load_denoiser(&path, c, &opts).unwrap_or_else(|e| panic!("{c}: {e}"));
        let (x, guided) = sample_with(&mut b, &g).unwrap();
        assert_eq!(
            guided, 5,
            "guided forwards (the first, at sigma 0.99975, is outside (0, 0.99))"
        );
        let err = rel_l2(x.as_slice().unwrap(), &g["x"].1);
        eprintln!("t2i sample {attention} {precision} {c}: relative L2 vs reference {err:.3e}");
        assert!(
            err < tol,
            "t2i sample {attention} {precision} {c}: relative L2 {err} >= {tol}"
        );
    }
}

#[test]
fn t2i_golden_sample_custom_attention() {
    // measured 9.1e-7 (ORT CPU), 9.3e-7 (tract)
    check_sample(AttentionMode::Custom, Precision::Fp32, 1e-4);
}

#[test]
fn t2i_golden_sample_decomposed_and_onnx23() {
    check_sample(AttentionMode::Decomposed, Precision::Fp32, 1e-4);
    check_sample(AttentionMode::Onnx23, Precision::Fp32, 1e-4);
}

#[test]
fn t2i_golden_sample_fp16() {
    check_sample(AttentionMode::Custom, Precision::Fp16, 1e-2);
}

fn write_embeddings(dir: &Path, g: &HashMap<String, (Vec<usize>, Vec<f32>)>) {
    // prompt as .npy f32 [2, 8, 48]; negative as bf16-free safetensors F32 [8, 48] (one prompt, broadcast)
    io::write_atomic(
        &dir.join("text.npy"),
        &io::npy_bytes(&g["text"].0, g["text"].1.iter().copied()),
    )
    .unwrap();
    let neg: Vec<u8> = g["negative"].1.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![8, 48], &neg).unwrap();
    safetensors::serialize_to_file([("negative", view)], None, &dir.join("neg.safetensors")).unwrap();
    io::write_npy(&dir.join("noise.npy"), a4(&g["noise"]).view()).unwrap();
}

#[test]
fn t2i_cli_reproduces_the_golden_sample() {
    let g = load("sample_t2i_tiny.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = export(d, AttentionMode::Custom, Precision::Fp32, 32, 32);
    write_embeddings(d, &g);
    let out = run(bin()
        .current_dir(d)
        .arg(&model)
        .args(["--backend", "tract", "--text-embeddings", "text.npy"])
        .args(["--negative-embeddings", "neg.safetensors", "--noise", "noise.npy"])
        .args(["--interval", "0,0.99", "-o", "s.png", "--save-raw", "raw.npy"])
        .args(["--report-json", "r.json"]));
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("dpmpp_2m 6 steps, cfg 3 (5 guided)"),
        "{}",
        stdout(&out)
    );
    let raw = io::read_npy(&d.join("raw.npy")).unwrap();
    let err = rel_l2(raw.as_slice().unwrap(), &g["x"].1);
    assert!(err < 1e-4, "CLI relative L2 {err}");
    assert!(d.join("s_000.png").is_file() && d.join("s_001.png").is_file());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(report["sampler"], "dpmpp_2m");
    assert_eq!(report["time_shift"], 4.0);
    assert_eq!(report["guidance_interval"], serde_json::json!([0.0, 0.99]));
    assert_eq!(report["guided_forwards"], 5);

    // Errors name what is missing or wrong, and write nothing.
    let fails = |args: &[&str], expect: &str| {
        let out = run(bin()
            .current_dir(d)
            .arg(&model)
            .args(["--backend", "tract", "-o", "bad.png"])
            .args(args));
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr(&out).contains(expect), "{args:?}: stderr lacks '{expect}'");
        assert!(!d.join("bad.png").exists());
    };
    fails(&[], "--text-embeddings FILE ([8, 48]");
    fails(
        &["--text-embeddings", "text.npy"],
        "needs the hidden states of the negative prompt",
    );
    fails(
        &["--text-embeddings", "noise.npy", "--cfg", "1"],
        "text embeddings have shape [2, 3, 32, 32]",
    );
    fails(
        &["--text-embeddings", "text.npy", "--cfg", "1", "--class", "3"],
        "not class labels",
    );
    fails(
        &["--text-embeddings", "text.npy", "--cfg", "1", "--batch", "3"],
        "hold 2 prompts for 3 images",
    );
    fails(
        &["--text-embeddings", "text.npy", "--cfg", "1", "--steps", "1"],
        "steps 1: expected 2..=1000 for dpmpp_2m",
    );
}

#[test]
fn bench_runs_a_text_to_image_model_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = export(d, AttentionMode::Custom, Precision::Fp32, 32, 32);
    let mut cmd = bin();
    cmd.current_dir(d)
        .arg("bench")
        .arg(&model)
        .args(["--runs", "2", "--warmup", "1", "--batch", "2", "--append", "B.md"]);
    let lib = need_ort("bench_runs_a_text_to_image_model_on_every_backend");
    if let Some(lib) = &lib {
        cmd.arg("--ort-lib").arg(lib);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    let table = std::fs::read_to_string(d.join("B.md")).unwrap();
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| 2")).collect();
    assert_eq!(rows.len(), if lib.is_some() { 2 } else { 1 }, "{table}");
    assert!(rows.iter().all(|r| r.contains("t2i-tiny")), "{table}");
}

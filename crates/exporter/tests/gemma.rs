//! The Gemma-2 text encoder export (issue 12) on the tiny Hugging Face checkpoint of `tests/golden/gemma/model`
//! (written by transformers through `reference/gen_gemma_golden.py`).
//!
//! The numbers are checked by `reference/check_gemma_onnx.py` (ONNX Runtime against transformers' hidden states,
//! relative L2 < 1e-4 at every position and for the recipe's `[300, D]` embeddings), which the export test runs with
//! the project venv (skipped when `.venv` is missing, unless `PIXELDIT_REQUIRE_PYTHON` is set).
//! `GEMMA_ONNX_OUT=DIR` keeps the exported `gemma-tiny-s300.onnx` / `gemma-tiny-s579.onnx` (the recipe's prompt
//! length) in DIR.

mod common;

use pixeldit_exporter::model::gemma::{self, GemmaConfig, GemmaWeights};
use pixeldit_exporter::ExportError;
use std::path::{Path, PathBuf};

fn golden_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/gemma/model")
}

#[test]
fn hf_config_of_the_golden_model_is_the_tiny_preset() {
    let mut from_hf = GemmaConfig::from_hf_config(&golden_model().join("config.json")).unwrap();
    let preset = GemmaConfig::preset("gemma-tiny").unwrap();
    from_hf.name = preset.name.clone();
    assert_eq!(from_hf, preset);
    assert_eq!(preset.sliding_layers, [true, false, true, false]);
}

#[test]
fn sharded_hf_checkpoint_exports() {
    let cfg = GemmaConfig::preset("gemma-tiny").unwrap();
    assert!(
        golden_model().join(gemma::INDEX_FILE).is_file(),
        "the golden checkpoint is sharded"
    );
    assert!(!golden_model().join(gemma::SINGLE_FILE).exists());
    let weights = GemmaWeights::open(&golden_model()).unwrap();
    let unused = weights.check(&cfg.parameter_shapes()).unwrap();
    assert!(unused.is_empty(), "unused keys {unused:?}");
    let tmp = tempfile::tempdir().unwrap();
    let out = std::env::var_os("GEMMA_ONNX_OUT").map_or_else(|| tmp.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&out).unwrap();
    for seq in [300, 579] {
        let path = out.join(format!("gemma-tiny-s{seq}.onnx"));
        let export = gemma::EncoderExport {
            sequence_length: seq,
            precision: pixeldit_spec::Precision::Fp32,
        };
        let report = gemma::export_to_file(&cfg, &weights, &export, &path, None).unwrap();
        let params: usize = cfg
            .parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(report.weight_params, params);
        assert!(path.is_file());
    }
    if let Some(py) = common::python() {
        let st = std::process::Command::new(py)
            .current_dir(common::root())
            .arg("reference/check_gemma_onnx.py")
            .arg(&out)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "reference/check_gemma_onnx.py failed on {}",
            out.display()
        );
    }
}

/// Gemma-2-2B at full size with random weights, S = 300: time and peak RSS (ignored: writes 10.5 GB).
/// `cargo test --release -p pixeldit-exporter --test gemma -- --ignored --nocapture`; `PIXELDIT_GEMMA_DIR` picks the
/// directory (default the system temp dir).
#[test]
#[ignore]
fn full_size_random_init_export() {
    let cfg = GemmaConfig::preset("gemma-2-2b").unwrap();
    let dir = std::env::var_os("PIXELDIT_GEMMA_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    if common::free_disk_bytes(&dir).is_some_and(|b| b < 12 << 30) {
        eprintln!("skipped: less than 12 GB free in {}", dir.display());
        return;
    }
    let tmp = tempfile::tempdir_in(&dir).unwrap();
    let t0 = std::time::Instant::now();
    let weights = GemmaWeights::random(&cfg.parameter_shapes(), 0);
    let precision = match std::env::var("PIXELDIT_GEMMA_PRECISION") {
        Ok(p) => p.parse().unwrap(),
        Err(_) => pixeldit_spec::Precision::Fp32,
    };
    let export = gemma::EncoderExport {
        sequence_length: 300,
        precision,
    };
    let report =
        gemma::export_to_file(&cfg, &weights, &export, &tmp.path().join("gemma-2-2b.onnx"), None).unwrap();
    let hwm = common::proc_kb("/proc/self/status", "VmHWM:").unwrap_or(0);
    eprintln!(
        "gemma-2-2b {precision} S=300: {} parameters, {:.1} s, peak RSS {:.2} GB",
        report.weight_params,
        t0.elapsed().as_secs_f64(),
        hwm as f64 / (1 << 20) as f64
    );
    assert_eq!(report.weight_params, 2_614_341_888);
}

#[test]
fn bad_checkpoints_are_clear_errors() {
    let cfg = GemmaConfig::preset("gemma-tiny").unwrap();
    let e = GemmaWeights::open(Path::new("/nonexistent/gemma")).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/gemma"), "{e}");

    let big = GemmaConfig::preset("gemma-2-2b").unwrap();
    let weights = GemmaWeights::open(&golden_model()).unwrap();
    let e = weights.check(&big.parameter_shapes()).unwrap_err();
    assert!(
        matches!(e, ExportError::ShapeMismatch { ref key, .. } if key == "model.embed_tokens.weight"),
        "{e}"
    );

    let mut fewer = cfg.clone();
    fewer.num_hidden_layers = 5;
    fewer.sliding_layers.push(true);
    let e = weights.check(&fewer.parameter_shapes()).unwrap_err();
    assert!(
        e.to_string().contains("model.layers.4.self_attn.q_proj.weight"),
        "{e}"
    );
}

//! The Gemma-2 text encoder export (issue 12) on the tiny Hugging Face checkpoint of `tests/golden/gemma/model`
//! (written by transformers through `reference/gen_gemma_golden.py`).
//!
//! The numbers are checked by `reference/check_gemma_onnx.py` (ONNX Runtime against transformers' hidden states):
//! `GEMMA_ONNX_OUT=DIR cargo test -p pixeldit-exporter --test gemma` leaves `DIR/gemma-tiny-s300.onnx` and
//! `DIR/gemma-tiny-s579.onnx` (the recipe's prompt length) for it.
//!
//! Until the library exposes `model::gemma` (a one-line `pub mod gemma;` in `src/model/mod.rs`), the module is
//! compiled into this test crate directly.

#[allow(dead_code)]
#[path = "../src/model/gemma/mod.rs"]
mod gemma;

pub use pixeldit_exporter::{ExportError, Result};

use gemma::{GemmaConfig, GemmaWeights};
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
        let report = gemma::export_to_file(&cfg, &weights, seq, &path, None).unwrap();
        let params: usize = cfg
            .parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(report.weight_params, params);
        assert!(path.is_file());
    }
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

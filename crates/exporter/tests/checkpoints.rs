//! Official checkpoint formats (tests/golden/checkpoints/, written by PyTorch's own `torch.save`): a Lightning
//! `.ckpt`, a SANA-style T2I `.pth` and a bf16 safetensors repack must give exactly the tensors, and the same ONNX
//! bytes, as the plain float32 safetensors they were made from.

mod common;

use common::root;
use pixeldit_exporter::model::parameter_shapes;
use pixeldit_exporter::weights::Lookup;
use pixeldit_exporter::{export_to_file, load_weights, ExportOptions, Weights, WeightsSpec};
use pixeldit_spec::ModelConfig;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    root().join("tests/golden/checkpoints").join(name)
}

fn nano() -> ModelConfig {
    ModelConfig::from_json(&std::fs::read_to_string(fixture("c2i-nano.json")).unwrap()).unwrap()
}

fn t2i_plain() -> PathBuf {
    root().join("tests/golden/t2i/t2i_tiny.safetensors")
}

/// Every expected key reads to the same f32 values from both files.
fn assert_same_tensors(cfg: &ModelConfig, a: &Path, b: &Path) {
    let (wa, wb) = (
        Weights::from_checkpoint(a).unwrap(),
        Weights::from_checkpoint(b).unwrap(),
    );
    let shapes = parameter_shapes(cfg).unwrap();
    for (k, shape) in &shapes {
        for w in [&wa, &wb] {
            assert!(
                matches!(w.source_for(k, shape).unwrap(), Lookup::Found(_)),
                "{k} missing"
            );
        }
        let va = wa.source(k).unwrap().read().unwrap();
        let vb = wb.source(k).unwrap().read().unwrap();
        assert!(
            va.iter().map(|v| v.to_bits()).eq(vb.iter().map(|v| v.to_bits())),
            "{k}: values differ between {} and {}",
            a.display(),
            b.display()
        );
    }
}

fn export_bytes(cfg: &ModelConfig, ck: &Path, dir: &Path, name: &str) -> Vec<u8> {
    let out = dir.join(name);
    export_to_file(
        &ExportOptions::new(cfg.clone(), WeightsSpec::Checkpoint(ck.to_path_buf())),
        &out,
    )
    .unwrap_or_else(|e| panic!("{}: {e}", ck.display()));
    std::fs::read(out).unwrap()
}

#[test]
fn lightning_ckpt_reads_the_ema_copy() {
    let cfg = nano();
    let ckpt = fixture("c2i_nano_lightning.ckpt");
    assert_same_tensors(&cfg, &ckpt, &fixture("c2i_nano.safetensors"));
    let opts = ExportOptions::new(cfg, WeightsSpec::Checkpoint(ckpt));
    let (_, report) = load_weights(&opts).unwrap();
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    // The non-EMA copy and the REPA projector are dropped; optimizer moments are never even listed.
    assert!(report
        .dropped
        .iter()
        .any(|k| k == "denoiser.s_embedder.proj.weight"));
    assert!(report
        .dropped
        .iter()
        .any(|k| k == "diffusion_trainer.proj.0.4.bias"));
    assert!(report
        .dropped
        .iter()
        .all(|k| k.starts_with("denoiser.") || k.starts_with("diffusion_trainer.")));
}

#[test]
fn lightning_ckpt_exports_like_plain_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = nano();
    let a = export_bytes(&cfg, &fixture("c2i_nano_lightning.ckpt"), dir.path(), "a.onnx");
    let b = export_bytes(&cfg, &fixture("c2i_nano.safetensors"), dir.path(), "b.onnx");
    assert!(a == b, "model bytes differ");
    // The format is detected by its magic bytes whatever the extension.
    let renamed = dir.path().join("weights.bin");
    std::fs::copy(fixture("c2i_nano_lightning.ckpt"), &renamed).unwrap();
    let c = export_bytes(&cfg, &renamed, dir.path(), "c.onnx");
    assert!(c == b, "export of the renamed checkpoint differs");
}

#[test]
fn t2i_pth_and_bf16_repack_read_like_plain_safetensors() {
    let cfg = ModelConfig::preset("t2i-tiny").unwrap();
    assert_same_tensors(&cfg, &fixture("t2i_tiny.pth"), &t2i_plain());
    assert_same_tensors(&cfg, &fixture("t2i_tiny_bf16.safetensors"), &t2i_plain());
    let opts = ExportOptions::new(cfg, WeightsSpec::Checkpoint(fixture("t2i_tiny.pth")));
    let (_, report) = load_weights(&opts).unwrap();
    assert!(report.unused.is_empty(), "unused: {:?}", report.unused);
    assert_eq!(report.dropped.len(), 6, "{:?}", report.dropped);
    assert!(report.dropped.iter().all(|k| k.starts_with("_repa_projector.")));
}

/// Exports a bad checkpoint and checks the error message and that nothing is left behind.
fn fails(dir: &Path, ck: &Path, expect: &[&str]) {
    let out_path = dir.join("bad.onnx");
    let opts = ExportOptions::new(nano(), WeightsSpec::Checkpoint(ck.to_path_buf()));
    let err = export_to_file(&opts, &out_path).expect_err("a bad checkpoint must fail");
    let stderr = err.to_string();
    for e in expect {
        assert!(
            stderr.contains(e),
            "stderr for {} lacks '{e}':\n{stderr}",
            ck.display()
        );
    }
    assert!(!out_path.exists(), "partial output left behind");
}

#[test]
fn bad_checkpoints_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fails(
        d,
        &fixture("legacy.pt"),
        &["legacy.pt", "legacy torch.save format"],
    );

    let unknown = d.join("unknown.ckpt");
    std::fs::write(&unknown, b"GGUF\x03\x00\x00\x00 not a checkpoint").unwrap();
    fails(d, &unknown, &["unknown.ckpt", "unknown checkpoint format"]);

    let bytes = std::fs::read(fixture("c2i_nano_lightning.ckpt")).unwrap();
    let truncated = d.join("truncated.ckpt");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    fails(d, &truncated, &["truncated.ckpt", "torch.save archive"]);

    // One flipped byte in a storage the export reads fails that record's CRC-32 at read time.
    let ck = pixeldit_exporter::checkpoint::torch_zip::open(&bytes).unwrap();
    assert_eq!(ck.source, "state_dict");
    assert!(ck.skipped_top_level.iter().any(|k| k == "optimizer_states"));
    let t = ck
        .tensors
        .iter()
        .find(|t| t.name == "ema_denoiser.s_embedder.proj.weight")
        .unwrap();
    let mut flipped = bytes.clone();
    flipped[t.start + 10] ^= 0x55;
    let corrupt = d.join("corrupt.ckpt");
    std::fs::write(&corrupt, flipped).unwrap();
    fails(d, &corrupt, &["CRC-32"]);

    // A state dict whose tensors belong to another model: missing keys are named.
    fails(
        d,
        &fixture("t2i_tiny.pth"),
        &["t2i_tiny.pth", "missing key", "y_embedder.embedding_table.weight"],
    );
}

//! Integration tests of the text-to-image export: structure snapshots, parameter counts, the official checkpoint
//! layouts (`.pth`, bf16 repack) giving the same bytes as plain safetensors, and (with the project's Python venv)
//! the ONNX checker and ONNX Runtime against the independent numpy reference (tests/golden/t2i/).

mod common;

use common::{python, python_check_models, reference_rel_l2, root};
use pixeldit_exporter::{build_graph, export_to_file, load_weights, ExportOptions, WeightsSpec};
use pixeldit_spec::{AttentionMode, ModelConfig};
use std::path::PathBuf;

fn golden() -> PathBuf {
    root().join("tests/golden/t2i/t2i_tiny.safetensors")
}

fn opts(ck: WeightsSpec, mode: AttentionMode) -> ExportOptions {
    let mut o = ExportOptions::new(ModelConfig::preset("t2i-tiny").unwrap(), ck);
    o.attention = mode;
    o
}

#[test]
fn t2i_graph_dumps_are_stable() {
    for mode in AttentionMode::ALL {
        let o = opts(WeightsSpec::RandomInit { seed: 0 }, *mode);
        let (w, _) = load_weights(&o).unwrap();
        let dump = build_graph(&o, &w).unwrap().dump();
        insta::assert_snapshot!(format!("t2i_tiny_{mode}"), dump);
    }
}

#[test]
fn t2i_parameter_count_from_initializers() {
    // Spec section 1: 1302.47M; the graph holds all but the last block's dead text-side output.
    let cfg = ModelConfig::preset("t2i").unwrap();
    let schema = pixeldit_exporter::model::parameter_shapes(&cfg).unwrap();
    let count: usize = schema.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert!((count as f64 / 1e6 - 1302.47).abs() < 0.005, "{count}");
    let o = ExportOptions::new(cfg.clone(), WeightsSpec::RandomInit { seed: 0 });
    let (w, _) = load_weights(&o).unwrap();
    let g = build_graph(&o, &w).unwrap();
    let mut names: Vec<String> = g
        .initializers()
        .filter(|(_, i)| i.is_weight())
        .map(|(_, i)| i.name.clone())
        .collect();
    let n: usize = g
        .initializers()
        .filter(|(_, i)| i.is_weight())
        .map(|(_, i)| i.numel())
        .sum();
    // The schema's keys that the graph does not hold: the last block's dead text-side output (declared by the
    // model file so that checkpoints holding them report no unused keys).
    let dead: Vec<&(String, Vec<usize>)> = schema.iter().filter(|(k, _)| !names.contains(k)).collect();
    let last = format!("patch_blocks.{}.", cfg.patch_depth - 1);
    assert_eq!(dead.len(), 6, "{dead:?}");
    assert!(dead.iter().all(|(k, _)| k.starts_with(&last)), "{dead:?}");
    let dead_n: usize = dead.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(dead_n, 21_236_736);
    assert_eq!(n + dead_n, count);
    let mut expected: Vec<String> = schema
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| names.contains(k))
        .collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected, "initializer names equal the checkpoint keys");
}

#[test]
fn t2i_official_layouts_export_like_plain_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let ck = root().join("tests/golden/checkpoints");
    let export = |src: PathBuf, name: &str| {
        let out = dir.path().join(name);
        export_to_file(&opts(WeightsSpec::Checkpoint(src), AttentionMode::Custom), &out).unwrap();
        std::fs::read(out).unwrap()
    };
    let plain = export(golden(), "plain.onnx");
    assert!(
        export(ck.join("t2i_tiny.pth"), "pth.onnx") == plain,
        ".pth bytes differ"
    );
    assert!(
        export(ck.join("t2i_tiny_bf16.safetensors"), "bf16.onnx") == plain,
        "bf16 repack bytes differ"
    );
}

#[test]
fn t2i_checker_ort_and_reference_agree() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tool = root().join("tools/onnx_check.py");
    let cases = root().join("tests/golden/t2i/cases.safetensors");
    let mut paths = Vec::new();
    for mode in AttentionMode::ALL {
        for (case, h, w) in [("case_a", 32, 48), ("case_b", 32, 32), ("case_c", 48, 32)] {
            let mut o = opts(WeightsSpec::Checkpoint(golden()), *mode);
            o.height = h;
            o.width = w;
            let p = dir.path().join(format!("{mode}_{case}.onnx"));
            export_to_file(&o, &p).unwrap();
            paths.push(p.clone());
            if *mode == AttentionMode::Custom {
                continue; // the custom ops run in the Rust runtime (crates/runtime/tests/t2i.rs)
            }
            let rel = reference_rel_l2(&py, &tool, &[p.to_str().unwrap(), case, cases.to_str().unwrap()]);
            assert!(rel < 1e-4, "{mode} {case}: relative L2 {rel}");
        }
    }
    python_check_models(&py, &tool, &paths);
}

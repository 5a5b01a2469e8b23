//! Integration tests of the exporter library: structure snapshots and parameter counts. The `pixeldit-export`
//! binary's tests (determinism, bad input, ONNX checker, reference numerics) are in `crates/cli/tests/export_cli.rs`.

mod common;

use pixeldit_exporter::{build_graph, load_weights, ExportOptions, WeightsSpec};
use pixeldit_spec::{AttentionMode, ModelConfig, PixelOps};

fn tiny_opts(mode: AttentionMode) -> ExportOptions {
    let mut o = ExportOptions::new(
        ModelConfig::preset("tiny").unwrap(),
        WeightsSpec::RandomInit { seed: 0 },
    );
    o.attention = mode;
    o
}

#[test]
fn graph_dumps_are_stable() {
    for mode in AttentionMode::ALL {
        let opts = tiny_opts(*mode);
        let (w, _) = load_weights(&opts).unwrap();
        let dump = build_graph(&opts, &w).unwrap().dump();
        insta::assert_snapshot!(format!("tiny_{mode}"), dump);
    }
    // Fused pixel ops: the PiT blocks as PixelModulate -> compaction -> PixelGatedMlp, adaLN without its bias Add.
    let mut opts = tiny_opts(AttentionMode::Custom);
    opts.pixel_ops = PixelOps::Fused;
    let (w, _) = load_weights(&opts).unwrap();
    insta::assert_snapshot!("tiny_custom_fused", build_graph(&opts, &w).unwrap().dump());
}

#[test]
fn parameter_counts_from_initializers() {
    // Spec section 1: 184.75M / 569.65M / 797.38M, read back from the graph's weight initializers.
    for (preset, millions) in [("B", 184.75), ("L", 569.65), ("XL", 797.38)] {
        let opts = ExportOptions::new(
            ModelConfig::preset(preset).unwrap(),
            WeightsSpec::RandomInit { seed: 0 },
        );
        let (w, _) = load_weights(&opts).unwrap();
        let g = build_graph(&opts, &w).unwrap();
        let n: usize = g
            .initializers()
            .filter(|(_, i)| i.is_weight())
            .map(|(_, i)| i.numel())
            .sum();
        assert!((n as f64 / 1e6 - millions).abs() < 0.005, "{preset}: {n}");
        let keys: Vec<_> = g
            .initializers()
            .filter(|(_, i)| i.is_weight())
            .map(|(_, i)| i.name.clone())
            .collect();
        let expected: Vec<_> = pixeldit_exporter::model::parameter_shapes(&opts.config)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let (mut a, mut b) = (keys.clone(), expected.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "initializer names equal the checkpoint keys");
    }
}

//! One forward pass of the exported tiny model against the independent Python reference
//! (`tests/golden/forward/cases.safetensors`: non-square 32x48 at batch 2 with t = 0.13 / 0.87 and the null class,
//! 32x32 at t = 0 / 1, 48x32 with the null class), for every attention lowering, on tract and ORT CPU (the custom
//! `pixeldit.RotaryAttention` op runs on the Rust kernels). Tolerance: 1e-4 relative L2 (measured: ~1e-6).

use crate::util::*;
use ndarray::{Array1, Array4};
use pixeldit_exporter::{export_to_file, ExportOptions, WeightsSpec};
use pixeldit_runtime::backend::{self, Candidate, LoadOptions};
use pixeldit_spec::{AttentionMode, ModelConfig};

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) x: Array4<f32>,
    pub(crate) t: Array1<f32>,
    pub(crate) y: Array1<i64>,
    pub(crate) v: Vec<f32>,
}

/// The golden cases of `tests/golden/forward/cases.safetensors`.
pub(crate) fn cases() -> Vec<Case> {
    let path = workspace().join("tests/golden/forward/cases.safetensors");
    let bytes = std::fs::read(&path).expect("golden cases");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |k: &str| -> (Vec<usize>, Vec<f32>) {
        let t = st.tensor(k).unwrap();
        (t.shape().to_vec(), le_f32s(t.data()))
    };
    ["case_a", "case_b", "case_c"]
        .into_iter()
        .map(|name| {
            let (xs, x) = f32s(&format!("{name}.x"));
            let (_, t) = f32s(&format!("{name}.t"));
            let y = le_i64s(st.tensor(&format!("{name}.y")).unwrap().data());
            Case {
                name,
                x: Array4::from_shape_vec([xs[0], xs[1], xs[2], xs[3]], x).unwrap(),
                t: Array1::from(t),
                y: Array1::from_vec(y),
                v: f32s(&format!("{name}.v")).1,
            }
        })
        .collect()
}

#[test]
fn forward_matches_reference_for_every_attention_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut candidates = vec![(Candidate::Tract, LoadOptions::default())];
    if let Some(lib) = need_ort("forward_matches_reference") {
        candidates.push((
            Candidate::Ort(backend::ort::OrtProvider::Cpu),
            LoadOptions::default().with_ort_lib(Some(lib)),
        ));
    }
    for case in cases() {
        let (h, w) = (case.x.shape()[2], case.x.shape()[3]);
        for mode in AttentionMode::ALL {
            let mut opts = ExportOptions::new(
                ModelConfig::preset("tiny").unwrap(),
                WeightsSpec::Checkpoint(workspace().join("tests/golden/forward/tiny.safetensors")),
            );
            opts.attention = *mode;
            opts.height = h;
            opts.width = w;
            let path = dir.path().join(format!("{}_{mode}.onnx", case.name));
            export_to_file(&opts, &path).unwrap();
            for (c, lo) in &candidates {
                let mut b = load_denoiser(&path, *c, lo).unwrap_or_else(|e| panic!("{c}: {e}"));
                let v = b
                    .forward(case.x.view(), case.t.view(), case.y.view().into())
                    .unwrap();
                let err = rel_l2(v.as_slice().unwrap(), &case.v);
                eprintln!("{} {mode} {c}: relative L2 {err:.2e}", case.name);
                assert!(err < 1e-4, "{} {mode} {c}: relative L2 {err} >= 1e-4", case.name);
            }
        }
    }
}

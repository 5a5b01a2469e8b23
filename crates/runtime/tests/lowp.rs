//! FLOAT8/BFLOAT16 model (`lowp.onnx`): tract loads it through the f32 rewrite and computes exactly what ONNX
//! Runtime (and numpy + ml_dtypes, `lowp_expected.npy`) computes.

use crate::util::*;
use pixeldit_runtime::backend::tract::TractBackend;
use pixeldit_runtime::io::read_npy;
use pixeldit_runtime::Backend;

#[test]
fn tract_rewrites_float8_and_bf16_and_matches_reference() {
    let x = read_npy(&fixture("lowp_x.npy")).unwrap();
    let want = read_npy(&fixture("lowp_expected.npy")).unwrap();
    let mut b = TractBackend::open(&fixture("lowp.onnx")).unwrap();
    let notes = b.notes().join("\n");
    for expect in [
        "FLOAT8E4M3FN initializers decoded to f32",
        "BFLOAT16 initializers decoded to f32",
        "DequantizeLinear of low-precision weights folded",
        "QuantizeLinear to FLOAT8E4M3FN replaced",
        "DequantizeLinear of FLOAT8 activations replaced by Mul",
        "Cast to BFLOAT16 replaced by f32 rounding",
    ] {
        assert!(notes.contains(expect), "missing note '{expect}' in:\n{notes}");
    }
    let got = b.run_f32(&[x.view()]).unwrap();
    assert_eq!(got[0].shape(), want.shape());
    assert_eq!(
        max_abs_diff(got[0].as_slice().unwrap(), want.as_slice().unwrap()),
        0.0
    );
}

#[test]
fn ort_runs_the_same_model() {
    use pixeldit_runtime::backend::ort::{OrtBackend, OrtOptions};
    let Some(lib) = need_ort("ort_runs_the_same_model") else {
        return;
    };
    let x = read_npy(&fixture("lowp_x.npy")).unwrap();
    let want = read_npy(&fixture("lowp_expected.npy")).unwrap();
    let opts = OrtOptions {
        library: Some(lib),
        ..Default::default()
    };
    let got = OrtBackend::with_options(&fixture("lowp.onnx"), &opts)
        .unwrap()
        .run_f32(&[x.view()])
        .unwrap();
    assert_eq!(
        max_abs_diff(got[0].as_slice().unwrap(), want.as_slice().unwrap()),
        0.0
    );
}

#[test]
fn tract_reads_low_precision_external_data() {
    let x = read_npy(&fixture("lowp_x.npy")).unwrap();
    let want = read_npy(&fixture("lowp_expected.npy")).unwrap();
    let mut b = TractBackend::open(&fixture("lowp_external.onnx")).unwrap();
    let got = b.run_f32(&[x.view()]).unwrap();
    assert_eq!(
        max_abs_diff(got[0].as_slice().unwrap(), want.as_slice().unwrap()),
        0.0
    );
}

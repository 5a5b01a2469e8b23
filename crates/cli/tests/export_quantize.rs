//! `pixeldit-export` quantization options end to end: the side JSON, the metadata, `--accuracy-report`, globs and
//! bad values (the quantizer itself is tested in `crates/quantize/tests`).

use crate::util::root;
use std::path::Path;
use std::process::{Command, Output};

fn export(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
        .args(["--preset", "tiny", "--checkpoint"])
        .arg(root().join("tests/golden/forward/tiny.safetensors"))
        .args(args)
        .arg("-q")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn int8_with_globs_calibration_flags_and_accuracy_report() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("t.onnx");
    let report = dir.path().join("acc.json");
    let o = export(&[
        "--precision",
        "int8",
        "--quant-exclude",
        "patch_blocks.1.*",
        "--quant-include",
        "final_layer.*",
        "--calib-seeds",
        "3",
        "--calib-classes",
        "2,5",
        "--calib-steps",
        "4",
        "--smoothquant",
        "off",
        "--accuracy-report",
        report.to_str().unwrap(),
        "--eval-seeds",
        "7",
        "--eval-steps",
        "3",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let q = json(&dir.path().join("t.quant.json"));
    let quantized: Vec<&str> = q["quantized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(quantized.contains(&"final_layer.linear"));
    assert!(quantized.contains(&"patch_blocks.0.attn.qkv"));
    assert!(!quantized.iter().any(|s| s.starts_with("patch_blocks.1.")));
    assert_eq!(q["config"]["smoothquant"], serde_json::Value::Null);
    let c = &q["calibration"];
    assert_eq!(c["seeds"], serde_json::json!([3]));
    assert_eq!(c["classes"], serde_json::json!([2, 5]));
    assert_eq!(c["steps"], 4);
    assert_eq!(c["forwards"], 4);
    let r = json(&report);
    assert_eq!(r["precision"], "int8");
    assert_eq!(r["steps"], 3);
    assert_eq!(r["seeds"], serde_json::json!([7]));
    let v = r["v_error"].as_array().unwrap();
    assert_eq!(v.len(), 5);
    for e in v {
        let x = e["rel_l2"].as_f64().unwrap();
        assert!(x > 0.0 && x < 0.5, "{e}");
    }
    assert!(r["sample_psnr_pooled_db"].as_f64().unwrap() > 10.0);
    // -q: the report is in the file, nothing on the terminal.
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}", text(&o));
}

#[test]
fn fp32_accuracy_report_is_exact_and_bad_values_fail() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("f.onnx");
    let report = dir.path().join("acc.json");
    let o = export(&[
        "--accuracy-report",
        report.to_str().unwrap(),
        "--eval-steps",
        "2",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let r = json(&report);
    assert!(r["v_error"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["rel_l2"] == 0.0));
    assert!(!dir.path().join("f.quant.json").exists());

    for (args, expect) in [
        (
            vec!["--precision", "int8", "--smoothquant", "2"],
            "expected off or an alpha in [0, 1]",
        ),
        (
            vec!["--precision", "int8", "--calib-method", "mse"],
            "expected max or percentile:P",
        ),
        (
            vec!["--precision", "fp8-weights", "--smoothquant", "0.5"],
            "SmoothQuant needs quantized activations",
        ),
        (
            vec!["--precision", "fp8", "--calib-classes", "10"],
            "class 10 is out of range",
        ),
        (
            vec!["--precision", "int8", "--int8-weight-range", "8bit"],
            "possible values: reduced, full",
        ),
    ] {
        let mut a = args.clone();
        a.extend(["-o", model.to_str().unwrap()]);
        let o = export(&a);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(text(&o).contains(expect), "{args:?}: {}", text(&o));
    }
}

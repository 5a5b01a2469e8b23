//! `pixeldit-export`: determinism, bad input, and (with the project's Python venv) the official ONNX checker,
//! ONNX Runtime and the independent numpy reference of `reference/`.

use crate::util::{le_f32s, python, python_check_models, reference_rel_l2, root};
use pixeldit_spec::AttentionMode;
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden_ckpt() -> PathBuf {
    root().join("tests/golden/forward/tiny.safetensors")
}

fn export_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
        .args(args)
        .arg("-q")
        .output()
        .unwrap()
}

#[test]
fn export_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.onnx");
    let b = dir.path().join("b.onnx");
    let ck = golden_ckpt();
    for p in [&a, &b] {
        let out = export_cli(&[
            "--preset",
            "tiny",
            "--checkpoint",
            ck.to_str().unwrap(),
            "-o",
            p.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "model bytes differ"
    );
    let out = export_cli(&[
        "--preset",
        "tiny",
        "--random-init",
        "--seed",
        "3",
        "--external-data",
        "always",
        "-o",
        a.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let data1 = std::fs::read(dir.path().join("a.onnx.data")).unwrap();
    let out = export_cli(&[
        "--preset",
        "tiny",
        "--random-init",
        "--seed",
        "3",
        "--external-data",
        "always",
        "-o",
        b.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    assert!(
        data1 == std::fs::read(dir.path().join("b.onnx.data")).unwrap(),
        "external data differs"
    );
}

fn write_safetensors(path: &Path, tensors: Vec<(String, Vec<usize>, Vec<f32>)>) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(k, s, v)| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn read_golden() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(golden_ckpt()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, t)| {
            let vals = le_f32s(t.data());
            (k, t.shape().to_vec(), vals)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Runs a failing export and checks exit code, message and that no model file is left behind.
fn assert_fails(dir: &Path, args: &[&str], expect: &[&str]) {
    let out_path = dir.join("bad.onnx");
    let mut all = args.to_vec();
    all.extend(["-o", out_path.to_str().unwrap()]);
    let out = export_cli(&all);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure for {args:?}");
    for e in expect {
        assert!(stderr.contains(e), "stderr for {args:?} lacks '{e}':\n{stderr}");
    }
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("bad.onnx"))
        .collect();
    assert!(left.is_empty(), "partial output left behind: {left:?}");
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let golden = read_golden();

    let missing = d.join("missing.safetensors");
    write_safetensors(
        &missing,
        golden
            .iter()
            .filter(|t| t.0 != "patch_blocks.1.attn.proj.bias")
            .cloned()
            .collect(),
    );
    assert_fails(
        d,
        &["--preset", "tiny", "--checkpoint", missing.to_str().unwrap()],
        &["missing key", "patch_blocks.1.attn.proj.bias"],
    );

    let wrong = d.join("wrong.safetensors");
    let mut w = golden.clone();
    let t = w
        .iter_mut()
        .find(|t| t.0 == "pixel_blocks.0.mlp.fc1.weight")
        .unwrap();
    t.1 = vec![16, 64];
    write_safetensors(&wrong, w);
    assert_fails(
        d,
        &["--preset", "tiny", "--checkpoint", wrong.to_str().unwrap()],
        &["pixel_blocks.0.mlp.fc1.weight", "[16, 64]", "[64, 16]"],
    );

    let ck = golden_ckpt();
    assert_fails(
        d,
        &[
            "--preset",
            "tiny",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--height",
            "40",
        ],
        &["40x32", "multiples of the patch size 16"],
    );

    let corrupt = d.join("corrupt.safetensors");
    let mut bytes = std::fs::read(&ck).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, bytes).unwrap();
    assert_fails(
        d,
        &["--preset", "tiny", "--checkpoint", corrupt.to_str().unwrap()],
        &["corrupt.safetensors", "not a valid safetensors"],
    );

    assert_fails(
        d,
        &[
            "--preset",
            "tiny",
            "--checkpoint",
            d.join("nope.safetensors").to_str().unwrap(),
        ],
        &["nope.safetensors"],
    );
    assert_fails(
        d,
        &["--preset", "XXL", "--random-init"],
        &["unknown preset 'XXL'"],
    );

    // A prefixed official layout with training-only keys loads and gives the same model bytes.
    let prefixed = d.join("prefixed.safetensors");
    let mut p: Vec<_> = golden
        .iter()
        .map(|(k, s, v)| (format!("ema_denoiser.{k}"), s.clone(), v.clone()))
        .collect();
    p.push((
        "diffusion_trainer.proj.0.0.weight".into(),
        vec![2, 2],
        vec![0.0; 4],
    ));
    write_safetensors(&prefixed, p);
    let a = d.join("a.onnx");
    let b = d.join("b.onnx");
    assert!(export_cli(&[
        "--preset",
        "tiny",
        "--checkpoint",
        prefixed.to_str().unwrap(),
        "-o",
        a.to_str().unwrap()
    ])
    .status
    .success());
    assert!(export_cli(&[
        "--preset",
        "tiny",
        "--checkpoint",
        ck.to_str().unwrap(),
        "-o",
        b.to_str().unwrap()
    ])
    .status
    .success());
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "model bytes differ"
    );
}

/// `--pixel-ops auto` (the default): fused pixel ops where the export uses the custom attention op and can be
/// fused (fp32 and the fp32-based quantized variants, in the graph and the metadata alike), standard ops for the
/// standard-op lowerings, 16-bit variants and Triton repositories.
#[test]
fn auto_pixel_ops_fuse_where_the_export_can() {
    use pixeldit_runtime::model::ModelInfo;
    let dir = tempfile::tempdir().unwrap();
    let ck = golden_ckpt();
    let count = |path: &Path, ops: &[&str]| {
        ModelInfo::read(path)
            .unwrap()
            .custom_nodes()
            .filter(|n| ops.contains(&n.op_type.as_str()))
            .count()
    };
    let fused_ops = |path: &Path| -> (String, usize) {
        let meta = ModelInfo::read(path).unwrap().pixeldit_metadata().unwrap();
        (
            meta.pixel_ops.to_string(),
            count(path, &["PixelModulate", "PixelGatedMlp"]),
        )
    };
    for (extra, want) in [
        (&[][..], "fused"),
        (&["--precision", "int8", "--calib-steps", "2"][..], "fused"),
        (&["--precision", "bf16"][..], "standard"),
        (&["--attention", "decomposed"][..], "standard"),
        (&["--pixel-ops", "standard"][..], "standard"),
    ] {
        let out_path = dir.path().join("m.onnx");
        let mut args = vec!["--preset", "tiny", "--checkpoint", ck.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", out_path.to_str().unwrap()]);
        let out = export_cli(&args);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (meta, nodes) = fused_ops(&out_path);
        assert_eq!(meta, want, "{extra:?}: metadata");
        // tiny has one PiT block: one PixelModulate and one PixelGatedMlp.
        assert_eq!(
            nodes,
            if want == "fused" { 2 } else { 0 },
            "{extra:?}: fused nodes"
        );
        // tiny has two patch blocks: two RmsNormModulate and one SwiGlu each.
        assert_eq!(
            (
                count(&out_path, &["RmsNormModulate"]),
                count(&out_path, &["SwiGlu"])
            ),
            if want == "fused" { (4, 2) } else { (0, 0) },
            "{extra:?}: fused patch-level nodes"
        );
        // The pixel-level graph of the patch-level split is written with the same ops.
        let (pixel_meta, pixel_nodes) = fused_ops(&dir.path().join("m.pixel.onnx"));
        assert_eq!(
            (pixel_meta.as_str(), pixel_nodes),
            (want, nodes),
            "{extra:?}: pixel level"
        );
    }
}

#[test]
fn fused_pixel_ops_refuse_what_they_cannot_express() {
    let dir = tempfile::tempdir().unwrap();
    let ck = golden_ckpt();
    let base = [
        "--preset",
        "tiny",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--pixel-ops",
        "fused",
    ];
    let with = |extra: &[&'static str]| [&base[..], extra].concat();
    assert_fails(
        dir.path(),
        &with(&["--precision", "fp16"]),
        &["fused pixel ops", "fp16", "16-bit float"],
    );
    assert_fails(
        dir.path(),
        &with(&["--attention", "onnx23"]),
        &["fused pixel ops", "onnx23"],
    );
    assert_fails(
        dir.path(),
        &["--preset", "tiny", "--random-init", "--pixel-ops", "fastest"],
        &["invalid value 'fastest'", "auto", "standard", "fused"],
    );
}

#[test]
fn attention_matmul_applies_to_quantized_precisions_only() {
    let dir = tempfile::tempdir().unwrap();
    assert_fails(
        dir.path(),
        &["--preset", "tiny", "--random-init", "--attention-matmul", "bf16"],
        &[
            "--attention-matmul",
            "quantized precisions",
            "fp32 keeps f32 attention",
        ],
    );
    assert_fails(
        dir.path(),
        &[
            "--preset",
            "tiny",
            "--random-init",
            "--precision",
            "int8",
            "--attention-matmul",
            "f16",
        ],
        &["invalid value 'f16'", "bf16", "f32"],
    );
}

#[test]
fn onnx_checker_ort_and_reference_agree() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ck = golden_ckpt();
    let tool = root().join("tools/onnx_check.py");
    let mut paths = Vec::new();
    for mode in AttentionMode::ALL {
        for (case, h, w) in [
            ("case_a", "32", "48"),
            ("case_b", "32", "32"),
            ("case_c", "48", "32"),
        ] {
            let p = dir.path().join(format!("{mode}_{case}.onnx"));
            let out = export_cli(&[
                "--preset",
                "tiny",
                "--checkpoint",
                ck.to_str().unwrap(),
                "--attention",
                mode.as_str(),
                "--height",
                h,
                "--width",
                w,
                "-o",
                p.to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            paths.push(p.clone());
            if *mode == AttentionMode::Custom {
                continue; // numerics of the custom op are checked by the runtime's tests (Rust kernels)
            }
            let rel = reference_rel_l2(&py, &tool, &[p.to_str().unwrap(), case]);
            assert!(rel < 1e-4, "{mode} {case}: relative L2 {rel}");
        }
    }
    python_check_models(&py, &tool, &paths);
}

#[test]
fn progress_leaves_no_escape_codes_in_logs() {
    // stderr is a pipe here, as in `pixeldit-export ... 2>log`: no progress bar, no terminal escapes.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
        .args(["--preset", "tiny", "--random-init", "-o"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (what, bytes) in [("stderr", &out.stderr), ("stdout", &out.stdout)] {
        assert!(
            !bytes.iter().any(|&b| b == 0x1b || b == b'\r'),
            "{what} has escape codes or carriage returns: {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote "));
}

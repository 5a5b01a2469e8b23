//! Quantized text-to-image variants (issue 13, item 2): every precision of a random T2I model exports with
//! activation calibration through the real T2I sampler (DPM-Solver++ with CFG over text conditions: synthetic,
//! embedding files, or prompts through the exported text encoder), runs on ONNX Runtime and tract, and stays within
//! loose accuracy bounds of its fp32 export (`--accuracy-report`, DPM-Solver++ samples from the same noise).
//!
//! Bounds are 5-8 dB below the values measured when they were set on this random model (bf16 53.1, int8 39.5, fp8
//! 32.4, int8-weights 52.2, fp8-weights 39.6 dB with prompt calibration): they catch a broken calibration (which
//! loses tens of dB), not small drifts. The golden matrix for a trained T2I model is separate work.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn export_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
}

/// t2i-tiny with a `[300, 64]` text input (the tiny Gemma-2's width), written next to the tests' files.
fn t2i_config(dir: &Path) -> PathBuf {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workspace().join("graphs/t2i-tiny.json")).unwrap())
            .unwrap();
    cfg["name"] = "t2i-tiny-gemma".into();
    cfg["text"]["embed_dim"] = 64.into();
    cfg["text"]["max_length"] = 300.into();
    let p = dir.join("t2i.json");
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn every_t2i_variant_exports_calibrated_and_runs_on_both_backends() {
    let lib = need_ort("every_t2i_variant_exports_calibrated_and_runs_on_both_backends");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = t2i_config(d);
    let gemma = workspace().join("tests/golden/gemma/model");
    let out = run(export_cmd()
        .current_dir(d)
        .arg("--text-encoder")
        .arg(&gemma)
        .args(["-o", "gemma.onnx"]));
    assert!(out.status.success());
    std::fs::copy(gemma.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    std::fs::write(d.join("prompts.txt"), "the digit seven\na 3\nzero\n").unwrap();
    for (precision, min_psnr) in [
        ("bf16", 45.0),
        ("int8", 33.0),
        ("fp8", 27.0),
        ("int8-weights", 45.0),
        ("fp8-weights", 33.0),
    ] {
        let model = format!("t2i-{precision}.onnx");
        let acc = format!("acc-{precision}.json");
        let out = run(export_cmd()
            .current_dir(d)
            .arg("--config")
            .arg(&cfg)
            .args(["--random-init", "--precision", precision])
            .args([
                "--calib-prompts",
                "prompts.txt",
                "--calib-text-encoder",
                "gemma.onnx",
            ])
            .args(["--accuracy-report", &acc, "-o", &model]));
        assert!(out.status.success(), "{precision}");
        let r = report(&d.join(&acc));
        let psnr = r["sample_psnr_pooled_db"].as_f64().unwrap();
        assert!(psnr > min_psnr, "{precision}: PSNR {psnr} <= {min_psnr}");
        assert_eq!(r["prompts"].as_array().map(Vec::len), Some(3), "{precision}");
        let summary = report(&d.join(format!("t2i-{precision}.quant.json")));
        if matches!(precision, "int8" | "fp8") {
            let c = &summary["calibration"];
            assert_eq!(c["sampler"], "dpmpp_2m");
            assert_eq!(c["prompts"][0], "the digit seven");
            // 6 steps, CFG on every step (one forward of batch 2K), 2 seeds.
            assert_eq!(c["forwards"], 12);
            assert!(c["cfg_scale"].as_f64().unwrap() > 1.0);
        }
        for be in ["tract", "ort"] {
            if be == "ort" && lib.is_none() {
                continue;
            }
            let mut cmd = bin();
            cmd.current_dir(d)
                .arg(&model)
                .args(["--backend", be, "--prompt", "a 3", "--text-encoder", "gemma.onnx"])
                .args(["-o", &format!("{precision}-{be}.png")]);
            if let Some(lib) = &lib {
                cmd.arg("--ort-lib").arg(lib);
            }
            let out = run(&mut cmd);
            assert!(out.status.success(), "{precision} on {be}");
            assert!(stdout(&out).contains(&format!("precision {precision}")));
        }
    }
}

#[test]
fn t2i_calibration_sources_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = t2i_config(d);
    // Synthetic embeddings by default, with a warning that says how to give real ones.
    let out = run(export_cmd().current_dir(d).arg("--config").arg(&cfg).args([
        "--random-init",
        "--precision",
        "int8",
        "--calib-steps",
        "3",
        "-o",
        "syn.onnx",
    ]));
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("synthetic N(0, 1) text embeddings"),
        "{}",
        stderr(&out)
    );
    let c = &report(&d.join("syn.quant.json"))["calibration"];
    assert_eq!(c["prompts"].as_array().unwrap().len(), 4);
    assert_eq!(c["forwards"], 6);

    // Embedding files: [2, 300, 64] prompts without a negative -> no CFG (the prompt branch only).
    let emb = pixeldit_runtime::io::seeded_noise(5, [2, 300, 64, 1]);
    pixeldit_runtime::io::write_atomic(
        &d.join("emb.npy"),
        &pixeldit_runtime::io::npy_bytes(&[2, 300, 64], emb.iter().copied()),
    )
    .unwrap();
    let out = run(export_cmd().current_dir(d).arg("--config").arg(&cfg).args([
        "--random-init",
        "--precision",
        "fp8",
        "--calib-embeddings",
        "emb.npy",
        "-o",
        "files.onnx",
    ]));
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("calibrating without CFG"),
        "{}",
        stderr(&out)
    );
    let c = &report(&d.join("files.quant.json"))["calibration"];
    assert_eq!(c["prompts"][1], "emb.npy[1]");
    assert_eq!(c["cfg_scale"], 1.0);

    // A directory: its .npy/.safetensors files in name order, without the negative's file (which gives CFG).
    let emb_dir = d.join("emb");
    std::fs::create_dir(&emb_dir).unwrap();
    let write = |name: &str, k: usize, seed: u64| {
        let a = pixeldit_runtime::io::seeded_noise(seed, [k, 300, 64, 1]);
        pixeldit_runtime::io::write_atomic(
            &emb_dir.join(name),
            &pixeldit_runtime::io::npy_bytes(&[k, 300, 64], a.iter().copied()),
        )
        .unwrap();
    };
    write("b.npy", 1, 6);
    write("a.npy", 2, 7);
    write("negative.npy", 1, 8);
    std::fs::write(emb_dir.join("notes.txt"), "not an embedding").unwrap();
    let out = run(export_cmd().current_dir(d).arg("--config").arg(&cfg).args([
        "--random-init",
        "--precision",
        "int8",
        "--calib-embeddings",
        "emb",
        "--calib-negative",
        "emb/negative.npy",
        "--calib-steps",
        "2",
        "-o",
        "dir.onnx",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    let c = &report(&d.join("dir.quant.json"))["calibration"];
    let prompts: Vec<&str> = c["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(prompts, ["emb/a.npy[0]", "emb/a.npy[1]", "emb/b.npy[0]"]);
    assert!(c["cfg_scale"].as_f64().unwrap() > 1.0);

    let fails = |args: &[&str], expect: &str| {
        let out = run(export_cmd()
            .current_dir(d)
            .arg("--config")
            .arg(&cfg)
            .args(["--random-init", "--precision", "int8", "-o", "bad.onnx"])
            .args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(expect), "{args:?}: stderr lacks '{expect}'");
        assert!(!d.join("bad.onnx").exists());
    };
    fails(
        &["--calib-classes", "1,2"],
        "--calib-classes is for class-conditional models",
    );
    fails(&["--calib-embeddings", "missing.npy"], "missing.npy");
    std::fs::create_dir(d.join("empty")).unwrap();
    fails(
        &["--calib-embeddings", "empty"],
        "directory empty has no .npy or .safetensors files",
    );
    fails(
        &["--calib-prompts", "missing.txt", "--calib-text-encoder", "g.onnx"],
        "missing.txt",
    );
}

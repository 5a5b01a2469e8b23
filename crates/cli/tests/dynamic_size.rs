//! Dynamic-size exports (`pixeldit-export --dynamic-size`): one model for every image size.
//!
//! * The dynamic digits and digits-t2i exports equal the static exports at 32x32, 32x64 and 64x32 (one forward,
//!   batch 2) on tract and ORT CPU, for every attention lowering, within 1e-6 relative L2 (measured: 0, the
//!   size-dependent tables are computed in f64 in the graph as the exporter computes the static constants).
//! * The dynamic tiny export matches the independent Python reference at every forward golden case (32x48, 32x32,
//!   48x32; `tests/golden/forward/`), on both backends, one loaded model for all sizes.
//! * The decomposed dynamic tiny and digits-t2i exports run in Python onnxruntime at 32x48, 48x32 and 64x64
//!   against the float64 references (`reference/check_dynamic_onnx.py`; measured 1.3e-6 .. 1.6e-6 and ~2e-7).
//! * Quantized: int8 and fp8 dynamic exports equal static exports calibrated at the same size (`--calib-sizes`),
//!   and meet their golden PSNR thresholds at 32x64 and 64x32 in the accuracy report (`--eval-sizes`).
//! * Triton: a dynamic denoiser repository has `[3, -1, -1]` dims and spans the range in its `trtexec` profile; a
//!   real server (the test venv) serves one repository at 48x32 and 32x64 through the pipeline (`height`/`width`
//!   inputs) and step-wise, one after the other and at once, each equal to the local sample; a size out of range
//!   is refused by the pipeline with the range.
//! * `pixeldit-run --height/--width/--aspect-ratio`: refusals exit 2 before anything runs and write nothing; a
//!   dynamic model's samples at 48x32 (digits; digits-t2i with CFG over ten prompts) equal a static 48x32
//!   export's, on tract and ORT.
//! * The non-square golden of the text-to-image default model (`tests/golden/digits-t2i/32x48/`, float64 reference
//!   at height 32 x width 48): `pixeldit-run --height 32 --width 48` on the dynamic fp32 and int8 exports meets
//!   the thresholds of `thresholds.json` (`nonsquare_32x48`) on tract and ORT CPU; a corrupted checkpoint fails.

use crate::forward::cases;
use crate::util::*;
use ndarray::Array1;
use pixeldit_cli::variant::export_to_file;
use pixeldit_exporter::{ExportOptions, WeightsSpec};
use pixeldit_runtime::io;
use pixeldit_spec::{AttentionMode, DynamicSize, ModelConfig};
use std::path::{Path, PathBuf};

/// Exports `preset` with `weights`: dynamic (default size) when `size` is `None`, else static at `size`.
fn export(
    dir: &Path,
    preset: &str,
    weights: &Path,
    mode: AttentionMode,
    size: Option<(usize, usize)>,
) -> PathBuf {
    let config = ModelConfig::preset(preset).unwrap();
    let mut opts = ExportOptions::new(config, WeightsSpec::Checkpoint(weights.to_path_buf()));
    opts.attention = mode;
    let name = match size {
        Some((h, w)) => {
            opts.height = h;
            opts.width = w;
            format!("{preset}_{mode}_{h}x{w}.onnx")
        }
        None => {
            opts.dynamic = Some(DynamicSize::for_config(&opts.config));
            format!("{preset}_{mode}_dynamic.onnx")
        }
    };
    let path = dir.join(name);
    export_to_file(&opts, &path).unwrap();
    path
}

fn digits_weights() -> PathBuf {
    workspace().join("graphs").join("digits.safetensors")
}

fn tiny_weights() -> PathBuf {
    workspace().join("tests/golden/forward/tiny.safetensors")
}

#[test]
fn dynamic_export_equals_static_export_at_three_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [(32, 32), (32, 64), (64, 32)];
    let mut failures = Vec::new();
    for (preset, weights) in [
        ("digits", digits_weights()),
        (
            "digits-t2i",
            workspace().join("graphs").join("digits-t2i.safetensors"),
        ),
    ] {
        for mode in AttentionMode::ALL {
            let dynamic = export(dir.path(), preset, &weights, *mode, None);
            let meta = pixeldit_runtime::model::read_metadata(&dynamic).unwrap();
            let d = meta.dynamic.as_ref().expect("dynamic metadata");
            assert_eq!((d.min, d.max, d.multiple, d.opt), (16, 64, 16, [32, 32]));
            let text = meta.config.text.clone();
            for (c, lo) in candidates("dynamic_export_equals_static") {
                // One loaded dynamic model serves every size (tract: one plan per input shape).
                let mut dyn_model =
                    load_denoiser(&dynamic, c, &lo).unwrap_or_else(|e| panic!("{preset} {c} {mode}: {e}"));
                for (h, w) in sizes {
                    let fixed = export(dir.path(), preset, &weights, *mode, Some((h, w)));
                    let mut fixed = load_denoiser(&fixed, c, &lo).unwrap();
                    let x = io::seeded_noise(7, [2, 3, h, w]);
                    let y = Array1::from(vec![4i64, 10]);
                    // Text embeddings [2, max_length, embed_dim] (digits-t2i: 300 x 64).
                    let emb = text.as_ref().map(|t| {
                        let e = io::seeded_noise(8, [1, 2, t.max_length, t.embed_dim]);
                        e.index_axis_move(ndarray::Axis(0), 0)
                    });
                    let forward = |m: &mut pixeldit_runtime::Denoiser| match &emb {
                        None => m.forward(x.view(), Array1::from(vec![0.3f32, 0.8]).view(), y.view().into()),
                        Some(e) => m.forward(
                            x.view(),
                            Array1::from(vec![300f32, 800.0]).view(),
                            e.view().into(),
                        ),
                    };
                    let want = forward(&mut fixed).unwrap();
                    let got = forward(&mut dyn_model).unwrap();
                    assert_eq!(got.shape(), &[2, 3, h, w]);
                    let err = rel_l2(got.as_slice().unwrap(), want.as_slice().unwrap());
                    eprintln!("{preset} {mode} {c} {h}x{w}: relative L2 {err:.2e}");
                    if err >= 1e-6 {
                        failures.push(format!(
                            "{preset} {mode} {c} {h}x{w}: relative L2 {err:.2e} >= 1e-6"
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn dynamic_export_matches_reference_at_every_forward_case() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    assert!(
        cases.iter().any(|c| c.x.shape()[2] != c.x.shape()[3]),
        "a non-square case"
    );
    for mode in AttentionMode::ALL {
        let path = export(dir.path(), "tiny", &tiny_weights(), *mode, None);
        for (c, lo) in candidates("dynamic_export_matches_reference") {
            let mut m = load_denoiser(&path, c, &lo).unwrap_or_else(|e| panic!("{c} {mode}: {e}"));
            for case in &cases {
                let v = m
                    .forward(case.x.view(), case.t.view(), case.y.view().into())
                    .unwrap();
                let err = rel_l2(v.as_slice().unwrap(), &case.v);
                eprintln!("{} {mode} {c}: relative L2 {err:.2e}", case.name);
                assert!(err < 1e-4, "{} {mode} {c}: relative L2 {err} >= 1e-4", case.name);
            }
        }
    }
}

#[test]
fn dynamic_decomposed_export_runs_in_python_onnxruntime() {
    let Some(py) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let t2i_weights = workspace().join("graphs").join("digits-t2i.safetensors");
    for (preset, weights) in [("tiny", tiny_weights()), ("digits-t2i", t2i_weights)] {
        let path = export(dir.path(), preset, &weights, AttentionMode::Decomposed, None);
        let out = std::process::Command::new(&py)
            .current_dir(workspace().join("reference"))
            .arg("check_dynamic_onnx.py")
            .arg(&path)
            .arg(&weights)
            .arg(preset)
            .args(["32x48", "48x32", "64x64"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("{preset}:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{preset}: check_dynamic_onnx.py failed");
        assert_eq!(stdout.matches(" ok").count(), 3, "{preset}: {stdout}");
    }
}

#[test]
fn run_takes_sizes_of_a_dynamic_model_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let dynamic = export(
        dir.path(),
        "digits",
        &digits_weights(),
        AttentionMode::Custom,
        None,
    );
    let fixed = export(
        dir.path(),
        "digits",
        &digits_weights(),
        AttentionMode::Custom,
        Some((48, 32)),
    );
    let out = dir.path().join("out.png");
    let refusals: [(&Path, &[&str], &str); 8] = [
        (&dynamic, &["--height", "40"], "multiples of 16 in 16..=64"),
        (&dynamic, &["--height", "0"], "multiples of 16 in 16..=64"),
        (&dynamic, &["--width", "80"], "multiples of 16 in 16..=64"),
        (&dynamic, &["--height=-16"], "-16"),
        (&dynamic, &["--aspect-ratio", "0:1"], "not a positive number"),
        (&dynamic, &["--aspect-ratio", "16"], "expected H:W"),
        (&fixed, &["--height", "32"], "fixed size 48x32, not 32x32"),
        (&fixed, &["--aspect-ratio", "1:1"], "fixed size 48x32"),
    ];
    for (model, args, msg) in refusals {
        let o = run(bin()
            .arg(model)
            .args(["--backend", "tract", "--class", "1", "--steps", "1", "-o"])
            .arg(&out)
            .args(args));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote an output");
    }
    // --aspect-ratio picks the nearest bucket and says so; --height/--width; the dynamic samples equal the static
    // export's, on each backend; the same for the text-to-image model with CFG over ten prompts.
    let t2i_weights = workspace().join("graphs").join("digits-t2i.safetensors");
    let t2i_dynamic = export(
        dir.path(),
        "digits-t2i",
        &t2i_weights,
        AttentionMode::Custom,
        None,
    );
    let t2i_fixed = export(
        dir.path(),
        "digits-t2i",
        &t2i_weights,
        AttentionMode::Custom,
        Some((48, 32)),
    );
    let golden = workspace().join("tests/golden/digits-t2i");
    let (emb, neg) = (golden.join("calib.npy"), golden.join("negative.npy"));
    let c2i: &[&str] = &["--class", "1"];
    let t2i: Vec<&str> = vec![
        "--text-embeddings",
        emb.to_str().unwrap(),
        "--negative-embeddings",
        neg.to_str().unwrap(),
        "--grid",
    ];
    let size: &[&str] = &["--height", "48", "--width", "32"];
    // (model, condition flags, size flags, the static export at that size, images)
    type Case<'a> = (&'a Path, &'a [&'a str], &'a [&'a str], &'a Path, usize);
    let cases: [Case; 3] = [
        (&dynamic, c2i, &["--aspect-ratio", "3:2"], &fixed, 1),
        (&dynamic, c2i, size, &fixed, 1),
        (&t2i_dynamic, &t2i, size, &t2i_fixed, 10),
    ];
    for (i, (model, cond, args, static_model, k)) in cases.into_iter().enumerate() {
        for backend in ["tract", "ort"] {
            if backend == "ort" && need_ort("run_takes_sizes").is_none() {
                continue;
            }
            let mut raws = Vec::new();
            for (m, a) in [(model, args), (static_model, &[][..])] {
                let raw = dir.path().join(format!("raw_{i}_{backend}_{}.npy", raws.len()));
                let o = run(bin()
                    .arg(m)
                    .args(["--backend", backend, "--steps", "2", "-o"])
                    .arg(&out)
                    .arg("--save-raw")
                    .arg(&raw)
                    .args(cond)
                    .args(a));
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(o.status.success(), "{a:?}: {err}");
                if a.contains(&"--aspect-ratio") {
                    assert!(err.contains("--aspect-ratio 3:2: 48x32"), "{err}");
                }
                raws.push(io::read_npy(&raw).unwrap());
            }
            assert_eq!(raws[0].shape(), &[k, 3, 48, 32]);
            assert_eq!(
                raws[0], raws[1],
                "{model:?} {args:?} {backend}: the dynamic model's 48x32 sample differs from the static export's"
            );
        }
    }
}

#[test]
fn quantized_dynamic_export_equals_static_export_calibrated_at_the_same_size() {
    use pixeldit_cli::calibrate::CalibInputs;
    use pixeldit_cli::variant::export_variant_with;
    use pixeldit_quantize::QuantConfig;
    use pixeldit_spec::Precision;
    let dir = tempfile::tempdir().unwrap();
    let candidates = candidates("quantized_dynamic_export");
    for precision in [Precision::Int8, Precision::Fp8] {
        let mut quant = QuantConfig::for_precision(precision).unwrap();
        // A short calibration (one seed, two classes, two steps): both exports see the same forwards.
        (quant.calib.seeds, quant.calib.classes, quant.calib.steps) = (vec![0], vec![1, 7], Some(2));
        for (h, w) in [(32, 32), (32, 64)] {
            let mut paths = Vec::new();
            for dynamic in [false, true] {
                let mut opts = ExportOptions::new(
                    ModelConfig::preset("digits").unwrap(),
                    WeightsSpec::Checkpoint(digits_weights()),
                );
                opts.precision = precision;
                let mut calib = CalibInputs::default();
                if dynamic {
                    opts.dynamic = Some(DynamicSize::for_config(&opts.config));
                    // The default (32x32) calibrates at the model's size; another size needs --calib-sizes.
                    if (h, w) != (32, 32) {
                        calib.sizes = vec![(h, w)];
                    }
                } else {
                    (opts.height, opts.width) = (h, w);
                }
                let path = dir.path().join(format!("{precision}_{h}x{w}_{dynamic}.onnx"));
                export_variant_with(&opts, Some(&quant), &calib, &path, None).unwrap();
                paths.push(path);
            }
            for (c, lo) in &candidates {
                let x = io::seeded_noise(3, [2, 3, h, w]);
                let t = Array1::from(vec![0.2f32, 0.9]);
                let y = Array1::from(vec![7i64, 10]);
                let mut v = Vec::new();
                for p in &paths {
                    let mut m = load_denoiser(p, *c, lo).unwrap_or_else(|e| panic!("{c}: {e}"));
                    v.push(m.forward(x.view(), t.view(), y.view().into()).unwrap());
                }
                let err = rel_l2(v[1].as_slice().unwrap(), v[0].as_slice().unwrap());
                eprintln!("{precision} {c} {h}x{w}: dynamic vs static relative L2 {err:.2e}");
                assert!(err < 1e-6, "{precision} {c} {h}x{w}: relative L2 {err:.2e}");
            }
        }
    }
}

#[test]
fn export_cli_dynamic_size_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.onnx");
    let repo = dir.path().join("repo");
    let export = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pixeldit-export"));
        c.args(["--preset", "digits", "-q"]);
        match args.iter().position(|a| *a == "--triton-repo") {
            Some(i) => c.args(&args[..=i]).arg(&repo).args(&args[i + 1..]),
            None => c.arg("-o").arg(&out).args(args),
        };
        run(&mut c)
    };
    // Refused before anything is written.
    for (args, msg) in [
        (
            &["--dynamic-size", "--min-size", "64", "--max-size", "32"][..],
            "above the maximum",
        ),
        (&["--dynamic-size", "--min-size", "24"][..], "multiples of 16"),
        (
            &["--dynamic-size", "--opt-size", "32x96"][..],
            "32x96 is not accepted",
        ),
        (&["--dynamic-size", "--opt-size", "32"][..], "expected HxW"),
        (&["--min-size", "16"][..], "--dynamic-size"),
        (
            &["--dynamic-size", "--precision", "int8", "--calib-sizes", "32x80"][..],
            "--calib-sizes 32x80",
        ),
        (
            &["--precision", "int8", "--calib-sizes", "32x48"][..],
            "fixed size 32x32",
        ),
        (
            &[
                "--dynamic-size",
                "--precision",
                "int8",
                "--accuracy-report",
                "r.json",
                "--eval-sizes",
                "32x80",
            ][..],
            "--eval-sizes 32x80",
        ),
    ] {
        let o = export(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert!(!out.exists() && !repo.exists(), "{args:?} wrote an output");
    }
    // The range, opt size and buckets land in the metadata; the opt size is the default size.
    let o = export(&[
        "--dynamic-size",
        "--min-size",
        "16",
        "--max-size",
        "48",
        "--opt-size",
        "32x48",
    ]);
    assert!(o.status.success());
    let meta = pixeldit_runtime::model::read_metadata(&out).unwrap();
    let d = meta.dynamic.unwrap();
    assert_eq!(
        (d.min, d.max, d.opt, meta.height, meta.width),
        (16, 48, [32, 48], 32, 48)
    );
    assert!(!d.buckets.is_empty());
    assert!(d.buckets.iter().all(|&[h, w]| d.check(h, w).is_ok()));
}

#[test]
fn triton_repository_of_a_dynamic_model_has_variable_height_and_width() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("models");
    for platform in ["onnxruntime_onnx", "tensorrt_plan"] {
        let _ = std::fs::remove_dir_all(&repo);
        let o = run(std::process::Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
            .args([
                "--preset",
                "digits",
                "--dynamic-size",
                "--no-triton-pipeline",
                "-q",
            ])
            .args(["--triton-platform", platform, "--triton-repo"])
            .arg(&repo));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let model_dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&repo)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let model_dir = model_dirs
            .iter()
            .find(|d| !d.to_string_lossy().ends_with("_pixel"))
            .unwrap()
            .clone();
        let cfg = std::fs::read_to_string(model_dir.join(pixeldit_triton::config::CONFIG_FILE)).unwrap();
        // x and v: [3, -1, -1] without the batch axis.
        assert_eq!(cfg.matches("dims: [ 3, -1, -1 ]").count(), 2, "{cfg}");
        if platform == "onnxruntime_onnx" {
            // (A tensorrt_plan repository validates once the engine is built on the GPU.) The denoiser and its
            // pixel level (the patch-level step cache), whose patch tokens have a variable count too.
            assert_eq!(pixeldit_triton::validate_repository(&repo).unwrap().len(), 2);
            assert!(cfg.contains("dims: [ -1, 64 ]"), "{cfg}");
            let pixel = model_dirs
                .iter()
                .find(|d| d.to_string_lossy().ends_with("_pixel"))
                .expect("the pixel-level model");
            let pcfg = std::fs::read_to_string(pixel.join(pixeldit_triton::config::CONFIG_FILE)).unwrap();
            assert_eq!(pcfg.matches("dims: [ 3, -1, -1 ]").count(), 2, "{pcfg}");
        } else {
            assert_eq!(model_dirs.len(), 1, "{model_dirs:?}");
        }
        if platform == "tensorrt_plan" {
            // The engine build command spans the range: min 16x16 at batch 1, max 64x64 at the max batch.
            let text: String = std::fs::read_dir(&model_dir)
                .unwrap()
                .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                .collect();
            assert!(text.contains("--minShapes=x:1x3x16x16,"), "{text}");
            assert!(
                text.contains("--optShapes=x:") && text.contains("x3x32x32,"),
                "{text}"
            );
            assert!(text.contains("--maxShapes=x:16x3x64x64,"), "{text}");
        }
    }
}

#[test]
fn triton_serves_a_dynamic_model_at_two_sizes() {
    use crate::triton::{triton_env, Server};
    if triton_env("triton_serves_a_dynamic_model_at_two_sizes").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let o = run(std::process::Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
        .args(["--preset", "digits", "--dynamic-size", "-q", "--triton-repo"])
        .arg(&repo));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pcfg = std::fs::read_to_string(repo.join("pixeldit_digits_pipeline/config.pbtxt")).unwrap();
    assert!(
        pcfg.contains("name: \"height\"") && pcfg.contains("dims: [ 3, -1, -1 ]"),
        "{pcfg}"
    );
    let onnx = repo.join("pixeldit_digits/1/model.onnx");
    let server = Server::start(&repo, &dir.path().join("tritonserver.log"));
    // The pipeline model (one request per image, `height`/`width` inputs) and step-wise sampling through the
    // served denoiser, at two sizes: each equal to the local sample of the same model (ORT CPU on both sides).
    let mut locals = Vec::new();
    for (h, w) in [("48", "32"), ("32", "64")] {
        let mut raws = Vec::new();
        for mode in ["local", "pipeline", "step-wise"] {
            let raw = dir.path().join(format!("{h}x{w}_{mode}.npy"));
            let mut c = bin();
            match mode {
                "local" => c.arg(&onnx).args(["--backend", "ort"]),
                "pipeline" => c.args(["--triton", &server.url, "--model", "pixeldit_digits"]),
                _ => c.args([
                    "--triton",
                    &server.url,
                    "--model",
                    "pixeldit_digits",
                    "--triton-step-wise",
                ]),
            };
            let o = run(c
                .args([
                    "--classes",
                    "1,7",
                    "--steps",
                    "3",
                    "--height",
                    h,
                    "--width",
                    w,
                    "-o",
                ])
                .arg(dir.path().join("out.png"))
                .arg("--save-raw")
                .arg(&raw));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{mode}: {err}");
            if mode == "pipeline" {
                assert!(err.contains("using the Triton pipeline model"), "{err}");
            }
            raws.push(io::read_npy(&raw).unwrap());
        }
        assert_eq!(raws[0].shape(), &[2, 3, h.parse().unwrap(), w.parse().unwrap()]);
        for (mode, r) in ["pipeline", "step-wise"].iter().zip(&raws[1..]) {
            let err = rel_l2(r.as_slice().unwrap(), raws[0].as_slice().unwrap());
            eprintln!("{h}x{w} {mode}: remote vs local relative L2 {err:.2e}");
            assert!(
                err < 1e-5,
                "{h}x{w} {mode}: remote vs local relative L2 {err:.2e}"
            );
        }
        locals.push(raws.swap_remove(0));
    }
    // A size outside the range: refused by the pipeline with the range in the message.
    let o = run(bin()
        .args(["--triton", &server.url, "--model", "pixeldit_digits", "-q"])
        .args(["--class", "1", "--height", "80", "-o"])
        .arg(dir.path().join("bad.png")));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("16..=64"));
    // The pipeline model itself refuses it too (a client that does not check first).
    let p = pixeldit_triton::TritonModel::connect(
        &server.url,
        "pixeldit_digits_pipeline",
        &pixeldit_triton::ClientOptions::default(),
    )
    .unwrap();
    let req = pixeldit_triton::PipelineRequest {
        class: Some(1),
        height: Some(80),
        ..Default::default()
    };
    let e = p.generate(&req).unwrap_err().to_string();
    assert!(e.contains("80x32") && e.contains("16..=64"), "{e}");
    // Both sizes at once through the pipeline (the denoiser's dynamic batcher may only batch requests of equal
    // shapes): still the local samples.
    let children: Vec<_> = [("48", "32"), ("32", "64")]
        .iter()
        .map(|(h, w)| {
            let raw = dir.path().join(format!("concurrent_{h}x{w}.npy"));
            let child = bin()
                .args(["--triton", &server.url, "--model", "pixeldit_digits", "-q"])
                .args([
                    "--classes",
                    "1,7",
                    "--steps",
                    "3",
                    "--height",
                    h,
                    "--width",
                    w,
                    "-o",
                ])
                .arg(dir.path().join(format!("concurrent_{h}x{w}.png")))
                .arg("--save-raw")
                .arg(&raw)
                .spawn()
                .unwrap();
            (child, raw)
        })
        .collect();
    for ((mut child, raw), local) in children.into_iter().zip(&locals) {
        assert!(child.wait().unwrap().success());
        let got = io::read_npy(&raw).unwrap();
        let err = rel_l2(got.as_slice().unwrap(), local.as_slice().unwrap());
        assert!(err < 1e-5, "{raw:?}: relative L2 {err:.2e}");
    }
}

#[test]
fn quantized_dynamic_exports_meet_their_thresholds_at_non_square_sizes() {
    use pixeldit_spec::Precision;
    let dir = tempfile::tempdir().unwrap();
    for precision in [Precision::Int8, Precision::Fp8] {
        let report = dir.path().join(format!("{precision}.json"));
        let o = run(std::process::Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
            .args([
                "--preset",
                "digits",
                "--dynamic-size",
                "--precision",
                precision.as_str(),
                "-q",
            ])
            .args([
                "--eval-sizes",
                "32x64,64x32",
                "--eval-seeds",
                "100",
                "--accuracy-report",
            ])
            .arg(&report)
            .arg("-o")
            .arg(dir.path().join(format!("{precision}.onnx"))));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(r["sizes"], serde_json::json!([[32, 64], [64, 32]]));
        assert_eq!(
            r["sample_psnr_db"].as_array().unwrap().len(),
            8,
            "4 classes x 1 seed x 2 sizes"
        );
        // The golden threshold of the variant (tests/golden/digits/thresholds.json), here against the fp32 export
        // at the non-square sizes (calibrated at the default 32x32).
        let pooled = r["sample_psnr_pooled_db"].as_f64().unwrap();
        let min = crate::digits::variant(precision).min_psnr_db;
        eprintln!("{precision}: pooled PSNR {pooled:.1} dB at 32x64 and 64x32 (threshold {min})");
        assert!(pooled >= min, "{precision}: pooled PSNR {pooled:.1} dB < {min}");
    }
}

/// The non-square golden of the text-to-image default model: `tests/golden/digits-t2i/32x48/`, three held-out
/// prompts ("an image of the digit two / three / seven") sampled at height 32 x width 48 by the float64 Python
/// reference (`reference/gen_digits_t2i_golden.py --nonsquare`; thresholds in `thresholds.json`
/// `nonsquare_32x48`, measurements in that folder's README).
mod nonsquare {
    use crate::digits::{corrupted_checkpoint, decode_png, psnr_u8};
    use crate::digits_t2i::{checkpoint, export_with, golden_dir};
    use crate::util::*;
    use ndarray::Axis;
    use pixeldit_runtime::io;
    use pixeldit_spec::Precision;
    use std::path::{Path, PathBuf};

    /// The prompts' digits (rows of `text.npy`), in the order of the golden images.
    const DIGITS: [usize; 3] = [2, 3, 7];
    const SIZE: (usize, usize) = (32, 48);

    fn dir() -> PathBuf {
        golden_dir().join("32x48")
    }

    /// The smallest PSNR of `precision` at 32x48 (`thresholds.json`: `nonsquare_32x48.min_psnr_db`).
    fn min_psnr(precision: Precision) -> f64 {
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(golden_dir().join("thresholds.json")).unwrap())
                .unwrap();
        t["nonsquare_32x48"]["min_psnr_db"][precision.as_str()]
            .as_f64()
            .unwrap_or_else(|| panic!("thresholds.json: no nonsquare_32x48.min_psnr_db.{precision}"))
    }

    /// The golden raw sample `x` [3, 3, 32, 48] and the golden PNGs (RGB8, 32 rows x 48 columns each).
    fn golden() -> (Vec<f32>, Vec<Vec<u8>>) {
        let bytes = std::fs::read(dir().join("digits_t2i_32x48_golden.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let x = st.tensor("x").unwrap();
        assert_eq!(x.shape(), &[3, 3, SIZE.0, SIZE.1]);
        let images = DIGITS
            .iter()
            .map(|c| {
                let (img, w, h) = decode_png(&dir().join(format!("prompt_{c}.png")));
                assert_eq!((h, w), SIZE);
                img
            })
            .collect();
        (le_f32s(x.data()), images)
    }

    /// Rows 2, 3 and 7 of the committed `text.npy` (the golden prompts' embeddings), written to `dir`.
    fn text_rows(dir: &Path) -> PathBuf {
        let text = io::read_npy(&golden_dir().join("text.npy")).unwrap();
        let rows = text.select(Axis(0), &DIGITS);
        let path = dir.join("text_32x48.npy");
        std::fs::write(&path, io::npy_bytes(rows.shape(), rows.iter().copied())).unwrap();
        path
    }

    /// Samples the golden prompts with `pixeldit-run MODEL --height 32 --width 48` on `backend` (the golden noise,
    /// the model's sampler defaults); `Err` names the variant, the backend and the PSNR (or raw relative L2) when
    /// below `min_psnr_db` (above `max_rel`). Returns (PSNR, raw relative L2).
    pub fn check(
        work: &Path,
        model: &Path,
        variant: &str,
        backend: &str,
        min_psnr_db: f64,
        max_rel: Option<f64>,
    ) -> Result<(f64, f64), String> {
        let fail = |what: String| format!("digits-t2i 32x48 {variant} on {backend}: {what}");
        let raw = work.join(format!("raw_{variant}_{backend}.npy"));
        let o = run(bin()
            .arg(model)
            .args(["--backend", backend, "--device", "cpu", "--text-embeddings"])
            .arg(text_rows(work))
            .arg("--negative-embeddings")
            .arg(golden_dir().join("negative.npy"))
            .arg("--noise")
            .arg(dir().join("noise.npy"))
            .args(["--height", "32", "--width", "48", "-q", "--grid", "-o"])
            .arg(work.join(format!("{variant}_{backend}.png")))
            .arg("--save-raw")
            .arg(&raw));
        if !o.status.success() {
            return Err(fail(format!("pixeldit-run failed: {}", stderr(&o))));
        }
        let x = io::read_npy(&raw).map_err(|e| fail(e.to_string()))?;
        assert_eq!(x.shape(), &[3, 3, SIZE.0, SIZE.1]);
        let (gx, gimages) = golden();
        let images: Vec<Vec<u8>> = x
            .axis_iter(Axis(0))
            .map(|i| io::image_rgb8(i.into_dimensionality().unwrap()))
            .collect();
        let psnr = psnr_u8(&images.concat(), &gimages.concat());
        let rel = rel_l2(&x.iter().copied().collect::<Vec<_>>(), &gx);
        eprintln!("digits-t2i 32x48 {variant} on {backend}: PSNR {psnr:.2} dB, raw rel L2 {rel:.2e}");
        if psnr.is_nan() || psnr < min_psnr_db {
            return Err(fail(format!(
                "PSNR {psnr:.2} dB against the 32x48 golden images is below the {min_psnr_db} dB threshold"
            )));
        }
        if let Some(max) = max_rel.filter(|&m| rel.is_nan() || rel >= m) {
            return Err(fail(format!(
                "PSNR {psnr:.2} dB, raw relative L2 {rel:.2e} >= {max:.0e}"
            )));
        }
        Ok((psnr, rel))
    }

    /// The backends `pixeldit-run` is asked for: tract, and ORT CPU when its library is available.
    fn backends(test: &str) -> Vec<&'static str> {
        let mut v = vec!["tract"];
        if need_ort(test).is_some() {
            v.push("ort");
        }
        v
    }

    /// Exports `precision` with `--dynamic-size` and checks it at 32x48 on every backend; panics with every failure.
    fn check_dynamic(precision: Precision, max_rel: Option<f64>) {
        let work = tempfile::tempdir().unwrap();
        let model = export_with(work.path(), precision, &checkpoint(), true);
        let variant = format!("{precision}-dynamic");
        let failures: Vec<String> = backends(&format!("non_square_t2i_golden_{precision}"))
            .into_iter()
            .filter_map(|b| check(work.path(), &model, &variant, b, min_psnr(precision), max_rel).err())
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// fp32: the thresholds of the square golden (60 dB, raw relative L2 < 1e-4); measured: identical uint8 images,
    /// raw relative L2 5.3e-7 (tract) and 3.7e-7 (ORT CPU).
    #[test]
    fn dynamic_t2i_export_meets_the_non_square_golden_fp32() {
        check_dynamic(Precision::Fp32, Some(1e-4));
    }

    /// int8, calibrated as the square golden test's int8 (at the default 32x32, on `calib.npy`; about three minutes
    /// of a debug build's calibration); measured 41.4 dB (tract) and 41.3 dB (ORT CPU), threshold 37.
    #[test]
    fn dynamic_t2i_export_meets_the_non_square_golden_int8() {
        check_dynamic(Precision::Int8, None);
    }

    /// One joint-attention projection scaled by 1.5 (as `corrupted_t2i_checkpoint_fails_its_golden_check`): the
    /// dynamic fp32 export must fail the 32x48 check on every backend, naming variant, backend and PSNR.
    #[test]
    fn corrupted_checkpoint_fails_the_non_square_t2i_golden() {
        let work = tempfile::tempdir().unwrap();
        let ckpt = corrupted_checkpoint(
            &checkpoint(),
            work.path(),
            "patch_blocks.1.attn.proj_x.weight",
            1.5,
        );
        let model = export_with(work.path(), Precision::Fp32, &ckpt, true);
        for backend in backends("corrupted_checkpoint_fails_the_non_square_t2i_golden") {
            let variant = "fp32-dynamic-corrupted";
            let err = check(
                work.path(),
                &model,
                variant,
                backend,
                min_psnr(Precision::Fp32),
                Some(1e-4),
            )
            .expect_err("must fail");
            eprintln!("expected failure: {err}");
            assert!(
                err.contains(variant) && err.contains(backend) && err.contains("PSNR"),
                "{err}"
            );
        }
    }
}

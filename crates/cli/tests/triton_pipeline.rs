//! The in-server pipeline (`NAME_pipeline`, issue 14) on a real Triton Inference Server (CPU, the pinned test venv):
//! `pixeldit-export --preset digits --triton-repo` writes the denoiser and its pipeline model; then
//!
//! * a plain `curl` JSON request (no binary extension) for class 3, seed 0 returns the image that a local
//!   `pixeldit-run --class 3 --seed 0` writes, pixel for pixel; with `patch_cache` 2 (issue 22: BLS to the
//!   pixel-level model) the image of a local `pixeldit-run --patch-cache 2`, and `pixeldit-run --triton
//!   --patch-cache-threshold 0.3` the local threshold run's image;
//! * `pixeldit-run --triton URL --model NAME` uses the pipeline (one request per image) and gives the local samples;
//!   `--triton-step-wise` drives the steps from the client and gives them too;
//! * 16 concurrent pipeline requests are all correct, and the denoiser's statistics show batching across them;
//! * bad requests get an error response naming the problem, and the server keeps serving.
//!
//! `triton_pipeline_throughput` (ignored; run by hand) measures time per image through the pipeline against the
//! client-driven loop, and images per second at 1, 4 and 16 concurrent clients (BENCHMARKS.md).

use crate::triton::{check_schema, local_backend, psnr_f32, read_png, requests, stat, triton_env, Server};
use crate::util::*;
use ndarray::Axis;
use pixeldit_runtime::{io, model};
use pixeldit_runtime::{Conditions, SamplerConfig};
use pixeldit_triton::{ClientOptions, PipelineRequest, TritonModel};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const MODEL: &str = "pixeldit_digits";
const PIPELINE: &str = "pixeldit_digits_pipeline";
const PIXEL: &str = "pixeldit_digits_pixel";

/// `pixeldit-export --preset digits --triton-repo REPO` (the committed digits weights, pipeline included).
fn export_repo(repo: &Path) -> PathBuf {
    let out = run(Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
        .args(["--preset", "digits", "--triton-repo"])
        .arg(repo)
        .args(["--max-queue-delay-us", "2000"]));
    assert!(out.status.success(), "export with --triton-repo failed");
    assert!(
        stdout(&out).contains(&format!(
            "wrote Triton pipeline model {}",
            repo.join(PIPELINE).display()
        )),
        "{}",
        stdout(&out)
    );
    repo.join(MODEL).join("1/model.onnx")
}

/// POSTs a plain JSON request (no binary extension) with `curl`; returns (HTTP status, body).
fn curl_json(url: &str, body: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-w",
            "\n%{http_code}",
        ])
        .arg(format!("{url}/v2/models/{PIPELINE}/infer"))
        .args(["-d", body])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (json, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

fn request_body(class: i64, seed: u64, extra: &str) -> String {
    format!(
        r#"{{"inputs":[{{"name":"class","datatype":"INT64","shape":[1],"data":[{class}]}},{{"name":"seed","datatype":"UINT64","shape":[1],"data":[{seed}]}}{extra}],"outputs":[{{"name":"image"}}]}}"#
    )
}

/// Local `pixeldit-run` of the exported file (ORT CPU when available).
fn local_run(onnx: &Path, args: &[&str]) -> std::process::Output {
    let mut c = bin();
    c.arg(onnx).args(args);
    match need_ort("triton_pipeline") {
        Some(lib) => c
            .args(["--backend", "ort", "--device", "cpu", "--ort-lib"])
            .arg(lib),
        None => c.args(["--backend", "tract"]),
    };
    run(&mut c)
}

#[test]
fn triton_pipeline_serves_one_image_per_request() {
    let Some(env) = triton_env("triton_pipeline_serves_one_image_per_request") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = d.join("repo");
    let onnx = export_repo(&repo);
    check_schema(&env, &repo);
    let server = Server::start(&repo, &d.join("tritonserver.log"));

    // 1. curl, plain JSON: class 3, seed 0 -> the local image, pixel for pixel.
    let (code, resp) = curl_json(&server.url, &request_body(3, 0, ""));
    assert_eq!(code, 200, "{resp}");
    let out = &resp["outputs"][0];
    assert_eq!(out["name"], "image");
    assert_eq!(out["datatype"], "UINT8");
    assert_eq!(out["shape"], serde_json::json!([3, 32, 32]));
    let served: Vec<u8> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let png = d.join("local3.png");
    assert!(local_run(
        &onnx,
        &["--class", "3", "--seed", "0", "-q", "-o", png.to_str().unwrap()]
    )
    .status
    .success());
    let local = read_png(&png); // RGB, row-major
    let plane = 32 * 32;
    let served_rgb: Vec<u8> = (0..plane)
        .flat_map(|i| (0..3).map(move |c| (c, i)))
        .map(|(c, i)| served[c * plane + i])
        .collect();
    let differing = served_rgb.iter().zip(&local).filter(|(a, b)| a != b).count();
    eprintln!(
        "curl JSON class 3 seed 0 vs local pixeldit-run: {differing} of {} bytes differ",
        local.len()
    );
    assert_eq!(differing, 0, "the served image differs from the local one");

    // 1b. Patch cache: `patch_cache` 2 (the denoiser on full forwards, the pixel-level model PIXEL in between) gives
    // the image of a local `pixeldit-run --patch-cache 2` of the same two graphs, pixel for pixel; and
    // `pixeldit-run --triton --patch-cache-threshold 0.3` the image of the local threshold run.
    let local_pair = d.join("local");
    std::fs::create_dir_all(&local_pair).unwrap();
    let local_onnx = local_pair.join("model.onnx");
    std::fs::copy(&onnx, &local_onnx).unwrap();
    std::fs::copy(
        repo.join(PIXEL).join("1/model.onnx"),
        local_pair.join("model.pixel.onnx"),
    )
    .unwrap();
    let pixel_model = TritonModel::connect(&server.url, PIXEL, &ClientOptions::default()).unwrap();
    let before = requests(&pixel_model.statistics().unwrap());
    let cache_2 = r#",{"name":"patch_cache","datatype":"INT32","shape":[1],"data":[2]}"#;
    let (code, resp) = curl_json(&server.url, &request_body(3, 0, cache_2));
    assert_eq!(code, 200, "{resp}");
    let pixel_requests = requests(&pixel_model.statistics().unwrap()) - before;
    let cached: Vec<u8> = resp["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    let cached_rgb: Vec<u8> = (0..plane)
        .flat_map(|i| (0..3).map(move |c| (c, i)))
        .map(|(c, i)| cached[c * plane + i])
        .collect();
    let local_cached = d.join("local3_cache2.png");
    let out = local_run(
        &local_onnx,
        &[
            "--class",
            "3",
            "--seed",
            "0",
            "--patch-cache",
            "2",
            "-o",
            local_cached.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    eprintln!("local --patch-cache 2: {}", stdout(&out).trim());
    let differing = cached_rgb
        .iter()
        .zip(&read_png(&local_cached))
        .filter(|(a, b)| a != b)
        .count();
    eprintln!(
        "patch_cache 2 through the pipeline: {pixel_requests} pixel-level requests; {differing} bytes differ from \
         the local run"
    );
    assert_eq!(
        differing, 0,
        "the cached served image differs from the local cached one"
    );
    assert!(
        stdout(&out).contains(&format!("{pixel_requests} pixel level only")) && pixel_requests > 0,
        "the pipeline made {pixel_requests} pixel-level requests; locally: {}",
        stdout(&out)
    );
    assert_ne!(cached_rgb, served_rgb, "the cached image equals the uncached one");
    let png = |name: &str| d.join(name).to_str().unwrap().to_string();
    // `pixeldit-run --triton ARGS` (the flags sent to the pipeline) writes the image of the local `pixeldit-run
    // ARGS` on the same graphs; returns that image.
    let served_as_local = |args: &[&str], tag: &str| -> Vec<u8> {
        let (served, local) = (
            png(&format!("{tag}_served.png")),
            png(&format!("{tag}_local.png")),
        );
        let out = run(bin()
            .args(["--triton", &server.url, "--model", MODEL])
            .args(args)
            .args(["-o", &served]));
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains("in the server"), "{}", stdout(&out));
        assert!(local_run(&local_onnx, &[args, &["-q", "-o", &local]].concat())
            .status
            .success());
        let image = read_png(Path::new(&served));
        assert_eq!(
            image,
            read_png(Path::new(&local)),
            "pixeldit-run --triton {} differs from the local run",
            args.join(" ")
        );
        image
    };
    served_as_local(
        &["--class", "3", "--seed", "0", "--patch-cache-threshold", "0.3"],
        "t",
    );
    // The uniform schedule is sent as `patch_cache_schedule` (and differs from the default front-loaded one).
    let served_uniform = served_as_local(
        &[
            "--class",
            "3",
            "--seed",
            "0",
            "--patch-cache",
            "2",
            "--patch-cache-schedule",
            "uniform",
        ],
        "u",
    );
    assert_ne!(
        served_uniform, cached_rgb,
        "the uniform schedule served the front-loaded image"
    );
    // The client-driven loop runs whole forwards: a cache flag there is refused, saying why.
    let out = run(bin()
        .args(["--triton", &server.url, "--model", MODEL, "--triton-step-wise"])
        .args(["--class", "3", "--patch-cache", "2", "-o", &png("w.png")]));
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("--patch-cache with --triton runs in the server's pipeline model")
            && e.contains("--triton-step-wise drives whole forwards"),
        "{e}"
    );

    // 2. pixeldit-run --triton uses the pipeline (one request per image); --triton-step-wise drives the steps.
    let common = ["--classes", "1,4,9", "--seed", "5", "--interval", "0.1,0.9"];
    let raw = |name: &str| d.join(name).to_str().unwrap().to_string();
    let out = run(bin()
        .args(["--triton", &server.url, "--model", MODEL])
        .args(common)
        .args(["-o", &raw("p.png"), "--save-raw", &raw("p.npy")]));
    assert!(out.status.success());
    assert!(
        stdout(&out).contains(&format!("in the server ({PIPELINE})")),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("3 pipeline request(s)"), "{}", stdout(&out));
    let out = run(bin()
        .args(["--triton", &server.url, "--model", MODEL, "--triton-step-wise"])
        .args(common)
        .args(["-o", &raw("s.png"), "--save-raw", &raw("s.npy")]));
    assert!(out.status.success());
    assert!(stdout(&out).contains("25 forwards, "), "{}", stdout(&out));
    assert!(local_run(
        &onnx,
        &[&common[..], &["-o", &raw("l.png"), "--save-raw", &raw("l.npy")]].concat()
    )
    .status
    .success());
    let l = io::read_npy(&d.join("l.npy")).unwrap();
    for name in ["p.npy", "s.npy"] {
        let r = io::read_npy(&d.join(name)).unwrap();
        let db = psnr_f32(r.as_slice().unwrap(), l.as_slice().unwrap());
        eprintln!(
            "{name} vs local: PSNR {db:.1} dB, max |diff| {:.2e}",
            max_abs_diff(r.as_slice().unwrap(), l.as_slice().unwrap())
        );
        assert!(db > 60.0, "{name}: PSNR {db}");
    }

    // 3. 16 concurrent requests, each its own connection: all correct, batched at the denoiser.
    let meta = model::read_metadata(&onnx).unwrap();
    let (mut reference, ref_name) = local_backend(&onnx);
    let scfg = SamplerConfig::from_metadata(&meta.sampler).unwrap();
    let cases: Vec<(i64, u64)> = (0..16).map(|i| ((i * 3 % 10) as i64, 100 + i as u64)).collect();
    let expected: Vec<Vec<f32>> = cases
        .iter()
        .map(|&(c, seed)| {
            let noise = io::seeded_noise(seed, [1, 3, 32, 32]);
            let x = sample(
                &mut reference,
                Conditions::classes(vec![c], meta.config.null_class()),
                scfg.clone(),
                noise,
            )
            .unwrap();
            x.index_axis(Axis(0), 0).iter().copied().collect()
        })
        .collect();
    let denoiser = TritonModel::connect(&server.url, MODEL, &ClientOptions::default()).unwrap();
    let before = denoiser.statistics().unwrap();
    let t0 = Instant::now();
    let results: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|&(class, seed)| {
                let url = server.url.clone();
                s.spawn(move || {
                    let p = TritonModel::connect(&url, PIPELINE, &ClientOptions::default()).unwrap();
                    let req = PipelineRequest {
                        class: Some(class),
                        seed,
                        ..Default::default()
                    };
                    p.generate(&req).unwrap().1.iter().copied().collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let after = denoiser.statistics().unwrap();
    let worst = results
        .iter()
        .zip(&expected)
        .map(|(a, b)| psnr_f32(a, b))
        .fold(f64::INFINITY, f64::min);
    let d_req = requests(&after) - requests(&before);
    let d_exec = stat(&after, "execution_count") - stat(&before, "execution_count");
    eprintln!(
        "16 concurrent pipeline requests in {secs:.2} s: worst PSNR vs {ref_name} {worst:.1} dB; the denoiser got \
         {d_req} requests in {d_exec} executions"
    );
    assert!(worst > 60.0, "worst PSNR {worst}");
    // 25 steps per image, each one request of batch 2 (CFG) to the denoiser.
    assert_eq!(d_req, 16 * 25);
    assert!(
        d_exec < d_req,
        "no batching across requests: {d_exec} executions for {d_req} requests"
    );

    // 4. Bad requests: an error naming the problem, and the server keeps serving.
    for (extra, class, want) in [
        ("", 10, "class 10 is out of range"),
        (
            r#",{"name":"steps","datatype":"INT32","shape":[1],"data":[0]}"#,
            1,
            "steps 0: expected 1..=1000",
        ),
        (
            r#",{"name":"steps","datatype":"INT32","shape":[1],"data":[100000]}"#,
            1,
            "steps 100000",
        ),
        (
            r#",{"name":"sampler","datatype":"BYTES","shape":[1],"data":["ddim"]}"#,
            1,
            "sampler 'ddim'",
        ),
        (
            r#",{"name":"cfg","datatype":"INT64","shape":[1],"data":[3]}"#,
            1,
            "expects 'FP32'",
        ),
        (
            r#",{"name":"interval","datatype":"FP32","shape":[1],"data":[0.5]}"#,
            1,
            "Expected [2]",
        ),
        (
            r#",{"name":"patch_cache","datatype":"INT32","shape":[1],"data":[0]}"#,
            1,
            "patch_cache 0: expected N >= 1",
        ),
    ] {
        let (code, resp) = curl_json(&server.url, &request_body(class, 0, extra));
        let msg = resp["error"].as_str().unwrap_or_default().to_string();
        eprintln!("bad request -> HTTP {code}: {msg}");
        assert_eq!(code, 400, "{extra}: {resp}");
        assert!(msg.contains(want), "'{msg}' lacks '{want}'");
    }
    // Non-finite numbers, sent as binary FP32 tensors (JSON has none): the range check names them, no parser detail.
    let pipeline = TritonModel::connect(&server.url, PIPELINE, &ClientOptions::default()).unwrap();
    for (req, want) in [
        (
            PipelineRequest {
                cfg: Some(f32::NAN),
                ..Default::default()
            },
            "cfg scale NaN is not finite",
        ),
        (
            PipelineRequest {
                cfg: Some(f32::INFINITY),
                ..Default::default()
            },
            "cfg scale inf is not finite",
        ),
        (
            PipelineRequest {
                shift: Some(f64::NAN),
                ..Default::default()
            },
            "time shift NaN",
        ),
        (
            PipelineRequest {
                patch_cache_threshold: Some(f64::NAN),
                ..Default::default()
            },
            "patch_cache_threshold NaN: expected a finite number > 0",
        ),
    ] {
        let req = PipelineRequest {
            class: Some(1),
            ..req
        };
        let msg = pipeline.generate(&req).unwrap_err().to_string();
        eprintln!("non-finite request -> {msg}");
        assert!(
            msg.contains("HTTP 400") && msg.contains(want),
            "'{msg}' lacks '{want}'"
        );
        assert!(!msg.contains("column"), "{msg}");
    }
    let (code, _) = curl_json(&server.url, &request_body(7, 1, ""));
    assert_eq!(code, 200, "the server stopped serving after bad requests");
}

/// Time per image through the pipeline against the client-driven loop on the same server and model, and images
/// per second at 1, 4 and 16 concurrent clients. Prints a Markdown table for BENCHMARKS.md.
/// `cargo test --release -p pixeldit-cli --test e2e triton_pipeline_throughput -- --ignored --nocapture`
#[test]
#[ignore]
fn triton_pipeline_throughput() {
    let Some(_env) = triton_env("triton_pipeline_throughput") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    export_repo(&repo);
    let server = Server::start(&repo, &dir.path().join("tritonserver.log"));
    let url = server.url.clone();
    let images = 32usize;
    // Client-driven: pixeldit's step-wise remote loop, one image at a time (25 CFG requests of batch 2 each).
    let denoiser = TritonModel::connect(&url, MODEL, &ClientOptions::default()).unwrap();
    let meta = denoiser.metadata().unwrap().clone();
    let scfg = SamplerConfig::from_metadata(&meta.sampler).unwrap();
    let mut d = pixeldit_runtime::Denoiser::new(Box::new(denoiser), &meta);
    let step_wise = |n: usize, d: &mut pixeldit_runtime::Denoiser| {
        let t0 = Instant::now();
        for i in 0..n {
            let noise = io::seeded_noise(i as u64, [1, 3, 32, 32]);
            sample(
                d,
                Conditions::classes(vec![(i % 10) as i64], meta.config.null_class()),
                scfg.clone(),
                noise,
            )
            .unwrap();
        }
        t0.elapsed().as_secs_f64() / n as f64
    };
    step_wise(2, &mut d); // warm-up
    let step_ms = step_wise(images, &mut d) * 1e3;
    let pipeline = |clients: usize| {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for c in 0..clients {
                let url = url.clone();
                s.spawn(move || {
                    let p = TritonModel::connect(&url, PIPELINE, &ClientOptions::default()).unwrap();
                    for i in (c..images).step_by(clients) {
                        let req = PipelineRequest {
                            class: Some((i % 10) as i64),
                            seed: i as u64,
                            ..Default::default()
                        };
                        p.generate(&req).unwrap();
                    }
                });
            }
        });
        t0.elapsed().as_secs_f64()
    };
    pipeline(4); // warm-up of every instance
    let one = pipeline(1);
    let four = pipeline(4);
    let sixteen = pipeline(16);
    println!("| path | clients | images | ms per image (latency) | images/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| client-driven loop (`--triton-step-wise`) | 1 | {images} | {step_ms:.1} | {:.1} |",
        1e3 / step_ms
    );
    for (clients, secs) in [(1, one), (4, four), (16, sixteen)] {
        println!(
            "| pipeline (`{PIPELINE}`) | {clients} | {images} | {:.1} | {:.1} |",
            secs * 1e3 / images as f64 * clients as f64,
            images as f64 / secs
        );
    }
}

/// A text-to-image pipeline: prompts in, tokenized and encoded in the server (the tiny Gemma-2 of
/// `tests/golden/gemma/` served as `NAME_text_encoder`), the image a local `pixeldit-run --prompt` makes.
#[test]
fn triton_pipeline_serves_text_to_image_by_prompt() {
    let Some(env) = triton_env("triton_pipeline_serves_text_to_image_by_prompt") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let export = || Command::new(env!("CARGO_BIN_EXE_pixeldit-export"));
    let gemma = workspace().join("tests/golden/gemma/model");
    let out = run(export()
        .arg("--text-encoder")
        .arg(&gemma)
        .arg("-o")
        .arg(d.join("gemma.onnx")));
    assert!(out.status.success());
    std::fs::copy(gemma.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    // t2i-tiny with the tiny encoder's [300, 64] text input.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workspace().join("graphs/t2i-tiny.json")).unwrap())
            .unwrap();
    cfg["name"] = "t2i-gemma".into();
    cfg["text"]["embed_dim"] = 64.into();
    cfg["text"]["max_length"] = 300.into();
    std::fs::write(d.join("t2i.json"), cfg.to_string()).unwrap();
    let repo = d.join("repo");
    let out = run(export()
        .arg("--config")
        .arg(d.join("t2i.json"))
        .args(["--random-init", "--triton-repo"])
        .arg(&repo)
        .arg("--pipeline-text-encoder")
        .arg(d.join("gemma.onnx"))
        .arg("-q"));
    assert!(out.status.success());
    for m in [
        "pixeldit_t2i_gemma",
        "pixeldit_t2i_gemma_pipeline",
        "pixeldit_t2i_gemma_text_encoder",
        "pixeldit_t2i_gemma_pixel",
    ] {
        assert!(repo.join(m).join("config.pbtxt").is_file(), "{m}");
    }
    check_schema(&env, &repo);
    let server = Server::start(&repo, &d.join("tritonserver.log"));
    let onnx = repo.join("pixeldit_t2i_gemma/1/model.onnx");

    // curl, plain JSON, by prompt -> the local x.
    let body = r#"{"inputs":[{"name":"prompt","datatype":"BYTES","shape":[1],"data":["the digit seven"]},{"name":"seed","datatype":"UINT64","shape":[1],"data":[0]}],"outputs":[{"name":"x"}]}"#;
    let infer = |body: &str| {
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", "-w", "\n%{http_code}"])
            .arg(format!(
                "{}/v2/models/pixeldit_t2i_gemma_pipeline/infer",
                server.url
            ))
            .args(["-d", body])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (json, code) = text.rsplit_once('\n').unwrap();
        (
            code.trim().parse::<u16>().unwrap(),
            serde_json::from_str::<serde_json::Value>(json).unwrap_or_default(),
        )
    };
    let (code, resp) = infer(body);
    assert_eq!(code, 200, "{resp}");
    let served: Vec<f32> = resp["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let local = |args: &[&str], raw: &str| {
        let out = local_run(
            &onnx,
            &[
                args,
                &[
                    "--text-encoder",
                    d.join("gemma.onnx").to_str().unwrap(),
                    "-q",
                    "-o",
                ],
                &[d.join("l.png").to_str().unwrap(), "--save-raw", raw],
            ]
            .concat(),
        );
        assert!(out.status.success());
        io::read_npy(Path::new(raw)).unwrap()
    };
    let raw = d.join("l.npy");
    let l = local(
        &["--prompt", "the digit seven", "--seed", "0"],
        raw.to_str().unwrap(),
    );
    let db = psnr_f32(&served, l.as_slice().unwrap());
    eprintln!("curl prompt vs local pixeldit-run --prompt: PSNR {db:.1} dB");
    assert!(db > 60.0, "PSNR {db}");

    // pixeldit-run --triton --prompts-file: one request per prompt, the local samples.
    std::fs::write(d.join("prompts.txt"), "the digit seven\na 3\n").unwrap();
    let rraw = d.join("r.npy");
    let out = run(bin()
        .args([
            "--triton",
            &server.url,
            "--model",
            "pixeldit_t2i_gemma",
            "--prompts-file",
        ])
        .arg(d.join("prompts.txt"))
        .args(["--negative-prompt", "blurry", "--seed", "2", "-o"])
        .arg(d.join("r.png"))
        .arg("--save-raw")
        .arg(&rraw));
    assert!(out.status.success());
    assert!(stdout(&out).contains("2 pipeline request(s)"), "{}", stdout(&out));
    let lraw = d.join("l2.npy");
    let l2 = local(
        &[
            "--prompts-file",
            d.join("prompts.txt").to_str().unwrap(),
            "--negative-prompt",
            "blurry",
            "--seed",
            "2",
        ],
        lraw.to_str().unwrap(),
    );
    let r = io::read_npy(&rraw).unwrap();
    let db = psnr_f32(r.as_slice().unwrap(), l2.as_slice().unwrap());
    eprintln!("--prompts-file through the pipeline vs local: PSNR {db:.1} dB");
    assert!(db > 60.0, "PSNR {db}");

    // Patch cache 2 by prompt: pixeldit-run --triton sends it to the pipeline (BLS to the pixel-level model), the
    // sample of a local --patch-cache 2 run of the same two graphs.
    let pair = d.join("local");
    std::fs::create_dir_all(&pair).unwrap();
    std::fs::copy(&onnx, pair.join("model.onnx")).unwrap();
    std::fs::copy(
        repo.join("pixeldit_t2i_gemma_pixel/1/model.onnx"),
        pair.join("model.pixel.onnx"),
    )
    .unwrap();
    let craw = d.join("c.npy");
    let cached = ["--prompt", "the digit seven", "--seed", "0", "--patch-cache", "2"];
    let out = run(bin()
        .args(["--triton", &server.url, "--model", "pixeldit_t2i_gemma"])
        .args(cached)
        .arg("-o")
        .arg(d.join("c.png"))
        .arg("--save-raw")
        .arg(&craw));
    assert!(out.status.success());
    assert!(stdout(&out).contains("1 pipeline request(s)"), "{}", stdout(&out));
    let lc = d.join("lc.npy");
    let out = local_run(
        &pair.join("model.onnx"),
        &[
            &cached[..],
            &["--text-encoder", d.join("gemma.onnx").to_str().unwrap()],
            &[
                "-o",
                d.join("lc.png").to_str().unwrap(),
                "--save-raw",
                lc.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    assert!(out.status.success());
    assert!(stdout(&out).contains("pixel level only"), "{}", stdout(&out));
    let c = io::read_npy(&craw).unwrap();
    let lc = io::read_npy(&lc).unwrap();
    let db = psnr_f32(c.as_slice().unwrap(), lc.as_slice().unwrap());
    eprintln!(
        "--patch-cache 2 by prompt through the pipeline vs local: PSNR {db:.1} dB, max |diff| {:.2e}",
        max_abs_diff(c.as_slice().unwrap(), lc.as_slice().unwrap())
    );
    assert!(db > 60.0, "PSNR {db}");
    assert!(
        psnr_f32(c.as_slice().unwrap(), l.as_slice().unwrap()) < db,
        "the cached sample is no closer to the local cached one than to the uncached one"
    );

    // Bad requests: no prompt, a class, an absurdly long prompt.
    let long = "seven ".repeat(4000);
    for (body, want) in [
        (r#"{"inputs":[{"name":"seed","datatype":"UINT64","shape":[1],"data":[0]}]}"#.to_string(), "prompt"),
        (
            format!(r#"{{"inputs":[{{"name":"prompt","datatype":"BYTES","shape":[1],"data":["{long}"]}},{{"name":"seed","datatype":"UINT64","shape":[1],"data":[0]}}]}}"#),
            "prompt is 24000 bytes long; at most 16384",
        ),
        (
            r#"{"inputs":[{"name":"prompt","datatype":"BYTES","shape":[1],"data":["a 7"]},{"name":"seed","datatype":"UINT64","shape":[1],"data":[0]},{"name":"steps","datatype":"INT32","shape":[1],"data":[1]}]}"#.to_string(),
            "steps 1: expected 2..=1000",
        ),
    ] {
        let (code, resp) = infer(&body);
        let msg = resp["error"].as_str().unwrap_or_default().to_string();
        eprintln!("bad request -> HTTP {code}: {msg}");
        assert_eq!(code, 400, "{resp}");
        assert!(msg.contains(want), "'{msg}' lacks '{want}'");
    }
    assert_eq!(infer(body).0, 200, "the server stopped serving");
}

//! A real Triton Inference Server (CPU, from the pinned test venv `.cache/triton-venv`, made by
//! `tools/triton/setup.sh`) serving a repository written by the exporter's Triton writer:
//!
//! * `pixeldit-run --triton` samples the same image as local ONNX Runtime CPU (PSNR > 60 dB);
//! * 16 concurrent clients are all answered correctly and the server's statistics show dynamic batching
//!   (fewer executions than requests);
//! * a text-to-image model (t2i-tiny) served beside it samples the same image remotely as locally;
//! * the generated config.pbtxt parses with Triton's ModelConfig schema (`tools/triton/check_config.py`).
//!
//! The server runs `tools/triton/serve.sh` (python backend + the onnxruntime stand-in, loopback, free ports,
//! bounded by `timeout`) in its own process group; it is stopped by PID (SIGTERM, then SIGKILL to the group) and its
//! log is printed when the test fails. Without the venv the test prints why and passes, unless
//! `PIXELDIT_REQUIRE_TRITON` is set (scripts/test.sh sets it).

use crate::util::*;
use ndarray::{Array1, Array4};
use pixeldit_cli::variant::export_to_file;
use pixeldit_exporter::{ExportOptions, WeightsSpec};
use pixeldit_runtime::backend::{self, Candidate, LoadOptions};
use pixeldit_runtime::io;
use pixeldit_runtime::Denoiser;
use pixeldit_spec::{AttentionMode, ModelConfig};
use pixeldit_triton::repository::onnx_path;
use pixeldit_triton::{
    write_model_config, ClientOptions, InstanceKind, Platform, TritonModel, TritonOptions,
};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const MODEL: &str = "pixeldit_tiny";
/// The text-to-image model served beside it (t2i-tiny, random weights).
const T2I_MODEL: &str = "pixeldit_t2i_tiny";
/// Upper bound of the server's lifetime (serve.sh wraps it in `timeout`).
const SERVER_LIMIT_S: u64 = 900;
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// KEY=VALUE lines of `.cache/triton-venv/triton.env`, or `None` (with the reason printed) when the venv is absent
/// and not required.
pub(crate) fn triton_env(test: &str) -> Option<BTreeMap<String, String>> {
    let venv = std::env::var_os("PIXELDIT_TRITON_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache").join("triton-venv"));
    let file = venv.join("triton.env");
    match std::fs::read_to_string(&file) {
        Ok(text) => Some(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        Err(e) => {
            let required = std::env::var("PIXELDIT_REQUIRE_TRITON").is_ok_and(|v| !v.is_empty() && v != "0");
            assert!(
                !required,
                "{test}: PIXELDIT_REQUIRE_TRITON is set but {} is missing ({e}); run tools/triton/setup.sh",
                file.display()
            );
            eprintln!(
                "{test}: SKIPPED: no Triton test venv ({} missing; run tools/triton/setup.sh, or scripts/test.sh)",
                file.display()
            );
            None
        }
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tritonserver process (serve.sh, its own process group), stopped on drop.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) url: String,
    log: PathBuf,
    started_in: Duration,
}

impl Server {
    pub(crate) fn start(repo: &Path, log: &Path) -> Server {
        let mut last = String::new();
        for attempt in 0..3 {
            let (http, grpc, metrics) = (free_port(), free_port(), free_port());
            let logf = std::fs::File::create(log).unwrap();
            let t0 = Instant::now();
            let child = Command::new(workspace().join("tools/triton/serve.sh"))
                .arg(repo)
                .args([http, grpc, metrics].map(|p| p.to_string()))
                .arg(SERVER_LIMIT_S.to_string())
                .stdin(Stdio::null())
                .stdout(logf.try_clone().unwrap())
                .stderr(logf)
                .process_group(0)
                .spawn()
                .expect("spawn tools/triton/serve.sh");
            let mut s = Server {
                child: Some(child),
                url: format!("http://127.0.0.1:{http}"),
                log: log.to_path_buf(),
                started_in: Duration::ZERO,
            };
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(2)))
                .build()
                .into();
            while t0.elapsed() < READY_TIMEOUT {
                if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                    last = format!("tritonserver exited early ({st})");
                    break;
                }
                let ready = agent
                    .get(format!("{}/v2/health/ready", s.url))
                    .call()
                    .is_ok_and(|r| r.status().as_u16() == 200);
                if ready {
                    s.started_in = t0.elapsed();
                    return s;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if last.is_empty() {
                last = format!("not ready after {READY_TIMEOUT:?}");
            }
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            s.stop();
            eprintln!("tritonserver attempt {attempt}: {last}\n--- server log:\n{log_text}");
            if !log_text.contains("ddress already in use") {
                break;
            }
        }
        panic!("tritonserver did not start: {last} (log above)");
    }

    /// SIGTERM to the PID (serve.sh execs into `timeout`, which forwards it), then SIGKILL to the process group.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("tritonserver {pid} ignored SIGTERM for 30 s; killing its process group");
        let _ = Command::new("kill").args(["-KILL", &format!("-{pid}")]).status();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- tritonserver log ({}):\n{}",
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

fn tiny_export() -> ExportOptions {
    let mut o = ExportOptions::new(
        ModelConfig::preset("tiny").unwrap(),
        WeightsSpec::Checkpoint(workspace().join("tests/golden/forward/tiny.safetensors")),
    );
    o.attention = AttentionMode::Decomposed;
    o
}

/// Exports the tiny model into a repository with the exporter's Triton writer (what `--triton-repo` does).
fn write_repo(repo: &Path, topts: &TritonOptions) -> PathBuf {
    let opts = tiny_export();
    let onnx = onnx_path(repo, MODEL, topts.platform);
    std::fs::create_dir_all(onnx.parent().unwrap()).unwrap();
    let report = export_to_file(&opts, &onnx).expect("export tiny");
    write_model_config(repo, &report.metadata, topts).expect("write config.pbtxt");
    onnx
}

/// Adds the t2i-tiny model (random weights, seed 0) to `repo` as [`T2I_MODEL`].
fn write_t2i_model(repo: &Path, topts: &TritonOptions) -> PathBuf {
    let mut opts = ExportOptions::new(
        ModelConfig::preset("t2i-tiny").unwrap(),
        WeightsSpec::RandomInit { seed: 0 },
    );
    opts.attention = AttentionMode::Decomposed;
    let onnx = onnx_path(repo, T2I_MODEL, topts.platform);
    std::fs::create_dir_all(onnx.parent().unwrap()).unwrap();
    let report = export_to_file(&opts, &onnx).expect("export t2i-tiny");
    write_model_config(repo, &report.metadata, topts).expect("write config.pbtxt");
    onnx
}

pub(crate) fn check_schema(env: &BTreeMap<String, String>, repo: &Path) {
    let out = Command::new(&env["TRITON_PYTHON"])
        .arg(workspace().join("tools/triton/check_config.py"))
        .arg(repo)
        .output()
        .expect("run check_config.py");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "Triton ModelConfig schema rejects the config:\n{text}"
    );
}

/// PSNR in dB of two 8-bit RGB images (infinite when equal).
pub(crate) fn psnr_u8(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

/// PSNR in dB of two float images in [-1, 1] (peak-to-peak 2).
pub(crate) fn psnr_f32(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (4.0 / mse).log10()
}

pub(crate) fn read_png(path: &Path) -> Vec<u8> {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    buf
}

pub(crate) fn stat(v: &serde_json::Value, key: &str) -> u64 {
    v["model_stats"][0][key].as_u64().unwrap_or(0)
}

pub(crate) fn requests(v: &serde_json::Value) -> u64 {
    v["model_stats"][0]["inference_stats"]["success"]["count"]
        .as_u64()
        .unwrap_or(0)
}

/// The local reference backend: ORT CPU when a library is available, else tract.
pub(crate) fn local_backend(model: &Path) -> (Denoiser, &'static str) {
    match need_ort("triton") {
        Some(lib) => (
            load_denoiser(
                model,
                Candidate::Ort(backend::ort::OrtProvider::Cpu),
                &LoadOptions::default().with_ort_lib(Some(lib)),
            )
            .expect("ORT CPU"),
            "ort",
        ),
        None => (
            load_denoiser(model, Candidate::Tract, &LoadOptions::default()).expect("tract"),
            "tract",
        ),
    }
}

#[test]
fn triton_server_sampling_batching_and_schema() {
    let Some(env) = triton_env("triton_server_sampling_batching_and_schema") else {
        return;
    };
    let t_test = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    // The served repository: onnxruntime_onnx with the TensorRT accelerator block (ignored on CPU instances),
    // KIND_AUTO instances (CPU here), max_batch_size 16, preferred sizes [8, 16], 2 ms queue delay.
    let topts = TritonOptions {
        max_queue_delay_us: 2000,
        ..Default::default()
    };
    let onnx = write_repo(&repo, &topts);
    let t2i_onnx = write_t2i_model(&repo, &topts);
    // Schema check of both platforms (the TensorRT plan repository is not served: no GPU, no TensorRT backend).
    let plan_repo = dir.path().join("plan_repo");
    write_repo(
        &plan_repo,
        &TritonOptions {
            platform: Platform::TensorRtPlan,
            instance_kind: Some(InstanceKind::Gpu),
            ..Default::default()
        },
    );
    check_schema(&env, &repo);
    check_schema(&env, &plan_repo);

    let server = Server::start(&repo, &dir.path().join("tritonserver.log"));
    eprintln!(
        "tritonserver ready in {:.2} s at {}",
        server.started_in.as_secs_f64(),
        server.url
    );

    // 1. pixeldit-run --triton vs local ORT CPU: same sampler, same noise, same image.
    let (remote_png, remote_raw) = (dir.path().join("remote.png"), dir.path().join("remote.npy"));
    let (local_png, local_raw) = (dir.path().join("local.png"), dir.path().join("local.npy"));
    let common = ["--classes", "1,7", "--seed", "0", "--grid"];
    let t0 = Instant::now();
    let out = run(bin()
        .args(["--triton", &server.url, "--model", MODEL])
        .args(common)
        .arg("-o")
        .arg(&remote_png)
        .arg("--save-raw")
        .arg(&remote_raw));
    let remote_s = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "pixeldit-run --triton failed");
    assert!(stdout(&out).contains("backend triton"), "{}", stdout(&out));
    let mut local = bin();
    local
        .arg(&onnx)
        .args(common)
        .arg("-o")
        .arg(&local_png)
        .arg("--save-raw")
        .arg(&local_raw);
    match need_ort("triton") {
        Some(lib) => local
            .args(["--backend", "ort", "--device", "cpu", "--ort-lib"])
            .arg(lib),
        None => local.args(["--backend", "tract"]),
    };
    let out = run(&mut local);
    assert!(out.status.success(), "local pixeldit-run failed");
    let (a, b) = (
        io::read_npy(&remote_raw).unwrap(),
        io::read_npy(&local_raw).unwrap(),
    );
    assert_eq!(a.shape(), b.shape());
    let raw_db = psnr_f32(a.as_slice().unwrap(), b.as_slice().unwrap());
    let img_db = psnr_u8(&read_png(&remote_png), &read_png(&local_png));
    eprintln!(
        "triton vs local: PSNR {raw_db:.1} dB (float), {img_db:.1} dB (8-bit image); max |diff| {:.2e}; \
         remote sampling {remote_s:.2} s",
        max_abs_diff(a.as_slice().unwrap(), b.as_slice().unwrap())
    );
    assert!(
        raw_db > 60.0 && img_db > 60.0,
        "PSNR {raw_db} / {img_db} dB <= 60"
    );

    // 2. 16 concurrent clients, each its own connection, 3 requests of batch 1, checked against local forwards.
    let (mut reference, ref_name) = local_backend(&onnx);
    let (clients, rounds) = (16usize, 3usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let cases: Vec<(Array4<f32>, Array1<f32>, Array1<i64>)> = (0..clients * rounds)
        .map(|i| {
            let x = Array4::from_shape_fn((1, 3, 32, 32), |_| rng.random_range(-1.0f32..1.0));
            (
                x,
                Array1::from(vec![rng.random::<f32>()]),
                Array1::from(vec![(i % 11) as i64]),
            )
        })
        .collect();
    let expected: Vec<Array4<f32>> = cases
        .iter()
        .map(|(x, t, y)| reference.forward(x.view(), t.view(), y.view().into()).unwrap())
        .collect();
    let probe = TritonModel::connect(&server.url, MODEL, &ClientOptions::default()).unwrap();
    let before = probe.statistics().unwrap();
    let cases = Arc::new(cases);
    let barrier = Arc::new(Barrier::new(clients));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let (cases, barrier, url) = (cases.clone(), barrier.clone(), server.url.clone());
            std::thread::spawn(move || {
                let remote = TritonModel::connect(&url, MODEL, &ClientOptions::default()).unwrap();
                let meta = remote.metadata().unwrap().clone();
                let mut b = Denoiser::new(Box::new(remote), &meta);
                (0..rounds)
                    .map(|r| {
                        barrier.wait();
                        let (x, t, y) = &cases[c * rounds + r];
                        (
                            c * rounds + r,
                            b.forward(x.view(), t.view(), y.view().into()).unwrap(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut worst = 0.0f32;
    let mut answered = 0;
    for h in handles {
        for (i, v) in h.join().expect("client thread") {
            let d = max_abs_diff(v.as_slice().unwrap(), expected[i].as_slice().unwrap());
            worst = worst.max(d);
            answered += 1;
        }
    }
    let conc_s = t0.elapsed().as_secs_f64();
    let after = probe.statistics().unwrap();
    let d_inf = stat(&after, "inference_count") - stat(&before, "inference_count");
    let d_exec = stat(&after, "execution_count") - stat(&before, "execution_count");
    let d_req = requests(&after) - requests(&before);
    let batches: Vec<String> = after["model_stats"][0]["batch_stats"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| format!("{}x{}", b["batch_size"], b["compute_infer"]["count"]))
        .collect();
    eprintln!(
        "concurrency: {answered} answers from {clients} clients in {conc_s:.2} s, max |diff| vs {ref_name} {worst:.2e}; \
         requests {d_req}, inference_count {d_inf}, execution_count {d_exec}; batch sizes (size x executions, all \
         time): {}",
        batches.join(" ")
    );
    assert_eq!(answered, clients * rounds);
    assert!(worst < 1e-4, "max |diff| {worst}");
    assert_eq!(d_req as usize, clients * rounds);
    assert_eq!(d_inf as usize, clients * rounds, "inference_count counts images");
    assert!(
        d_exec < d_inf,
        "no dynamic batching: {d_exec} executions for {d_inf} inferences"
    );

    // 3. A model the server does not have: a clear error naming it.
    let out = run(bin().args(["--triton", &server.url, "--model", "nope", "-q"]));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("model 'nope' is not ready"),
        "{}",
        stderr(&out)
    );

    // 4. A text-to-image model through the same server: same embeddings and noise, same image as locally.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let text: Vec<f32> = (0..2 * 8 * 48).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let text_path = dir.path().join("text.npy");
    io::write_atomic(&text_path, &io::npy_bytes(&[2, 8, 48], text)).unwrap();
    let t2i_args = |out: &str| -> Vec<String> {
        [
            "--text-embeddings",
            text_path.to_str().unwrap(),
            "--steps",
            "4",
            "--cfg",
            "1",
            "--seed",
            "0",
            "--save-raw",
            out,
            "-o",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([dir.path().join(format!("{out}.png")).display().to_string()])
        .collect()
    };
    let remote_t2i = dir.path().join("t2i_remote.npy");
    let out = run(bin()
        .args(["--triton", &server.url, "--model", T2I_MODEL])
        .args(t2i_args(remote_t2i.to_str().unwrap())));
    assert!(out.status.success(), "pixeldit-run --triton (t2i) failed");
    assert!(stdout(&out).contains("backend triton"), "{}", stdout(&out));
    let local_t2i = dir.path().join("t2i_local.npy");
    let mut local = bin();
    local.arg(&t2i_onnx).args(t2i_args(local_t2i.to_str().unwrap()));
    match need_ort("triton") {
        Some(lib) => local
            .args(["--backend", "ort", "--device", "cpu", "--ort-lib"])
            .arg(lib),
        None => local.args(["--backend", "tract"]),
    };
    assert!(run(&mut local).status.success(), "local t2i pixeldit-run failed");
    let (a, b) = (
        io::read_npy(&remote_t2i).unwrap(),
        io::read_npy(&local_t2i).unwrap(),
    );
    assert_eq!(a.shape(), &[2, 3, 32, 32]);
    let t2i_db = psnr_f32(a.as_slice().unwrap(), b.as_slice().unwrap());
    eprintln!("t2i triton vs local: PSNR {t2i_db:.1} dB (float)");
    assert!(t2i_db > 60.0, "t2i PSNR {t2i_db} dB <= 60");

    drop(server);
    eprintln!("triton test: {:.1} s in total", t_test.elapsed().as_secs_f64());
}

//! CLI behaviour: errors exit non-zero and leave no output; backend selection messages; outputs.

use crate::util::*;
use ndarray::Array4;
use pixeldit_runtime::io;
use pixeldit_runtime::{CondRows, Conditions, SamplerConfig, SamplerKind, Time};

#[test]
fn missing_model_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin()
        .current_dir(dir.path())
        .args(["missing.onnx", "-o", "x.png"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("missing.onnx does not exist"));
    assert!(files(dir.path()).is_empty());
}

#[test]
fn model_without_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin()
        .current_dir(dir.path())
        .arg(fixture("dummy_nometa.onnx"))
        .args(["-o", "x.png"]));
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("dummy_nometa.onnx") && e.contains("'pixeldit.metadata'"),
        "{e}"
    );
    assert!(files(dir.path()).is_empty());
}

#[test]
fn class_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [["--class", "10"], ["--classes", "1,-1"]] {
        let out = run(bin()
            .current_dir(dir.path())
            .arg(fixture("dummy_tiny.onnx"))
            .args(bad)
            .args(["-o", "x.png"]));
        assert!(!out.status.success());
        assert!(stderr(&out).contains("out of range"), "{}", stderr(&out));
    }
    assert!(files(dir.path()).is_empty());
}

#[test]
fn wrong_noise_shape() {
    let dir = tempfile::tempdir().unwrap();
    let noise = dir.path().join("noise.npy");
    io::write_npy(&noise, io::seeded_noise(0, [1, 3, 16, 16]).view()).unwrap();
    let out = run(bin()
        .current_dir(dir.path())
        .arg(fixture("dummy_tiny.onnx"))
        .args([
            "--backend",
            "tract",
            "--noise",
            "noise.npy",
            "-o",
            "x.png",
            "--save-raw",
            "raw.npy",
        ]));
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("noise.npy") && e.contains("[1, 3, 16, 16]") && e.contains("[1, 3, 32, 32]"),
        "{e}"
    );
    assert_eq!(files(dir.path()), vec!["noise.npy"]);
}

#[test]
fn auto_falls_back_to_tract_without_ort_library() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin()
        .current_dir(dir.path())
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .arg(fixture("dummy_tiny.onnx"))
        .args(["--backend", "auto", "-o", "x.png"]));
    assert!(out.status.success());
    let e = stderr(&out);
    assert!(e.contains(
        "skipped ort/TensorrtExecutionProvider, ort/CUDAExecutionProvider, ort/CPUExecutionProvider"
    ));
    assert!(
        e.contains("ORT_DYLIB_PATH=/nonexistent/libonnxruntime.so does not exist"),
        "{e}"
    );
    assert!(e.contains("using tract"), "{e}");
    assert!(stdout(&out).contains("backend tract"));
    assert_eq!(files(dir.path()), vec!["x.png"]);
}

#[test]
fn device_cuda_is_an_error_without_gpu() {
    for (device, ep) in [
        ("cuda", "CUDAExecutionProvider"),
        ("tensorrt", "TensorrtExecutionProvider"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = bin();
        cmd.current_dir(dir.path())
            .arg(fixture("dummy_tiny.onnx"))
            .args(["--device", device, "-o", "x.png"]);
        if let Some(lib) = ort_lib() {
            cmd.arg("--ort-lib").arg(lib);
        }
        let out = run(&mut cmd);
        assert!(!out.status.success(), "--device {device} must not fall back");
        assert!(
            stderr(&out).contains(&format!("{ep} was requested but cannot be used")),
            "{}",
            stderr(&out)
        );
        assert!(files(dir.path()).is_empty());
    }
    let out = run(bin()
        .arg(fixture("dummy_tiny.onnx"))
        .args(["--backend", "tract", "--device", "cuda"]));
    assert!(!out.status.success());
    assert!(stderr(&out).contains("tract runs on the CPU only"));
}

#[test]
fn unknown_custom_op_names_op_and_node() {
    for backend in ["tract", "ort", "openvino"] {
        let mut cmd = bin();
        cmd.arg(fixture("unknown_op.onnx")).args(["--backend", backend]);
        if backend == "ort" {
            let Some(lib) = need_ort("unknown_custom_op_names_op_and_node") else {
                continue;
            };
            cmd.args(["--device", "cpu", "--ort-lib"]).arg(lib);
        }
        if backend == "openvino" {
            let Some(lib) = need_openvino("unknown_custom_op_names_op_and_node") else {
                continue;
            };
            cmd.arg("--openvino-lib").arg(lib);
        }
        let dir = tempfile::tempdir().unwrap();
        cmd.current_dir(dir.path()).args(["-o", "x.png"]);
        let out = run(&mut cmd);
        assert!(!out.status.success());
        let e = stderr(&out);
        assert!(
            e.contains(&format!(
                "backend {backend} cannot run op 'Bogus' (domain 'pixeldit') of node 'bogus_node'"
            )),
            "{e}"
        );
    }
}

/// The dummy model `v = 0.5 x + t + 0.01 y`, sampled in-process with the library sampler.
fn dummy_reference(labels: &[i64], seed: u64, steps: usize) -> Array4<f32> {
    let cfg = SamplerConfig {
        kind: SamplerKind::FlowDpm,
        steps,
        cfg_scale: 2.0,
        interval: (0.0, 1.0),
        shift: 1.0,
    };
    let mut model = |x: ndarray::ArrayView4<f32>, t: Time, rows: CondRows<'_>| {
        let CondRows::Class(y) = rows else {
            panic!("class rows")
        };
        let t = t.t() as f32;
        let mut v = x.mapv(|v| 0.5 * v);
        for (b, mut img) in v.outer_iter_mut().enumerate() {
            img.mapv_inplace(|a| a + (t + 0.01 * y[b] as f32));
        }
        Ok(v)
    };
    let noise = io::seeded_noise(seed, [labels.len(), 3, 32, 32]);
    sample(&mut model, Conditions::classes(labels.to_vec(), 10), cfg, noise).unwrap()
}

#[test]
fn both_backends_match_the_in_process_sampler() {
    let want = dummy_reference(&[1, 7], 3, 10);
    let mut backends = vec![("tract", None)];
    if let Some(lib) = need_ort("both_backends_match_the_in_process_sampler") {
        backends.push(("ort", Some(lib)));
    }
    if let Some(lib) = need_openvino("both_backends_match_the_in_process_sampler") {
        backends.push(("openvino", Some(lib)));
    }
    for (backend, lib) in backends {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = bin();
        cmd.current_dir(dir.path())
            .arg(fixture("dummy_tiny.onnx"))
            .args([
                "--backend",
                backend,
                "--classes",
                "1,7",
                "--seed",
                "3",
                "--steps",
                "10",
                "--cfg",
                "2",
            ])
            .args(["--interval", "0,1", "-o", "s.png", "--save-raw", "raw.npy"]);
        match (backend, lib) {
            ("openvino", Some(lib)) => cmd.arg("--openvino-lib").arg(lib),
            (_, Some(lib)) => cmd.arg("--ort-lib").arg(lib),
            _ => &mut cmd,
        };
        let out = run(&mut cmd);
        assert!(out.status.success());
        assert_eq!(files(dir.path()), vec!["raw.npy", "s_000.png", "s_001.png"]);
        let raw = io::read_npy(&dir.path().join("raw.npy")).unwrap();
        let d = max_abs_diff(raw.as_slice().unwrap(), want.as_slice().unwrap());
        assert!(d < 1e-5, "{backend}: max abs diff {d}");
        let line = stdout(&out);
        assert!(
            line.contains(&format!("backend {backend}"))
                && line.contains("precision fp32")
                && line.contains("ms/step")
        );
        // PNG content is fp2uint8 of the raw output
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(dir.path().join("s_001.png")).unwrap(),
        ));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (32, 32));
        assert_eq!(buf[0], io::to_u8(raw[[1, 0, 0, 0]]));
        assert_eq!(buf[1], io::to_u8(raw[[1, 1, 0, 0]]));
    }
}

#[test]
fn given_noise_reproduces_the_seeded_run_and_grid_output() {
    let dir = tempfile::tempdir().unwrap();
    io::write_npy(
        &dir.path().join("n.npy"),
        io::seeded_noise(5, [3, 3, 32, 32]).view(),
    )
    .unwrap();
    let base = [
        "--backend",
        "tract",
        "--class",
        "2",
        "--batch",
        "3",
        "--steps",
        "4",
        "--grid",
        "-q",
    ];
    let a = run(bin()
        .current_dir(dir.path())
        .arg(fixture("dummy_tiny.onnx"))
        .args(base)
        .args(["--seed", "5", "-o", "a.png", "--save-raw", "a.npy"]));
    let b = run(bin()
        .current_dir(dir.path())
        .arg(fixture("dummy_tiny.onnx"))
        .args(base)
        .args(["--noise", "n.npy", "-o", "b.png", "--save-raw", "b.npy"]));
    assert!(a.status.success() && b.status.success());
    let (ra, rb) = (
        io::read_npy(&dir.path().join("a.npy")).unwrap(),
        io::read_npy(&dir.path().join("b.npy")).unwrap(),
    );
    assert_eq!(ra, rb);
    assert_eq!(
        std::fs::read(dir.path().join("a.png")).unwrap(),
        std::fs::read(dir.path().join("b.png")).unwrap()
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(dir.path().join("a.png")).unwrap(),
    ));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (64, 64)); // 3 images -> 2x2 grid of 32x32
}

#[test]
fn bench_prints_its_table_and_writes_no_file_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.current_dir(dir.path())
        .args(["bench"])
        .arg(fixture("dummy_tiny.onnx"))
        .args(["--runs", "2", "--warmup", "0", "--backend", "tract"]);
    let out = run(&mut cmd);
    assert!(out.status.success());
    assert!(stdout(&out).contains("| median ms |"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("| tract/tract-cpu | 1 |"),
        "{}",
        stdout(&out)
    );
    assert!(
        files(dir.path()).is_empty(),
        "bench wrote {:?}",
        files(dir.path())
    );
}

#[test]
fn bench_appends_a_row_per_backend() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.current_dir(dir.path())
        .args(["bench"])
        .arg(fixture("dummy_tiny.onnx"))
        .args(["--runs", "3", "--warmup", "1", "--batch", "2", "--append", "B.md"]);
    let lib = need_ort("bench_appends_a_row_per_backend");
    if let Some(lib) = &lib {
        cmd.arg("--ort-lib").arg(lib);
    }
    let out = run(&mut cmd);
    assert!(out.status.success());
    let table = std::fs::read_to_string(dir.path().join("B.md")).unwrap();
    assert!(table.starts_with("# Benchmarks"));
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| 2")).collect();
    assert_eq!(rows.len(), if lib.is_some() { 2 } else { 1 }, "{table}");
    assert!(rows.iter().any(|r| r.contains("| tract/tract-cpu | 2 |")));
    assert!(rows
        .iter()
        .all(|r| r.contains("dummy_tiny.onnx (tiny 32x32, decomposed) | fp32")));
    if lib.is_some() {
        assert!(rows
            .iter()
            .any(|r| r.contains("| ort/CPUExecutionProvider | 2 |")));
    }
}

/// Non-finite or out-of-range sampler flags are refused before anything runs, the message naming the field.
#[test]
fn non_finite_and_out_of_range_sampler_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expect) in [
        (vec!["--cfg", "nan"], "cfg scale NaN is not finite"),
        (vec!["--cfg", "inf"], "cfg scale inf is not finite"),
        (
            vec!["--cfg", "1e30"],
            "cfg scale 1000000000000000000000000000000 is out of range 0..=100",
        ),
        (vec!["--shift", "nan"], "time shift NaN is not finite"),
        (
            vec!["--shift", "1e30"],
            "time shift 1000000000000000000000000000000 is out of range",
        ),
        (
            vec!["--interval", "nan,1"],
            "guidance interval lo NaN is not finite",
        ),
        (
            vec!["--interval", "0,inf"],
            "guidance interval hi inf is not finite",
        ),
        (vec!["--interval", "0.9,0.1"], "must have lo <= hi"),
        (
            vec!["--steps", "1001"],
            "steps 1001: expected 1..=1000 for flow_dpm",
        ),
        (
            vec!["--sampler", "dpmpp_2m", "--steps", "1"],
            "steps 1: expected 2..=1000 for dpmpp_2m",
        ),
    ] {
        let out = run(bin()
            .current_dir(dir.path())
            .arg(fixture("dummy_tiny.onnx"))
            .args(["--backend", "tract"])
            .args(&args)
            .args(["-o", "x.png"]));
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stderr(&out).contains(expect), "{args:?}: {}", stderr(&out));
    }
    assert!(files(dir.path()).is_empty());
}

/// `-q` on every binary and subcommand prints nothing on success; without it the same runs report what they did.
#[test]
fn quiet_means_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let export = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pixeldit-export"));
        c.current_dir(d).args(args);
        run(&mut c)
    };
    let silent = |out: &std::process::Output, what: &str| {
        assert!(out.status.success(), "{what} failed");
        assert!(
            out.stdout.is_empty() && out.stderr.is_empty(),
            "{what} -q printed: {}{}",
            stdout(out),
            stderr(out)
        );
    };
    let loud = export(&["--preset", "tiny", "--random-init", "-o", "t.onnx"]);
    assert!(loud.status.success() && stdout(&loud).contains("wrote t.onnx"));
    silent(
        &export(&["--preset", "tiny", "--random-init", "-q", "-o", "t.onnx"]),
        "pixeldit-export",
    );
    let gemma = workspace().join("tests/golden/gemma/model");
    let enc = export(&["--text-encoder", gemma.to_str().unwrap(), "-q", "-o", "g.onnx"]);
    silent(&enc, "pixeldit-export --text-encoder");
    // Default backend selection (auto): without -q it names the backend, with -q nothing.
    let sample = |extra: &[&str]| {
        run(bin()
            .current_dir(d)
            .args(["t.onnx", "--class", "1", "--steps", "2", "-o", "s.png"])
            .args(extra))
    };
    let loud = sample(&[]);
    assert!(loud.status.success() && stderr(&loud).contains("pixeldit-run: using "));
    assert!(stdout(&loud).contains("flow_dpm 2 steps"));
    silent(&sample(&["-q"]), "pixeldit-run");
    let tok = gemma.join("tokenizer.json");
    let encode = run(bin().current_dir(d).args([
        "encode",
        "--text-encoder",
        "g.onnx",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--prompt",
        "the digit three",
        "-q",
        "-o",
        "e.npy",
    ]));
    silent(&encode, "pixeldit-run encode");
    let bench = run(bin().current_dir(d).args([
        "bench",
        "t.onnx",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--backend",
        "tract",
        "-q",
    ]));
    silent(&bench, "pixeldit-run bench");
}

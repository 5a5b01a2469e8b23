//! `pixeldit-export --triton-repo`: the written repository validates (Rust semantics check, and Triton's own
//! ModelConfig schema through `tools/triton/check_config.py` when the Triton test venv exists), broken
//! repositories give clear errors, and the custom-op attention is refused for Triton unless forced.
//! Serving the repository with a real tritonserver is tested in `crates/runtime/tests/triton.rs`.

use crate::util::root;
use pixeldit_triton::config::CONFIG_FILE;
use pixeldit_triton::validate_repository;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn export(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
        .args(["--preset", "tiny", "--random-init"])
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "--- pixeldit-export {args:?}: {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The Triton venv's Python, or None (a skip, unless PIXELDIT_REQUIRE_TRITON is set).
fn triton_python() -> Option<PathBuf> {
    let venv = std::env::var_os("PIXELDIT_TRITON_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/triton-venv"));
    let p = venv.join("bin/python");
    if p.exists() && venv.join("triton.env").exists() {
        return Some(p);
    }
    assert!(
        !std::env::var("PIXELDIT_REQUIRE_TRITON").is_ok_and(|v| !v.is_empty() && v != "0"),
        "PIXELDIT_REQUIRE_TRITON set but the Triton venv {} is missing (run tools/triton/setup.sh)",
        venv.display()
    );
    eprintln!(
        "schema check skipped: no Triton venv at {} (run tools/triton/setup.sh)",
        venv.display()
    );
    None
}

fn schema_check(repo: &Path) {
    if let Some(py) = triton_python() {
        let out = Command::new(py)
            .arg(root().join("tools/triton/check_config.py"))
            .arg(repo)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{text}");
        assert!(out.status.success(), "schema check failed:\n{text}");
        assert!(text.starts_with("OK "), "{text}");
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let t = std::fs::read_to_string(path).unwrap();
    assert!(t.contains(from), "{from:?} not in {}", path.display());
    std::fs::write(path, t.replacen(from, to, 1)).unwrap();
}

#[test]
fn onnxruntime_repository() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("models");
    let out = export(&["--triton-repo", repo.to_str().unwrap(), "--max-batch-size", "8"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("attention decomposed"),
        "Triton default attention: {stdout}"
    );
    let model = repo.join("pixeldit_tiny");
    assert!(model.join("1/model.onnx").is_file());
    let cfg = std::fs::read_to_string(model.join(CONFIG_FILE)).unwrap();
    for want in [
        "platform: \"onnxruntime_onnx\"",
        "max_batch_size: 8",
        "preferred_batch_size: [ 4, 8 ]",
        "value: \"FP32\"",
        "\\\"attention\\\":\\\"decomposed\\\"",
    ] {
        assert!(cfg.contains(want), "{want} not in\n{cfg}");
    }
    let models = validate_repository(&repo).unwrap();
    let mut names: Vec<(&str, i64, &str)> = models
        .iter()
        .map(|m| (m.name.as_str(), m.max_batch_size, m.platform.as_str()))
        .collect();
    names.sort();
    // The denoiser, its pipeline model (python backend, the sampler library beside model.py) and the pixel level
    // of the patch-level split (for the pipeline's patch cache).
    assert_eq!(
        names,
        [
            ("pixeldit_tiny", 8, "onnxruntime_onnx"),
            ("pixeldit_tiny_pipeline", 0, "python"),
            ("pixeldit_tiny_pixel", 8, "onnxruntime_onnx"),
        ]
    );
    // The denoiser also outputs the patch tokens (tiny 32x32: 4 patches of width 64); the pixel level takes them.
    assert!(
        cfg.contains("name: \"patch_tokens\"\n  data_type: TYPE_FP32\n  dims: [ 4, 64 ]"),
        "{cfg}"
    );
    let pixel = repo.join("pixeldit_tiny_pixel");
    assert!(pixel.join("1/model.onnx").is_file() && pixel.join("README.txt").is_file());
    assert!(
        !model.join("1/model.pixel.onnx").exists(),
        "the pixel level is moved out of the denoiser's folder"
    );
    let info = pixeldit_runtime::model::ModelInfo::read(&pixel.join("1/model.onnx")).unwrap();
    assert_eq!(info.metadata_prop(pixeldit_spec::PIXEL_LEVEL_KEY), Some("tokens"));
    let denoiser_meta = pixeldit_runtime::model::read_metadata(&model.join("1/model.onnx")).unwrap();
    assert_eq!(
        info.pixeldit_metadata().unwrap().weights_sha256,
        denoiser_meta.weights_sha256
    );
    let xcfg = std::fs::read_to_string(pixel.join(CONFIG_FILE)).unwrap();
    for want in [
        "key: \"pixeldit.pixel_level\"",
        "name: \"patch_tokens\"",
        "name: \"t\"",
        "name: \"v\"",
        "max_batch_size: 8",
    ] {
        assert!(xcfg.contains(want), "{want} not in\n{xcfg}");
    }
    assert!(!xcfg.contains("name: \"y\""), "{xcfg}");
    let pipeline = repo.join("pixeldit_tiny_pipeline");
    for f in ["1/model.py", "1/libpixeldit_triton_pipeline.so", "README.txt"] {
        assert!(pipeline.join(f).is_file(), "{f}");
    }
    let pcfg = std::fs::read_to_string(pipeline.join(CONFIG_FILE)).unwrap();
    assert!(
        pcfg.contains("key: \"pixeldit.denoiser\"") && pcfg.contains("string_value: \"pixeldit_tiny\""),
        "{pcfg}"
    );
    assert!(
        pcfg.contains("key: \"pixeldit.pixel_model\"")
            && pcfg.contains("string_value: \"pixeldit_tiny_pixel\""),
        "{pcfg}"
    );
    for input in [
        "patch_cache",
        "patch_cache_threshold",
        "patch_cache_reuse",
        "patch_cache_schedule",
    ] {
        assert!(
            pcfg.contains(&format!("name: \"{input}\"")),
            "{input} not in\n{pcfg}"
        );
    }
    schema_check(&repo);

    // --no-patch-split: no pixel level, no patch_tokens output, no pixel model for the pipeline to call.
    let whole = d.path().join("whole");
    let out = export(&["--triton-repo", whole.to_str().unwrap(), "--no-patch-split"]);
    assert!(out.status.success());
    assert_eq!(validate_repository(&whole).unwrap().len(), 2);
    assert!(!whole.join("pixeldit_tiny_pixel").exists());
    let wcfg = std::fs::read_to_string(whole.join("pixeldit_tiny").join(CONFIG_FILE)).unwrap();
    assert!(!wcfg.contains("patch_tokens"), "{wcfg}");
    let wpcfg = std::fs::read_to_string(whole.join("pixeldit_tiny_pipeline").join(CONFIG_FILE)).unwrap();
    assert!(!wpcfg.contains("pixeldit.pixel_model"), "{wpcfg}");

    // Without the pipeline: the denoiser and its pixel level. A missing library is an error before anything is
    // written.
    let solo = d.path().join("solo");
    let out = export(&["--triton-repo", solo.to_str().unwrap(), "--no-triton-pipeline"]);
    assert!(out.status.success());
    assert_eq!(validate_repository(&solo).unwrap().len(), 2);
    let none = d.path().join("none");
    let out = export(&[
        "--triton-repo",
        none.to_str().unwrap(),
        "--pipeline-lib",
        "/nonexistent/lib.so",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/lib.so"));
    assert!(
        !none.exists(),
        "nothing is written when the pipeline library is missing"
    );

    // The same inputs give the same repository bytes.
    let repo2 = d.path().join("models2");
    assert!(
        export(&["--triton-repo", repo2.to_str().unwrap(), "--max-batch-size", "8"])
            .status
            .success()
    );
    for m in ["pixeldit_tiny", "pixeldit_tiny_pixel"] {
        for f in ["config.pbtxt", "1/model.onnx", "README.txt"] {
            assert_eq!(
                std::fs::read(repo.join(m).join(f)).unwrap(),
                std::fs::read(repo2.join(m).join(f)).unwrap(),
                "{m}/{f} differs between two identical exports"
            );
        }
    }

    // Broken copies: wrong dims, then a missing version folder.
    edit(&model.join(CONFIG_FILE), "dims: [ 3, 32, 32 ]", "dims: [ 3, 32 ]");
    let e = validate_repository(&repo).unwrap_err().to_string();
    eprintln!("{e}");
    assert!(
        e.contains("pixeldit_tiny: 'x' has dims [3, 32] but the model exported at 32x32 takes [3, 32, 32]"),
        "{e}"
    );
    std::fs::rename(model.join("1"), model.join("v1")).unwrap();
    let e = validate_repository(&repo).unwrap_err().to_string();
    eprintln!("{e}");
    assert!(e.contains("no version folder"), "{e}");
}

#[test]
fn tensorrt_plan_repository() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("models");
    let out = export(&[
        "--triton-repo",
        repo.to_str().unwrap(),
        "--triton-platform",
        "tensorrt_plan",
        "--precision",
        "fp16",
        "--model-name",
        "tiny_trt",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("trtexec --onnx=model.onnx --saveEngine=1/model.plan"),
        "{stdout}"
    );
    let model = repo.join("tiny_trt");
    assert!(model.join("model.onnx").is_file() && model.join("1").is_dir());
    let cfg = std::fs::read_to_string(model.join(CONFIG_FILE)).unwrap();
    assert!(cfg.contains("platform: \"tensorrt_plan\"") && cfg.contains("kind: KIND_GPU"));
    // No patch-level split for TensorRT plans: no pixel-level model, no patch_tokens output.
    assert!(!repo.join("tiny_trt_pixel").exists() && !cfg.contains("patch_tokens"));
    schema_check(&repo);
    // Until the plan is built on the GPU the repository is not deployable, and says how to fix it.
    let e = validate_repository(&repo).unwrap_err().to_string();
    assert!(
        e.contains(
            "1/model.plan is missing: build it on the target GPU with the trtexec command in README.txt"
        ),
        "{e}"
    );
}

#[test]
fn triton_option_errors() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("models");
    let r = repo.to_str().unwrap();
    let fails = |args: &[&str], want: &str| {
        let out = export(args);
        assert!(!out.status.success());
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(e.contains(want), "{want} not in {e}");
    };
    fails(
        &["--triton-repo", r, "--attention", "custom"],
        "pixeldit.RotaryAttention custom op, which Triton's onnxruntime backend cannot run",
    );
    fails(
        &[
            "--triton-repo",
            r,
            "--max-batch-size",
            "4",
            "--preferred-batch-size",
            "8",
        ],
        "preferred batch size 8",
    );
    fails(
        &["--triton-repo", r, "--model-name", "a/b"],
        "Triton model name 'a/b'",
    );
    fails(&["--triton-repo", r, "-o", "x.onnx"], "cannot be used with");
    fails(
        &["--triton-repo", r, "--patch-split", "cond"],
        "--patch-split cond is not served by Triton",
    );
    assert!(
        !repo.join("pixeldit_tiny").exists(),
        "nothing written on option errors"
    );
    // Forced: written, with the custom op (for servers that load a kernel for it).
    let out = export(&[
        "--triton-repo",
        r,
        "--attention",
        "custom",
        "--triton-allow-custom-op",
    ]);
    assert!(out.status.success());
    validate_repository(&repo).unwrap();
}

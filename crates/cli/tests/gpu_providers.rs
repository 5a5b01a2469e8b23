//! The CUDA and TensorRT providers of the GPU build of ONNX Runtime (onnxruntime-gpu 1.31.1) on a machine without
//! a GPU or without the CUDA/TensorRT libraries: `--device cuda|tensorrt` fail with a message that names what is
//! missing, `--device auto` falls back with the reason, nothing panics.
//!
//! The GPU library is taken from `PIXELDIT_ORT_GPU_LIB` (scripts/test.sh fetches it with
//! `tools/gpu/fetch_ort_gpu.sh` and sets it, with `PIXELDIT_REQUIRE_ORT_GPU=1` so the tests cannot skip). The GPU
//! probes are pointed at fake paths (`PIXELDIT_NVIDIA_DEVICE`, `PIXELDIT_NVIDIA_PROC`) so the tests see "no GPU"
//! or "a GPU" whatever the machine has; on a machine whose loader finds real CUDA libraries they are skipped.

use crate::util::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `PIXELDIT_ORT_GPU_LIB`, or a note that the test is skipped (a failure when `PIXELDIT_REQUIRE_ORT_GPU` is set).
/// The library and its provider libraries are linked into a fresh directory (returned, kept alive by the caller):
/// next to the original there may be the `site-packages` file of `scripts/setup.sh --gpu`, which would point the
/// preload at real CUDA libraries and change what is missing.
fn gpu_lib(test: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    let lib = std::env::var_os("PIXELDIT_ORT_GPU_LIB")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let required = std::env::var("PIXELDIT_REQUIRE_ORT_GPU").is_ok_and(|v| !v.is_empty() && v != "0");
    match lib {
        Some(p) if p.is_file() => {
            if real_cuda_loadable() {
                eprintln!("{test}: a CUDA 13 cuBLAS is loadable here, the no-library checks do not apply");
                return None;
            }
            let iso = tempfile::tempdir().unwrap();
            for entry in std::fs::read_dir(p.parent().unwrap()).unwrap() {
                let f = entry.unwrap().path();
                let name = f.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("libonnxruntime") && name.contains(".so") {
                    std::os::unix::fs::symlink(&f, iso.path().join(&name)).unwrap();
                }
            }
            let lib = iso.path().join(p.file_name().unwrap());
            Some((iso, lib))
        }
        other => {
            assert!(
                !required,
                "{test}: PIXELDIT_REQUIRE_ORT_GPU is set but PIXELDIT_ORT_GPU_LIB ({other:?}) is not a file \
                 (run tools/gpu/fetch_ort_gpu.sh)"
            );
            eprintln!("{test}: PIXELDIT_ORT_GPU_LIB not set, skipped");
            None
        }
    }
}

/// Whether the dynamic loader finds CUDA 13's cuBLAS by name (then the providers may load).
fn real_cuda_loadable() -> bool {
    Command::new("sh")
        .args(["-c", "ldconfig -p 2>/dev/null | grep -q 'libcublasLt.so.13'"])
        .status()
        .is_ok_and(|s| s.success())
}

/// `pixeldit-run` on the tiny fixture with the GPU library and the GPU probes at `gpu_probe` (a file that exists
/// fakes a GPU) and nothing else to take CUDA libraries from.
fn run_with(dir: &Path, lib: &Path, gpu_probe: &Path, args: &[&str]) -> std::process::Output {
    run(bin()
        .current_dir(dir)
        .env("PIXELDIT_NVIDIA_DEVICE", gpu_probe)
        .env("PIXELDIT_NVIDIA_PROC", dir.join("no-such-proc-file"))
        .env_remove("PIXELDIT_GPU_SITE_PACKAGES")
        .env_remove("LD_LIBRARY_PATH")
        .arg(fixture("dummy_tiny.onnx"))
        .arg("--ort-lib")
        .arg(lib)
        .args(args))
}

fn assert_no_panic(e: &str) {
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn explicit_gpu_devices_name_the_missing_library_and_the_missing_gpu() {
    let Some((_isolated, lib)) = gpu_lib("explicit_gpu_devices_name_the_missing_library_and_the_missing_gpu")
    else {
        return;
    };
    for (device, ep) in [
        ("cuda", "CUDAExecutionProvider"),
        ("tensorrt", "TensorrtExecutionProvider"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let no_gpu = dir.path().join("nvidia0");
        let out = run_with(dir.path(), &lib, &no_gpu, &["--device", device, "-o", "x.png"]);
        let e = stderr(&out);
        assert!(!out.status.success(), "--device {device} must not fall back: {e}");
        assert_no_panic(&e);
        assert!(
            e.contains(&format!("{ep} was requested but cannot be used")),
            "{e}"
        );
        // ONNX Runtime's own message names the provider library and the CUDA library it could not open.
        assert!(e.contains("libonnxruntime_providers_"), "{e}");
        assert!(e.contains("cannot open shared object file"), "{e}");
        assert!(e.contains("libcublas"), "{e}");
        if device == "cuda" {
            assert!(e.contains("libcublasLt.so.13"), "{e}");
        }
        assert!(
            e.contains(&format!("no NVIDIA GPU found ({} and", no_gpu.display())),
            "{e}"
        );
        assert!(e.contains("no pip CUDA/TensorRT libraries preloaded"), "{e}");
        assert_eq!(files(dir.path()), Vec::<String>::new());
    }
}

#[test]
fn auto_without_a_gpu_skips_the_gpu_providers_with_the_reason() {
    let Some((_isolated, lib)) = gpu_lib("auto_without_a_gpu_skips_the_gpu_providers_with_the_reason") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let no_gpu = dir.path().join("nvidia0");
    let out = run_with(dir.path(), &lib, &no_gpu, &["--backend", "ort", "-o", "x.png"]);
    let e = stderr(&out);
    assert!(out.status.success(), "{e}");
    assert_no_panic(&e);
    assert!(
        e.contains(&format!(
            "skipped ort/TensorrtExecutionProvider, ort/CUDAExecutionProvider: no NVIDIA GPU found ({} and",
            no_gpu.display()
        )),
        "{e}"
    );
    assert!(e.contains("using ort/CPUExecutionProvider"), "{e}");
    assert_eq!(files(dir.path()), vec!["x.png"]);
}

#[test]
fn auto_with_a_gpu_but_no_cuda_libraries_falls_back_naming_the_library() {
    let Some((_isolated, lib)) =
        gpu_lib("auto_with_a_gpu_but_no_cuda_libraries_falls_back_naming_the_library")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fake_gpu = dir.path().join("nvidia0");
    std::fs::write(&fake_gpu, b"").unwrap();
    let out = run_with(dir.path(), &lib, &fake_gpu, &["--backend", "ort", "-o", "x.png"]);
    let e = stderr(&out);
    assert!(out.status.success(), "{e}");
    assert_no_panic(&e);
    // Each GPU provider was tried (a GPU "is there") and skipped with ONNX Runtime's reason.
    let skip_lines: Vec<&str> = e.lines().filter(|l| l.contains("skipped ort/")).collect();
    assert!(
        skip_lines.iter().any(|l| l.contains("TensorrtExecutionProvider")),
        "{e}"
    );
    assert!(
        skip_lines
            .iter()
            .any(|l| l.contains("CUDAExecutionProvider") && l.contains("libcublasLt.so.13")),
        "{e}"
    );
    assert!(e.contains("using ort/CPUExecutionProvider"), "{e}");
    assert_eq!(files(dir.path()), vec!["nvidia0", "x.png"]);
}

#[test]
fn preload_failures_are_reported_not_fatal() {
    let Some((_isolated, lib)) = gpu_lib("preload_failures_are_reported_not_fatal") else {
        return;
    };
    // A site-packages with a cuBLAS that is not a library: the preload records it, the provider error says so.
    let site = tempfile::tempdir().unwrap();
    let cublas = site.path().join("nvidia/cublas/lib");
    std::fs::create_dir_all(&cublas).unwrap();
    std::fs::write(cublas.join("libcublasLt.so.13"), b"not an ELF file").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin()
        .current_dir(dir.path())
        .env("PIXELDIT_NVIDIA_DEVICE", dir.path().join("nvidia0"))
        .env("PIXELDIT_NVIDIA_PROC", dir.path().join("version"))
        .env("PIXELDIT_GPU_SITE_PACKAGES", site.path())
        .env_remove("LD_LIBRARY_PATH")
        .arg(fixture("dummy_tiny.onnx"))
        .arg("--ort-lib")
        .arg(&lib)
        .args(["--device", "cuda", "-o", "x.png"]));
    let e = stderr(&out);
    assert!(!out.status.success(), "{e}");
    assert_no_panic(&e);
    assert!(
        e.contains(&format!(
            "preloaded 0 pip CUDA/TensorRT libraries from {}; 1 would not load ({}",
            site.path().display(),
            cublas.join("libcublasLt.so.13").display()
        )),
        "{e}"
    );
}

#[test]
fn placement_report_counts_the_nodes_of_each_provider() {
    // The report `--device cuda|tensorrt` prints ("pixeldit-run: ort: nodes per provider: ..."), here on the CPU
    // provider, where the same logger runs.
    use pixeldit_runtime::backend::ort::{OrtBackend, OrtOptions, OrtProvider};
    use pixeldit_runtime::backend::Backend;
    let Some(lib) = need_ort("placement_report_counts_the_nodes_of_each_provider") else {
        return;
    };
    let opts = |report_placement| OrtOptions {
        provider: OrtProvider::Cpu,
        library: Some(lib.clone()),
        report_placement,
        ..Default::default()
    };
    let b = OrtBackend::with_options(&fixture("dummy_tiny.onnx"), &opts(true)).unwrap();
    let notes = b.notes();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let n: usize = notes[0]
        .strip_prefix("nodes per provider: CPUExecutionProvider ")
        .unwrap_or_else(|| panic!("{notes:?}"))
        .parse()
        .unwrap();
    assert!(n > 0, "{notes:?}");
    let b = OrtBackend::with_options(&fixture("dummy_tiny.onnx"), &opts(false)).unwrap();
    assert!(b.notes().is_empty());
}

//! Preloads the CUDA and TensorRT libraries that live inside pip wheels (`site-packages/nvidia/*/lib`,
//! `site-packages/tensorrt_libs`) by absolute path, before a CUDA or TensorRT provider is registered.
//!
//! The provider libraries of ONNX Runtime ask the dynamic loader for `libcublasLt.so.13`, `libnvinfer.so.10`, ...
//! by name. Once a library with that name is loaded the loader reuses it, so loading the wheels' copies first makes
//! the providers work without `LD_LIBRARY_PATH`.
//!
//! The site-packages directories searched, in order: [`SITE_PACKAGES_ENV`] (a `:`-separated list), the lines of
//! the file [`SITE_PACKAGES_FILE`] next to the ONNX Runtime library (written by `scripts/setup.sh --gpu`), and the
//! site-packages the library itself is in when it is loaded straight from `onnxruntime/capi/`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable with extra site-packages directories (`:`-separated) to take GPU libraries from.
pub const SITE_PACKAGES_ENV: &str = "PIXELDIT_GPU_SITE_PACKAGES";
/// File next to the ONNX Runtime library naming site-packages directories, one a line.
pub const SITE_PACKAGES_FILE: &str = "site-packages";

/// What [`preload_once`] did.
#[derive(Debug, Clone, Default)]
pub struct Preloaded {
    /// The site-packages directories searched.
    pub site_packages: Vec<PathBuf>,
    /// Libraries loaded, in load order.
    pub loaded: Vec<PathBuf>,
    /// Libraries that would not load, with the loader's message (a missing dependency, usually).
    pub failed: Vec<(PathBuf, String)>,
}

impl Preloaded {
    /// One line for error messages: where GPU libraries were looked for and what loaded.
    pub fn summary(&self) -> String {
        if self.site_packages.is_empty() {
            return format!(
                "no pip CUDA/TensorRT libraries preloaded: no site-packages found (set {SITE_PACKAGES_ENV} or run \
                 scripts/setup.sh --gpu)"
            );
        }
        let roots: Vec<String> = self
            .site_packages
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut s = format!(
            "preloaded {} pip CUDA/TensorRT libraries from {}",
            self.loaded.len(),
            roots.join(", ")
        );
        if let Some((p, e)) = self.failed.first() {
            s.push_str(&format!(
                "; {} would not load ({}: {e})",
                self.failed.len(),
                p.display()
            ));
        }
        s
    }
}

/// The site-packages directories to take GPU libraries from, for the ONNX Runtime library at `ort_library`
/// (existing directories only, without duplicates).
pub fn site_packages(ort_library: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut push = |p: PathBuf| {
        if p.is_dir() && !out.contains(&p) {
            out.push(p);
        }
    };
    if let Some(v) = std::env::var_os(SITE_PACKAGES_ENV) {
        std::env::split_paths(&v)
            .filter(|p| !p.as_os_str().is_empty())
            .for_each(&mut push);
    }
    let dir = ort_library.parent().unwrap_or(Path::new("."));
    if let Ok(text) = std::fs::read_to_string(dir.join(SITE_PACKAGES_FILE)) {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .for_each(|l| push(PathBuf::from(l)));
    }
    // .../site-packages/onnxruntime/capi/libonnxruntime.so.*
    let capi = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    if capi.file_name().is_some_and(|n| n == "capi")
        && capi
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "onnxruntime")
    {
        if let Some(site) = capi.parent().and_then(Path::parent) {
            push(site.to_path_buf());
        }
    }
    out
}

/// The library directories of the pip wheels under `site_packages`: `nvidia/*/lib` (sorted) and `tensorrt_libs`.
pub fn library_dirs(site_packages: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for site in site_packages {
        let mut nvidia: Vec<PathBuf> = std::fs::read_dir(site.join("nvidia"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("lib"))
            .filter(|p| p.is_dir())
            .collect();
        nvidia.sort();
        dirs.extend(nvidia);
        let trt = site.join("tensorrt_libs");
        if trt.is_dir() {
            dirs.push(trt);
        }
    }
    dirs
}

/// The shared libraries (`lib*.so.<version>`) in `dirs`, the first of each file name only.
pub fn libraries(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("lib") && n.contains(".so."))
            })
            .collect();
        files.sort();
        for f in files {
            if !out.iter().any(|o| o.file_name() == f.file_name()) {
                out.push(f);
            }
        }
    }
    out
}

/// Loads `libraries` by path, in passes: a library whose dependency (another wheel's library) is not loaded yet
/// fails and is retried after the others, until a pass loads nothing new.
fn load_all(libraries: Vec<PathBuf>) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut loaded = Vec::new();
    let mut pending = libraries;
    loop {
        let mut failed = Vec::new();
        let before = loaded.len();
        for lib in pending {
            match ort::util::preload_dylib(&lib) {
                Ok(()) => loaded.push(lib),
                Err(e) => failed.push((lib, e.to_string())),
            }
        }
        if failed.is_empty() || loaded.len() == before {
            return (loaded, failed);
        }
        pending = failed.into_iter().map(|(p, _)| p).collect();
    }
}

static PRELOADED: OnceLock<Preloaded> = OnceLock::new();

/// Preloads the pip CUDA/TensorRT libraries found for `ort_library` (see the module doc). Runs once per process;
/// later calls return the first result. Libraries that do not load are recorded, not fatal: the provider's own
/// registration error then names what is missing.
pub fn preload_once(ort_library: &Path) -> &'static Preloaded {
    PRELOADED.get_or_init(|| {
        let site_packages = site_packages(ort_library);
        let (loaded, failed) = load_all(libraries(&library_dirs(&site_packages)));
        Preloaded {
            site_packages,
            loaded,
            failed,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_wheel_library_dirs_next_to_capi_and_from_the_site_packages_file() {
        let tmp = std::env::temp_dir().join(format!("pixeldit-gpu-libs-{}", std::process::id()));
        let site = tmp.join("venv/lib/python3.11/site-packages");
        for d in [
            "onnxruntime/capi",
            "nvidia/cublas/lib",
            "nvidia/cudnn/lib",
            "nvidia/cu13/include",
            "tensorrt_libs",
        ] {
            std::fs::create_dir_all(site.join(d)).unwrap();
        }
        for f in [
            "nvidia/cublas/lib/libcublasLt.so.13",
            "nvidia/cublas/lib/libcublas.so.13",
            "nvidia/cudnn/lib/libcudnn.so.9",
            "nvidia/cudnn/lib/README.txt",
            "tensorrt_libs/libnvinfer.so.10",
            "tensorrt_libs/libnvinfer.so.10.16.1",
        ] {
            std::fs::write(site.join(f), b"").unwrap();
        }
        let capi_lib = site.join("onnxruntime/capi/libonnxruntime.so.1.31.1");
        let site_canon = site.canonicalize().unwrap();
        assert_eq!(super::site_packages(&capi_lib), vec![site_canon.clone()]);

        // A copied library finds the site-packages through the file next to it.
        let cache = tmp.join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        let copied = cache.join("libonnxruntime.so.1.31.1");
        assert!(super::site_packages(&copied).is_empty());
        std::fs::write(
            cache.join(SITE_PACKAGES_FILE),
            format!("{}\n\n", site_canon.display()),
        )
        .unwrap();
        assert_eq!(super::site_packages(&copied), vec![site_canon.clone()]);

        let dirs = library_dirs(std::slice::from_ref(&site_canon));
        assert_eq!(
            dirs,
            vec![
                site_canon.join("nvidia/cublas/lib"),
                site_canon.join("nvidia/cudnn/lib"),
                site_canon.join("tensorrt_libs"),
            ]
        );
        let names: Vec<String> = libraries(&dirs)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "libcublas.so.13",
                "libcublasLt.so.13",
                "libcudnn.so.9",
                "libnvinfer.so.10",
                "libnvinfer.so.10.16.1"
            ]
        );
        // Empty files are not libraries: every load fails, is recorded, and the passes stop.
        let (loaded, failed) = load_all(libraries(&dirs));
        assert!(loaded.is_empty());
        assert_eq!(failed.len(), 5);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

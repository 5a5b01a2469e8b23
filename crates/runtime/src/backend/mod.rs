//! Backends behind one trait, and the `auto` selection order TensorRT -> CUDA -> ORT CPU -> tract.

#[cfg(feature = "ort")]
pub mod gpu_libs;
#[cfg(feature = "openvino")]
pub mod openvino;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

use crate::error::{Result, RuntimeError};
use crate::model::ModelInfo;
use crate::tensor::{Feed, TensorRef};
use ndarray::ArrayD;
use pixeldit_spec::Precision;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A loaded model: named input tensors in, the named f32 outputs out. Backends are built by their own
/// constructors ([`ort::OrtBackend::with_options`], [`tract::TractBackend::open_with_threads`], a remote server's
/// client) or by [`load`]; what the inputs mean is the model adapter's business ([`crate::Denoiser`]).
pub trait Backend {
    /// `ort`, `tract` or `triton`.
    fn name(&self) -> &'static str;
    /// Execution provider / device, e.g. `CPUExecutionProvider` or `tract-cpu`.
    fn provider(&self) -> String;
    /// What the loader changed in the model (e.g. tract's FLOAT8/BF16 rewrite), one line each.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// One forward pass: `inputs` by graph-input name (every graph input exactly once), returning the f32 graph
    /// outputs named in `outputs`, in that order.
    fn run(&mut self, inputs: &[Feed<'_, '_>], outputs: &[&str]) -> Result<Vec<ArrayD<f32>>>;
    /// The graph's input names, in graph order.
    fn input_names(&self) -> Vec<String>;
    /// The graph's output names, in graph order.
    fn output_names(&self) -> Vec<String>;
    /// Runs a graph whose inputs are all f32, fed in graph-input order, and returns every output (tests, tools).
    fn run_f32(&mut self, inputs: &[ndarray::ArrayViewD<f32>]) -> Result<Vec<ArrayD<f32>>> {
        let names = self.input_names();
        if names.len() != inputs.len() {
            return Err(RuntimeError::Shape(format!(
                "{} inputs given, the model has {} ({})",
                inputs.len(),
                names.len(),
                names.join(", ")
            )));
        }
        let feeds: Vec<Feed> = names
            .iter()
            .zip(inputs)
            .map(|(n, a)| (n.as_str(), TensorRef::F32(a.view())))
            .collect();
        let outputs = self.output_names();
        let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        self.run(&feeds, &outputs)
    }
}

/// Checks that `feeds` name every input of `expected` exactly once and nothing else.
pub fn check_feeds(expected: &[String], feeds: &[Feed<'_, '_>]) -> Result<()> {
    for (i, (name, _)) in feeds.iter().enumerate() {
        if !expected.iter().any(|e| e == name) {
            return Err(RuntimeError::Shape(format!(
                "the model has no input named '{name}' (inputs: {})",
                expected.join(", ")
            )));
        }
        if feeds[..i].iter().any(|(n, _)| n == name) {
            return Err(RuntimeError::Shape(format!("input '{name}' is fed twice")));
        }
    }
    if let Some(missing) = expected.iter().find(|e| !feeds.iter().any(|(n, _)| n == e)) {
        return Err(RuntimeError::Shape(format!(
            "input '{missing}' is not fed (inputs: {})",
            expected.join(", ")
        )));
    }
    Ok(())
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BackendKind {
    /// Best available: ONNX Runtime (TensorRT, CUDA, CPU), then tract.
    #[default]
    Auto,
    /// ONNX Runtime only.
    Ort,
    /// tract only.
    Tract,
    /// OpenVINO (CPU) only; standard ONNX graphs (`--attention decomposed` or `onnx23`).
    #[cfg_attr(feature = "clap", value(name = "openvino"))]
    OpenVino,
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Device {
    /// Best available.
    #[default]
    Auto,
    /// ONNX Runtime TensorRT execution provider (explicit: failing is an error).
    #[cfg_attr(feature = "clap", value(name = "tensorrt"))]
    TensorRt,
    /// ONNX Runtime CUDA execution provider (explicit: failing is an error).
    Cuda,
    /// CPU (ONNX Runtime CPU or tract).
    Cpu,
}

macro_rules! names {
    ($t:ty, $what:literal, { $($v:path => $s:literal),+ }) => {
        impl $t {
            /// Accepted spellings.
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            /// Canonical spelling.
            pub fn as_str(&self) -> &'static str { match self { $($v => $s),+ } }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $t {
            type Err = RuntimeError;
            fn from_str(s: &str) -> Result<Self> {
                match s { $($s => Ok($v),)+ _ => Err(RuntimeError::InvalidArgument(format!(
                    "unknown {} '{s}': expected one of {}", $what, Self::NAMES.join(", ")))) }
            }
        }
    };
}
names!(BackendKind, "backend", { BackendKind::Auto => "auto", BackendKind::Ort => "ort", BackendKind::Tract => "tract", BackendKind::OpenVino => "openvino" });
names!(Device, "device", { Device::Auto => "auto", Device::TensorRt => "tensorrt", Device::Cuda => "cuda", Device::Cpu => "cpu" });

/// One concrete way of running a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidate {
    /// ONNX Runtime with an execution provider.
    #[cfg(feature = "ort")]
    Ort(ort::OrtProvider),
    /// tract.
    Tract,
    /// OpenVINO's CPU plugin.
    OpenVino,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "ort")]
            Candidate::Ort(p) => write!(f, "ort/{}", p.ep_name()),
            Candidate::Tract => f.write_str("tract"),
            Candidate::OpenVino => f.write_str("openvino/CPU"),
        }
    }
}

/// Options of [`load`] (by-value `with_*` builders).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Backend choice.
    pub backend: BackendKind,
    /// Device choice.
    pub device: Device,
    /// ONNX Runtime library (`--ort-lib`).
    pub ort_lib: Option<PathBuf>,
    /// OpenVINO C library (`--openvino-lib`).
    pub openvino_lib: Option<PathBuf>,
    /// More directories to look for `.cache/onnxruntime*/` (and `.cache/openvino/`) in, after the current directory (see
    /// `ort::locate_library`; e.g. the application's source checkout).
    pub ort_search_dirs: Vec<PathBuf>,
    /// TensorRT engine cache directory.
    pub trt_cache_dir: Option<PathBuf>,
    /// Model precision (TensorRT builder flags).
    pub precision: Option<Precision>,
    /// Threads: ONNX Runtime's intra-op pool, tract's matrix products (`None`: the backend's default, one per core).
    pub threads: Option<usize>,
    /// ONNX Runtime graph optimization level 0..=3 (`None`: 3, all).
    pub ort_opt_level: Option<u8>,
    /// Let idle ONNX Runtime intra-op threads spin (`OrtOptions::intra_op_spinning`, default off).
    pub ort_spinning: bool,
    /// ONNX Runtime CPU sessions share one arena (`OrtOptions::shared_cpu_arena`, default off; on for the two
    /// models of the patch-level step cache).
    pub ort_shared_arena: bool,
}

impl LoadOptions {
    /// Sets the backend.
    pub fn with_backend(mut self, b: BackendKind) -> Self {
        self.backend = b;
        self
    }
    /// Sets the device.
    pub fn with_device(mut self, d: Device) -> Self {
        self.device = d;
        self
    }
    /// Sets the ONNX Runtime library path.
    pub fn with_ort_lib(mut self, p: Option<PathBuf>) -> Self {
        self.ort_lib = p;
        self
    }
    /// Sets the OpenVINO C library path.
    pub fn with_openvino_lib(mut self, p: Option<PathBuf>) -> Self {
        self.openvino_lib = p;
        self
    }
    /// Adds a directory to look for `.cache/onnxruntime*/` in, after the current directory and the ones added before.
    pub fn with_ort_search_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ort_search_dirs.push(dir.into());
        self
    }
    /// Sets the model precision.
    pub fn with_precision(mut self, p: Option<Precision>) -> Self {
        self.precision = p;
        self
    }
    /// Sets the TensorRT engine cache directory.
    pub fn with_trt_cache_dir(mut self, p: Option<PathBuf>) -> Self {
        self.trt_cache_dir = p;
        self
    }

    /// The candidates to try, in order, and whether the choice was explicit (a failing explicit candidate is an
    /// error; in a fallback chain it is skipped with its reason).
    pub fn plan(&self) -> Result<(Vec<Candidate>, bool)> {
        #[cfg(feature = "ort")]
        use ort::OrtProvider as P;
        let tract_gpu = || {
            Err(RuntimeError::InvalidArgument(format!(
                "--backend tract runs on the CPU only; --device {} needs --backend ort (or auto)",
                self.device
            )))
        };
        #[allow(unreachable_code)]
        let plan = match (self.backend, self.device) {
            (BackendKind::OpenVino, Device::Auto | Device::Cpu) => (vec![Candidate::OpenVino], true),
            (BackendKind::OpenVino, _) => {
                return Err(RuntimeError::InvalidArgument(format!(
                    "--backend openvino runs on the CPU only; --device {} needs --backend ort (or auto)",
                    self.device
                )))
            }
            (BackendKind::Tract, Device::Auto | Device::Cpu) => (vec![Candidate::Tract], true),
            (BackendKind::Tract, _) => return tract_gpu(),
            #[cfg(feature = "ort")]
            (BackendKind::Ort | BackendKind::Auto, Device::TensorRt) => {
                (vec![Candidate::Ort(P::TensorRt)], true)
            }
            #[cfg(feature = "ort")]
            (BackendKind::Ort | BackendKind::Auto, Device::Cuda) => (vec![Candidate::Ort(P::Cuda)], true),
            #[cfg(feature = "ort")]
            (BackendKind::Ort, Device::Cpu) => (vec![Candidate::Ort(P::Cpu)], true),
            #[cfg(feature = "ort")]
            (BackendKind::Ort, Device::Auto) => (
                vec![
                    Candidate::Ort(P::TensorRt),
                    Candidate::Ort(P::Cuda),
                    Candidate::Ort(P::Cpu),
                ],
                false,
            ),
            #[cfg(feature = "ort")]
            (BackendKind::Auto, Device::Cpu) => (vec![Candidate::Ort(P::Cpu), Candidate::Tract], false),
            #[cfg(feature = "ort")]
            (BackendKind::Auto, Device::Auto) => (
                vec![
                    Candidate::Ort(P::TensorRt),
                    Candidate::Ort(P::Cuda),
                    Candidate::Ort(P::Cpu),
                    Candidate::Tract,
                ],
                false,
            ),
            #[cfg(not(feature = "ort"))]
            (BackendKind::Ort, _) => return Err(RuntimeError::FeatureDisabled("ort")),
            #[cfg(not(feature = "ort"))]
            (BackendKind::Auto, Device::Auto | Device::Cpu) => (vec![Candidate::Tract], false),
            #[cfg(not(feature = "ort"))]
            (BackendKind::Auto, _) => return Err(RuntimeError::FeatureDisabled("ort")),
        };
        Ok(plan)
    }
}

/// A candidate that was passed over, and why.
#[derive(Debug, Clone)]
pub struct Skipped {
    /// What was tried.
    pub candidate: Candidate,
    /// Why it was not used.
    pub reason: String,
}

/// The outcome of [`load`].
pub struct Selection {
    /// The loaded backend.
    pub backend: Box<dyn Backend>,
    /// The candidate that loaded.
    pub candidate: Candidate,
    /// Candidates passed over before it, with reasons.
    pub skipped: Vec<Skipped>,
}

/// The paths probed for an NVIDIA GPU: `$PIXELDIT_NVIDIA_DEVICE` (default `/dev/nvidia0`) and
/// `$PIXELDIT_NVIDIA_PROC` (default `/proc/driver/nvidia/version`); `scripts/setup.sh` probes the same ones.
pub fn nvidia_probe_paths() -> [PathBuf; 2] {
    let var = |name: &str, default: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(default))
    };
    [
        var("PIXELDIT_NVIDIA_DEVICE", "/dev/nvidia0"),
        var("PIXELDIT_NVIDIA_PROC", "/proc/driver/nvidia/version"),
    ]
}

/// Whether an NVIDIA GPU is visible to this process (device node or the driver's proc file, see
/// [`nvidia_probe_paths`]).
pub fn nvidia_gpu_present() -> bool {
    nvidia_probe_paths().iter().any(|p| p.exists())
}

/// Loads one candidate. In `probe` mode (fallback chains) GPU providers are skipped without trying when the
/// library lacks them or no GPU is visible.
#[cfg_attr(not(all(feature = "ort", feature = "tract")), allow(unused_variables))]
pub fn load_candidate(
    path: &Path,
    c: Candidate,
    opts: &LoadOptions,
    probe: bool,
) -> Result<Box<dyn Backend>> {
    match c {
        #[cfg(feature = "ort")]
        Candidate::Ort(provider) => {
            if provider != ort::OrtProvider::Cpu {
                // An explicit GPU request without a usable library names the provider in its error.
                if let Err(e) = ort::environment(opts.ort_lib.as_deref(), &opts.ort_search_dirs) {
                    return Err(match e {
                        RuntimeError::OrtLibraryNotFound { .. } | RuntimeError::OrtLoad { .. } if !probe => {
                            RuntimeError::ProviderUnavailable {
                                provider: provider.ep_name().into(),
                                reason: "the ONNX Runtime library is not usable".into(),
                                source: Some(Box::new(e)),
                            }
                        }
                        e => e,
                    });
                }
            }
            if provider != ort::OrtProvider::Cpu && probe {
                if !ort::provider_compiled_in(provider)? {
                    return Err(RuntimeError::ProviderUnavailable {
                        provider: provider.ep_name().into(),
                        reason: "the ONNX Runtime library was built without it".into(),
                        source: None,
                    });
                }
                if !nvidia_gpu_present() {
                    return Err(RuntimeError::ProviderUnavailable {
                        provider: provider.ep_name().into(),
                        reason: {
                            let [dev, proc] = nvidia_probe_paths();
                            format!(
                                "no NVIDIA GPU found ({} and {} missing)",
                                dev.display(),
                                proc.display()
                            )
                        },
                        source: None,
                    });
                }
            }
            let o = ort::OrtOptions::from_load_options(provider, opts);
            Ok(Box::new(ort::OrtBackend::with_options(path, &o)?))
        }
        Candidate::OpenVino => {
            #[cfg(feature = "openvino")]
            {
                let o = openvino::OpenVinoOptions {
                    library: opts.openvino_lib.clone(),
                    search_dirs: opts.ort_search_dirs.clone(),
                    threads: opts.threads,
                };
                Ok(Box::new(openvino::OpenVinoBackend::open(path, &o)?))
            }
            #[cfg(not(feature = "openvino"))]
            {
                Err(RuntimeError::FeatureDisabled("openvino"))
            }
        }
        Candidate::Tract => {
            #[cfg(feature = "tract")]
            {
                Ok(Box::new(tract::TractBackend::open_with_threads(
                    path,
                    opts.threads,
                )?))
            }
            #[cfg(not(feature = "tract"))]
            {
                Err(RuntimeError::FeatureDisabled("tract"))
            }
        }
    }
}

/// Loads `path` with the first candidate of `opts.plan()` that works. With an explicit choice its error is
/// returned as is; in a fallback chain each failure is recorded in [`Selection::skipped`].
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Selection> {
    // File-level problems are errors whatever the backend.
    ModelInfo::read(path)?;
    let (candidates, explicit) = opts.plan()?;
    let mut skipped = Vec::new();
    for c in candidates {
        match load_candidate(path, c, opts, !explicit) {
            Ok(backend) => {
                return Ok(Selection {
                    backend,
                    candidate: c,
                    skipped,
                })
            }
            Err(e) if explicit => return Err(e),
            Err(e) => skipped.push(Skipped {
                candidate: c,
                reason: short_reason(&e),
            }),
        }
    }
    Err(RuntimeError::NoBackend {
        path: path.to_path_buf(),
        attempts: skipped
            .iter()
            .map(|s| format!("  {}: {}", s.candidate, s.reason))
            .collect::<Vec<_>>()
            .join("\n"),
    })
}

/// A one-line reason for a skipped candidate (the error with its causes).
pub fn short_reason(e: &RuntimeError) -> String {
    let s = match e {
        RuntimeError::ProviderUnavailable {
            reason, source: None, ..
        } => reason.clone(),
        RuntimeError::ProviderUnavailable {
            source: Some(source), ..
        } => source.chain(),
        e => e.chain(),
    };
    s.lines().next().unwrap_or_default().to_string()
}

/// Groups consecutive skips with the same reason: `("ort/A, ort/B", reason)`.
pub fn grouped_skips(skipped: &[Skipped]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for s in skipped {
        match out.last_mut() {
            Some((names, reason)) if *reason == s.reason => {
                names.push_str(", ");
                names.push_str(&s.candidate.to_string());
            }
            _ => out.push((s.candidate.to_string(), s.reason.clone())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans() {
        let o = |b: BackendKind, d: Device| LoadOptions::default().with_backend(b).with_device(d);
        let (c, explicit) = o(BackendKind::Auto, Device::Auto).plan().unwrap();
        assert!(!explicit);
        assert_eq!(c.last(), Some(&Candidate::Tract));
        #[cfg(feature = "ort")]
        {
            assert_eq!(c.len(), 4);
            assert_eq!(c[0].to_string(), "ort/TensorrtExecutionProvider");
            let (c, explicit) = o(BackendKind::Auto, Device::Cuda).plan().unwrap();
            assert!(explicit);
            assert_eq!(c, vec![Candidate::Ort(ort::OrtProvider::Cuda)]);
        }
        assert!(o(BackendKind::Tract, Device::Cuda).plan().is_err());
        assert_eq!(
            o(BackendKind::Tract, Device::Cpu).plan().unwrap(),
            (vec![Candidate::Tract], true)
        );
        assert_eq!("tensorrt".parse::<Device>().unwrap(), Device::TensorRt);
        assert!("gpu".parse::<Device>().is_err());
        assert_eq!(
            o(BackendKind::OpenVino, Device::Auto).plan().unwrap(),
            (vec![Candidate::OpenVino], true)
        );
        assert!(o(BackendKind::OpenVino, Device::Cuda).plan().is_err());
        assert_eq!("openvino".parse::<BackendKind>().unwrap(), BackendKind::OpenVino);
    }
}

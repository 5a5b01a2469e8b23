//! ONNX Runtime backend (`ort` 2.0.0-rc.15, `load-dynamic`): CPU, CUDA and TensorRT execution providers, plus the
//! `pixeldit.RotaryAttention` custom op.
//!
//! The shared library is never loaded implicitly (that would panic when it is missing): [`locate_library`] finds
//! it, [`environment`] loads it once per process with `ort::init_from`, and every other `ort` call happens only
//! after that succeeded.

use super::Backend;
use crate::error::{Result, RuntimeError};
use crate::model::ModelInfo;
use crate::ops::CustomOp;
use crate::tensor::{self, Feed};
use ndarray::{ArrayD, IxDyn};
use ort::environment::Environment;
use ort::ep::{self, ExecutionProvider};
use ort::logging::LogLevel;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use pixeldit_spec::Precision;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// File name of the ONNX Runtime library this crate is built against (`api-31`).
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";
/// Directory under `.cache/` holding the GPU build (onnxruntime-gpu) of the library.
pub const GPU_LIBRARY_DIR: &str = "onnxruntime-gpu";

/// Which execution provider a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrtProvider {
    /// `CPUExecutionProvider`.
    Cpu,
    /// `CUDAExecutionProvider` (CPU fallback for nodes it cannot run, e.g. the custom op).
    Cuda,
    /// `TensorrtExecutionProvider`, then CUDA, then CPU for what TensorRT cannot take.
    TensorRt,
}

impl OrtProvider {
    /// ONNX Runtime's name of the provider.
    pub fn ep_name(&self) -> &'static str {
        match self {
            OrtProvider::Cpu => "CPUExecutionProvider",
            OrtProvider::Cuda => "CUDAExecutionProvider",
            OrtProvider::TensorRt => "TensorrtExecutionProvider",
        }
    }
}

/// Options of [`OrtBackend::load`].
#[derive(Debug, Clone)]
pub struct OrtOptions {
    /// Provider to use; an explicit provider that fails to register is an error (`error_on_failure`).
    pub provider: OrtProvider,
    /// Explicit library path (overrides `ORT_DYLIB_PATH` and the default locations).
    pub library: Option<PathBuf>,
    /// More directories to look for `.cache/onnxruntime*/` in, after the current directory ([`locate_library`]).
    pub library_search_dirs: Vec<PathBuf>,
    /// TensorRT engine cache directory (default: `<model dir>/.trt-cache`).
    pub trt_cache_dir: Option<PathBuf>,
    /// Precision of the model (from its metadata): sets the TensorRT fp16 / bf16 / int8 builder flags.
    pub precision: Option<Precision>,
    /// Intra-op threads (default: ONNX Runtime's choice).
    pub threads: Option<usize>,
    /// Graph optimization level 0 (off), 1 (basic), 2 (extended) or 3 (all, default). On CPUs without AVX-VNNI,
    /// level 2+ fuses INT8 Q/DQ MatMuls into a u8s8 kernel that can saturate; use 1 to compare int8 variants.
    pub opt_level: u8,
    /// Let idle intra-op worker threads spin (`session.intra_op.allow_spinning`). Off by default: on a shared or
    /// small CPU the spinning workers take cycles from the GEMMs (B-256 batch 2 on a loaded 2-core box: 3757 ms
    /// with spinning, 2626 ms without); on an idle one spinning gains ~4% (see BENCHMARKS.md).
    pub intra_op_spinning: bool,
    /// CUDA device index.
    pub device_id: i32,
    /// Record how many nodes ONNX Runtime placed on each provider (its verbose placement log, captured by a session
    /// logger that passes warnings and errors on to stderr) and report it in [`Backend::notes`]. On for CUDA and
    /// TensorRT by [`OrtOptions::from_load_options`].
    pub report_placement: bool,
    /// CPU sessions allocate from one arena registered in the process's environment (`session.use_env_allocators`)
    /// instead of each growing its own: sessions that run one after the other (the patch-level step cache's whole
    /// model and pixel level) then reuse memory the other already touched, so the second one's first run does not
    /// pay for growing and first-touching its own buffers again.
    pub shared_cpu_arena: bool,
}

impl OrtOptions {
    /// The ONNX Runtime part of generic [`super::LoadOptions`], for one provider.
    pub fn from_load_options(provider: OrtProvider, o: &super::LoadOptions) -> Self {
        OrtOptions {
            provider,
            library: o.ort_lib.clone(),
            library_search_dirs: o.ort_search_dirs.clone(),
            trt_cache_dir: o.trt_cache_dir.clone(),
            precision: o.precision,
            threads: o.threads,
            opt_level: o.ort_opt_level.unwrap_or(3),
            intra_op_spinning: o.ort_spinning,
            device_id: 0,
            report_placement: provider != OrtProvider::Cpu,
            shared_cpu_arena: o.ort_shared_arena,
        }
    }
}

impl Default for OrtOptions {
    fn default() -> Self {
        OrtOptions {
            provider: OrtProvider::Cpu,
            library: None,
            library_search_dirs: Vec::new(),
            trt_cache_dir: None,
            precision: None,
            threads: None,
            opt_level: 3,
            intra_op_spinning: false,
            device_id: 0,
            report_placement: false,
            shared_cpu_arena: false,
        }
    }
}

/// Finds the ONNX Runtime library: `explicit` (the `--ort-lib` flag), then `ORT_DYLIB_PATH`, then
/// `.cache/onnxruntime/libonnxruntime.so.1.31.1` under the current directory and then under each of `search_dirs`
/// (the caller's choice, e.g. an application's source checkout); when an NVIDIA GPU is present
/// ([`super::nvidia_gpu_present`]) the GPU build in `.cache/onnxruntime-gpu/` (written by `scripts/setup.sh`) comes
/// before it in each place. An explicit path or `ORT_DYLIB_PATH` that does not exist is an error (no search
/// continues past it).
pub fn locate_library(explicit: Option<&Path>, search_dirs: &[PathBuf]) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(RuntimeError::OrtLibraryNotFound {
                tried: format!("--ort-lib {} does not exist", p.display()),
            })
        };
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RuntimeError::OrtLibraryNotFound {
                tried: format!("ORT_DYLIB_PATH={} does not exist", p.display()),
            })
        };
    }
    let mut rels = vec![Path::new(".cache").join("onnxruntime").join(LIBRARY_FILE)];
    if super::nvidia_gpu_present() {
        rels.insert(0, Path::new(".cache").join(GPU_LIBRARY_DIR).join(LIBRARY_FILE));
    }
    let mut tried = Vec::new();
    let bases = std::env::current_dir()
        .ok()
        .into_iter()
        .chain(search_dirs.iter().cloned());
    for base in bases {
        for rel in &rels {
            let p = base.join(rel);
            if p.is_file() {
                return Ok(p.canonicalize().unwrap_or(p));
            }
            tried.push(p.display().to_string());
        }
    }
    Err(RuntimeError::OrtLibraryNotFound {
        tried: format!(
            "no --ort-lib, ORT_DYLIB_PATH unset, not at {}",
            tried.join(" or ")
        ),
    })
}

struct LoadedEnv {
    env: Environment,
    library: PathBuf,
}

static ENV: Mutex<Option<LoadedEnv>> = Mutex::new(None);

/// Loads the library found by [`locate_library`] (once per process) and returns the environment and the path it
/// was loaded from. A second call with another path reuses the first library: a process can hold only one.
pub fn environment(library: Option<&Path>, search_dirs: &[PathBuf]) -> Result<(Environment, PathBuf)> {
    let mut guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = guard.as_ref() {
        return Ok((l.env.clone(), l.library.clone()));
    }
    let path = locate_library(library, search_dirs)?;
    // Keep the LoadDynamicError as is: turning it into an ort::Error would call into the missing library.
    let builder = ort::init_from(&path).map_err(|e| RuntimeError::OrtLoad { source: e.into() })?;
    let env = builder
        .with_name("pixeldit")
        .build()
        .map_err(|e| RuntimeError::Ort {
            provider: "environment".into(),
            source: e.into(),
        })?;
    *guard = Some(LoadedEnv {
        env: env.clone(),
        library: path.clone(),
    });
    Ok((env, path))
}

/// Set once the shared CPU arena of [`OrtOptions::shared_cpu_arena`] is registered in the environment.
static SHARED_ARENA: Mutex<bool> = Mutex::new(false);

/// Registers one CPU arena allocator in `env` (once per process), which sessions built with
/// `with_env_allocators` share.
fn register_shared_cpu_arena(env: &Environment) -> std::result::Result<(), ort::Error> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    let mut done = SHARED_ARENA.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    let mem = MemoryInfo::new(
        AllocationDevice::CPU,
        0,
        AllocatorType::Arena,
        MemoryType::Default,
    )?;
    // SAFETY: both pointers come from live ort objects; a null arena config selects ONNX Runtime's defaults; the
    // returned status is owned and released by `result_from_status`.
    let status =
        unsafe { (ort::api().CreateAndRegisterAllocator)(env.ptr().cast_mut(), mem.ptr(), std::ptr::null()) };
    // SAFETY: `status` was just returned by the C API.
    unsafe { ort::Error::result_from_status(status) }?;
    *done = true;
    Ok(())
}

/// Whether the loaded library was compiled with the provider (`Ok(false)` for the CPU-only wheel). Needs a
/// successful [`environment`] first.
pub fn provider_compiled_in(provider: OrtProvider) -> Result<bool> {
    let r = match provider {
        OrtProvider::Cpu => return Ok(true),
        OrtProvider::Cuda => <ep::CUDA as ExecutionProvider>::is_available(),
        OrtProvider::TensorRt => <ep::TensorRT as ExecutionProvider>::is_available(),
    };
    r.map_err(|e| RuntimeError::Ort {
        provider: provider.ep_name().into(),
        source: e.into(),
    })
}

/// Set once a session with the `pixeldit` custom-op domain exists, so ONNX Runtime has registered the domain.
static DOMAIN_REGISTERED: AtomicBool = AtomicBool::new(false);
/// Serializes session creation until [`DOMAIN_REGISTERED`] is set.
static SESSION_CREATION: Mutex<()> = Mutex::new(());

/// A loaded ONNX Runtime session.
pub struct OrtBackend {
    session: Session,
    provider: OrtProvider,
    library: PathBuf,
    /// [`placement_summary`] of the session, when [`OrtOptions::report_placement`] was set.
    placement: Option<String>,
    /// The graph's input names, in order (checked against every forward's feeds).
    inputs: Vec<String>,
}

fn ort_err(
    provider: OrtProvider,
) -> impl Fn(ort::Error<ort::session::builder::SessionBuilder>) -> RuntimeError {
    // The error holds the builder to recover; keep its code and message (errors of the C API have no cause).
    move |e| RuntimeError::Ort {
        provider: provider.ep_name().into(),
        source: ort::Error::new_with_code(e.code(), e.message()).into(),
    }
}

impl OrtBackend {
    /// Loads `path` with the provider of `opts`. Custom ops of domain `pixeldit` other than `RotaryAttention`
    /// are reported as [`RuntimeError::UnsupportedOp`] before ONNX Runtime sees the model.
    pub fn with_options(path: &Path, opts: &OrtOptions) -> Result<Self> {
        let info = ModelInfo::read(path)?;
        check_ops(&info)?;
        let (env, library) = environment(opts.library.as_deref(), &opts.library_search_dirs)?;
        let provider = opts.provider;
        let e = ort_err(provider);
        let simple = |e: ort::Error| RuntimeError::Ort {
            provider: provider.ep_name().into(),
            source: e.into(),
        };
        if !provider_compiled_in(provider)? {
            return Err(RuntimeError::ProviderUnavailable {
                provider: provider.ep_name().into(),
                reason: format!(
                    "the ONNX Runtime library {} was built without it (use the onnxruntime-gpu 1.31.1 library)",
                    library.display()
                ),
                source: None,
            });
        }
        let domain = crate::ops::ort::domain().map_err(simple)?;
        let mut builder = Session::builder(&env)
            .map_err(simple)?
            .with_optimization_level(match opts.opt_level {
                0 => GraphOptimizationLevel::Disable,
                1 => GraphOptimizationLevel::Level1,
                2 => GraphOptimizationLevel::Level2,
                _ => GraphOptimizationLevel::All,
            })
            .map_err(&e)?
            .with_operators(domain)
            .map_err(&e)?;
        if let Some(n) = opts.threads {
            builder = builder.with_intra_threads(n).map_err(&e)?;
        }
        builder = builder
            .with_intra_op_spinning(opts.intra_op_spinning)
            .map_err(&e)?;
        if opts.shared_cpu_arena && provider == OrtProvider::Cpu {
            register_shared_cpu_arena(&env).map_err(simple)?;
            builder = builder.with_env_allocators().map_err(&e)?;
        }
        // Developer switch: ONNX Runtime's per-node profiler (tools/bench/ort_profile.py --json reads the file).
        if let Some(prefix) = std::env::var_os("PIXELDIT_ORT_PROFILE") {
            builder = builder.with_profiling(prefix).map_err(&e)?;
        }
        let placement_lines = Arc::new(Mutex::new(Vec::new()));
        if opts.report_placement {
            builder = builder
                .with_logger(placement_logger(placement_lines.clone()))
                .map_err(&e)?
                .with_log_level(LogLevel::Verbose)
                .map_err(&e)?;
        }
        // FLOAT8 Q/DQ (fp8 variants): the QDQ propagation pass moves float8 Q/DQ across Reshape/Transpose, which
        // have no float8 kernels ("Failed to find kernel for Reshape(19)"); float8 Q/DQ is never fused on these
        // providers anyway.
        // The QDQ fusions also turn float8 Q/DQ + Gemm into com.microsoft.QGemm, which only takes (u)int8 ("Type
        // 'tensor(float8e4m3fn)' of input parameter ... of operator (QGemm) ... is invalid"): off for FLOAT8 models.
        if info.initializer_types.iter().any(|(_, t)| {
            crate::lowp::LowFloat::from_onnx(*t).is_some_and(|f| f != crate::lowp::LowFloat::Bf16)
        }) {
            builder = builder
                .with_disabled_optimizers("QDQPropagationTransformer")
                .map_err(&e)?
                .with_config_entry("session.disable_quant_qdq", "1")
                .map_err(&e)?;
        }
        let eps = match provider {
            OrtProvider::Cpu => vec![],
            OrtProvider::Cuda => vec![cuda(opts).error_on_failure()],
            OrtProvider::TensorRt => vec![
                tensorrt(path, &info, opts).error_on_failure(),
                cuda(opts).error_on_failure(),
            ],
        };
        if !eps.is_empty() {
            // The providers dlopen CUDA/TensorRT by name: load the pip wheels' copies by path first.
            let preloaded = super::gpu_libs::preload_once(&library);
            builder =
                builder
                    .with_execution_providers(eps)
                    .map_err(|err| RuntimeError::ProviderUnavailable {
                        provider: provider.ep_name().into(),
                        reason: provider_failure(&err.to_string(), preloaded),
                        source: None,
                    })?;
        }
        let session = {
            // ONNX Runtime adds a custom-op domain to a process-wide map (ONNX's DomainToVersionRange) while it
            // builds the session, with a check-then-insert that is not thread-safe: two sessions created at once
            // with domain `pixeldit` can fail with "the domain is already exist". Session creation is serialized
            // until one has registered the domain.
            let _registering = if DOMAIN_REGISTERED.load(Ordering::Acquire) {
                None
            } else {
                Some(SESSION_CREATION.lock().unwrap_or_else(|p| p.into_inner()))
            };
            let session = builder.commit_from_file(path).map_err(simple)?;
            DOMAIN_REGISTERED.store(true, Ordering::Release);
            session
        };
        let placement = opts.report_placement.then(|| {
            let lines = placement_lines.lock().unwrap_or_else(|p| p.into_inner());
            placement_summary(&lines).unwrap_or_else(|| "no node placement was logged".into())
        });
        let inputs = session.inputs().iter().map(|i| i.name().to_string()).collect();
        Ok(OrtBackend {
            session,
            provider,
            library,
            placement,
            inputs,
        })
    }

    /// The library the session runs on.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Maps an ONNX Runtime error to [`RuntimeError::Ort`] naming this session's execution provider.
    fn ort_err(&self) -> impl Fn(ort::Error) -> RuntimeError + Copy {
        let provider = self.provider;
        move |e: ort::Error| RuntimeError::Ort {
            provider: provider.ep_name().into(),
            source: e.into(),
        }
    }
}

/// A session logger that keeps ONNX Runtime's node-placement lines (logged at verbose level when the session is
/// created) in `sink` and passes warnings and errors on to stderr, as ONNX Runtime's default logger would.
fn placement_logger(sink: Arc<Mutex<Vec<String>>>) -> ort::logging::LoggerFunction {
    Arc::new(move |level, _category, _id, location, message| {
        if message.contains("placed on [") {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(message.trim().to_string());
        } else if level >= LogLevel::Warning {
            eprintln!("[{level:?}:onnxruntime {location}] {message}");
        }
    })
}

/// `nodes per provider: TensorrtExecutionProvider 812, CPUExecutionProvider 12` from ONNX Runtime's placement lines
/// (`All nodes placed on [X]. Number of nodes: N` or one `Node(s) placed on [X]. Number of nodes: N` per provider);
/// `None` when there are none.
pub fn placement_summary(lines: &[String]) -> Option<String> {
    let parts: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let ep = l.split_once('[')?.1.split_once(']')?.0;
            let n: usize = l.rsplit_once("Number of nodes:")?.1.trim().parse().ok()?;
            Some(format!("{ep} {n}"))
        })
        .collect();
    (!parts.is_empty()).then(|| format!("nodes per provider: {}", parts.join(", ")))
}

/// The reason of a failed CUDA/TensorRT registration: ONNX Runtime's message (it names the library that did not
/// load), what was preloaded from pip wheels, and whether a GPU is visible at all.
fn provider_failure(ort_message: &str, preloaded: &super::gpu_libs::Preloaded) -> String {
    let mut reason = format!("{ort_message} ({})", preloaded.summary());
    if !super::nvidia_gpu_present() {
        let [dev, proc] = super::nvidia_probe_paths();
        reason.push_str(&format!(
            "; no NVIDIA GPU found ({} and {} missing)",
            dev.display(),
            proc.display()
        ));
    }
    reason
}

/// A borrowed ONNX Runtime tensor over a contiguous slice (independent of the ndarray version `ort` uses).
fn tensor_ref<'a, T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
    shape: &[usize],
    data: &'a [T],
) -> ort::Result<TensorRef<'a, T>> {
    TensorRef::from_array_view((shape.iter().map(|&d| d as i64).collect::<Vec<i64>>(), data))
}

fn cuda(opts: &OrtOptions) -> ort::ep::ExecutionProviderDispatch {
    ep::CUDA::default().with_device_id(opts.device_id).build()
}

/// The subdirectory of the TensorRT cache for one model: `<weights_sha256[..16]>-<precision>-<attention>-<H>x<W>`
/// from the PixelDiT metadata (`<file stem>-<size in bytes>-<precision>` without it), so engines and timing caches
/// of different weights, precisions or image shapes never share a directory. The batch size is a dynamic input
/// dimension and not part of the key.
pub fn trt_cache_key(info: &ModelInfo, precision: Option<Precision>) -> String {
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    match info.pixeldit_metadata() {
        Ok(m) => {
            // A dynamic-size model's engine is built for its profile: the key names the range and opt size.
            let size = match &m.dynamic {
                Some(d) => format!(
                    "dyn{}-{}-opt{}x{}-b{TRT_PROFILE_MAX_BATCH}",
                    d.min, d.max, d.opt[0], d.opt[1]
                ),
                None => format!("{}x{}", m.height, m.width),
            };
            format!(
                "{}-{}-{}-{size}",
                safe(&m.weights_sha256.chars().take(16).collect::<String>()),
                precision.unwrap_or(m.precision),
                m.attention,
            )
        }
        Err(_) => {
            let stem = info
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let size = std::fs::metadata(&info.path).map(|m| m.len()).unwrap_or(0);
            let p = precision
                .map(|p| p.to_string())
                .unwrap_or_else(|| "unknown".into());
            format!("{}-{size}-{p}", safe(&stem))
        }
    }
}

/// The largest batch of the TensorRT profile of a dynamic-size model (opt: 2, one CFG pair).
pub const TRT_PROFILE_MAX_BATCH: usize = 16;

/// The explicit TensorRT optimization profile `(min, opt, max)` of a dynamic-size model, in the EP's
/// `name:d0xd1,..` syntax for every input with a dynamic axis: batch 1 / 2 / [`TRT_PROFILE_MAX_BATCH`], image
/// min x min / opt / max x max from the metadata, so that the engine is built once for the whole range (without
/// it the EP rebuilds the engine whenever a shape leaves the range seen so far). `None` for static-size models.
pub fn trt_profile(meta: &pixeldit_spec::ModelMetadata) -> Option<(String, String, String)> {
    let d = meta.dynamic.as_ref()?;
    let (inputs, _) = pixeldit_spec::io::model_io(&meta.config, meta.height, meta.width);
    let shapes = |batch: usize, h: usize, w: usize| {
        inputs
            .iter()
            .map(|t| {
                let dims: Vec<String> = t
                    .dims
                    .iter()
                    .enumerate()
                    .map(|(axis, &n)| match (axis, t.dims.len()) {
                        (0, _) if n < 0 => batch.to_string(),
                        (2, 4) => h.to_string(),
                        (3, 4) => w.to_string(),
                        _ => n.to_string(),
                    })
                    .collect();
                format!("{}:{}", t.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    Some((
        shapes(1, d.min, d.min),
        shapes(2, d.opt[0], d.opt[1]),
        shapes(TRT_PROFILE_MAX_BATCH, d.max, d.max),
    ))
}

fn tensorrt(model: &Path, info: &ModelInfo, opts: &OrtOptions) -> ort::ep::ExecutionProviderDispatch {
    let base = opts.trt_cache_dir.clone().unwrap_or_else(|| {
        model
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(".trt-cache")
    });
    let cache = base.join(trt_cache_key(info, opts.precision));
    let p = opts.precision;
    let low = matches!(
        p,
        Some(Precision::Fp16 | Precision::Int8 | Precision::Fp8 | Precision::Fp8Weights)
    );
    // TensorRT reads Q/DQ nodes as explicit quantization; int8 Q/DQ still needs the INT8 builder flag. FP8 Q/DQ
    // has no ONNX Runtime provider option (1.31): TensorRT builds it from the FLOAT8 Q/DQ types, with fp16 allowed
    // for the layers around it.
    let trt = ep::TensorRT::default()
        .with_device_id(opts.device_id)
        .with_engine_cache(true)
        .with_engine_cache_path(cache.display().to_string())
        .with_timing_cache(true)
        .with_timing_cache_path(cache.display().to_string())
        .with_fp16(low)
        .with_bf16(p == Some(Precision::Bf16))
        .with_int8(matches!(p, Some(Precision::Int8 | Precision::Int8Weights)));
    match info.pixeldit_metadata().ok().as_ref().and_then(trt_profile) {
        Some((min, opt, max)) => trt
            .with_profile_min_shapes(min)
            .with_profile_opt_shapes(opt)
            .with_profile_max_shapes(max)
            .build(),
        None => trt.build(),
    }
}

/// Rejects nodes of the `pixeldit` domain that have no kernel here.
fn check_ops(info: &ModelInfo) -> Result<()> {
    for n in info.custom_nodes() {
        if CustomOp::from_node(&n.domain, &n.op_type).is_some() {
            continue;
        }
        return Err(RuntimeError::UnsupportedOp {
            backend: "ort",
            op: n.op_type.clone(),
            domain: n.domain.clone(),
            node: n.name.clone(),
        });
    }
    Ok(())
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn provider(&self) -> String {
        self.provider.ep_name().to_string()
    }

    fn notes(&self) -> Vec<String> {
        self.placement.iter().cloned().collect()
    }

    fn input_names(&self) -> Vec<String> {
        self.inputs.clone()
    }

    fn output_names(&self) -> Vec<String> {
        self.session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect()
    }

    fn run(&mut self, inputs: &[Feed<'_, '_>], outputs: &[&str]) -> Result<Vec<ArrayD<f32>>> {
        let err = self.ort_err();
        super::check_feeds(&self.inputs, inputs)?;
        let contiguous: Vec<(&str, Contiguous)> = inputs
            .iter()
            .map(|(name, t)| {
                let c = match t {
                    tensor::TensorRef::F32(a) => Contiguous::F32(a.as_standard_layout()),
                    tensor::TensorRef::I64(a) => Contiguous::I64(a.as_standard_layout()),
                };
                (*name, c)
            })
            .collect();
        let mut values: Vec<(&str, ort::session::SessionInputValue)> = Vec::with_capacity(contiguous.len());
        for (name, c) in &contiguous {
            let v = match c {
                Contiguous::F32(a) => tensor_ref(a.shape(), a.as_slice().expect("standard layout"))
                    .map_err(err)?
                    .into(),
                Contiguous::I64(a) => tensor_ref(a.shape(), a.as_slice().expect("standard layout"))
                    .map_err(err)?
                    .into(),
            };
            values.push((name, v));
        }
        let result = self.session.run(values).map_err(err)?;
        outputs
            .iter()
            .map(|name| {
                let (shape, data) = result
                    .get(name)
                    .ok_or_else(|| RuntimeError::Shape(format!("the model has no output named '{name}'")))?
                    .try_extract_tensor::<f32>()
                    .map_err(err)?;
                let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                ArrayD::from_shape_vec(IxDyn(&dims), data.to_vec()).map_err(|source| {
                    RuntimeError::ArrayShape {
                        what: format!("ONNX Runtime output '{name}' of shape {dims:?}"),
                        source,
                    }
                })
            })
            .collect()
    }
}

/// An input in standard layout, borrowed when it already is.
enum Contiguous<'a> {
    F32(ndarray::CowArray<'a, f32, IxDyn>),
    I64(ndarray::CowArray<'a, i64, IxDyn>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_summary_counts_nodes_per_provider() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            placement_summary(&lines(&[
                "All nodes placed on [CPUExecutionProvider]. Number of nodes: 6"
            ])),
            Some("nodes per provider: CPUExecutionProvider 6".into())
        );
        assert_eq!(
            placement_summary(&lines(&[
                "Node(s) placed on [TensorrtExecutionProvider]. Number of nodes: 812",
                "Node(s) placed on [CPUExecutionProvider]. Number of nodes: 12",
            ])),
            Some("nodes per provider: TensorrtExecutionProvider 812, CPUExecutionProvider 12".into())
        );
        assert_eq!(placement_summary(&lines(&["Node placements"])), None);
    }

    #[test]
    fn trt_cache_key_separates_weights_precision_and_shape() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let info = ModelInfo::read(&fixtures.join("dummy_tiny.onnx")).unwrap();
        let meta = info.pixeldit_metadata().unwrap();
        let sha: String = meta.weights_sha256.chars().take(16).collect();
        assert_eq!(
            trt_cache_key(&info, None),
            format!(
                "{sha}-{}-{}-{}x{}",
                meta.precision, meta.attention, meta.height, meta.width
            )
        );
        assert_ne!(
            trt_cache_key(&info, Some(Precision::Fp16)),
            trt_cache_key(&info, Some(Precision::Int8))
        );
        let mut other_weights = info.clone();
        for (k, v) in other_weights.metadata_props.iter_mut() {
            if *v == info.metadata_prop(k).unwrap() && v.contains(&meta.weights_sha256) {
                *v = v.replace(&meta.weights_sha256, &"f".repeat(64));
            }
        }
        assert_ne!(trt_cache_key(&other_weights, None), trt_cache_key(&info, None));
        let nometa = ModelInfo::read(&fixtures.join("dummy_nometa.onnx")).unwrap();
        let key = trt_cache_key(&nometa, Some(Precision::Fp32));
        assert!(
            key.starts_with("dummy_nometa-") && key.ends_with("-fp32"),
            "{key}"
        );
        // A dynamic-size model: the profile is part of the key.
        let mut dynamic = info.clone();
        let mut m = meta.clone();
        m.dynamic = Some(pixeldit_spec::DynamicSize::for_config(&m.config));
        for (k, v) in dynamic.metadata_props.iter_mut() {
            if k == pixeldit_spec::META_KEY {
                *v = m.to_json();
            }
        }
        let d = m.dynamic.as_ref().unwrap();
        assert!(
            trt_cache_key(&dynamic, None).ends_with(&format!(
                "-dyn{}-{}-opt{}x{}-b{TRT_PROFILE_MAX_BATCH}",
                d.min, d.max, d.opt[0], d.opt[1]
            )),
            "{}",
            trt_cache_key(&dynamic, None)
        );
    }

    #[test]
    fn trt_profile_of_a_dynamic_model_covers_its_range() {
        let mut m: pixeldit_spec::ModelMetadata = serde_json::from_value(serde_json::json!({
            "format_version": pixeldit_spec::META_FORMAT_VERSION,
            "config": pixeldit_spec::ModelConfig::preset("digits").unwrap(),
            "height": 32, "width": 48, "precision": "fp32", "attention": "decomposed",
            "sampler": pixeldit_spec::ModelConfig::preset("digits").unwrap().sampler,
            "weights_sha256": "", "weights_source": "", "exporter_version": "",
        }))
        .unwrap();
        assert_eq!(trt_profile(&m), None, "static models keep the implicit profile");
        let mut d = pixeldit_spec::DynamicSize::for_config(&m.config);
        d.opt = [32, 48];
        m.dynamic = Some(d);
        let (min, opt, max) = trt_profile(&m).unwrap();
        assert_eq!(min, "x:1x3x16x16,t:1,y:1");
        assert_eq!(opt, "x:2x3x32x48,t:2,y:2");
        let b = TRT_PROFILE_MAX_BATCH;
        assert_eq!(max, format!("x:{b}x3x64x64,t:{b},y:{b}"));
    }
}

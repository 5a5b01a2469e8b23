//! Triton model repositories: the layout written for an exported model, and the checks Triton's protobuf schema
//! does not make.
//!
//! ```text
//! <repo>/<name>/config.pbtxt        generated from pixeldit_spec::io (never typed by hand)
//! <repo>/<name>/1/model.onnx        platform onnxruntime_onnx (+ model.onnx.data with external weights)
//! <repo>/<name>/model.onnx          platform tensorrt_plan: the ONNX to build 1/model.plan from on the target
//! <repo>/<name>/README.txt          GPU (trtexec command in README.txt); 1/ is created empty
//! ```
//!
//! [`validate_model_dir`] reads `config.pbtxt` with Triton's schema ([`crate::pbtxt::parse`]) and checks platform
//! names, dims present and positive (batch only through `max_batch_size`), dims equal to the I/O contract of the
//! exported size (from the metadata in the config's parameters), batching settings against `max_batch_size`,
//! numeric version folders with the model file, and the model name equal to its directory.

use crate::config::{
    config_text, data_type, default_model_name, expected_dims, model_config, pixel_model_config, split_io,
    trtexec_command, Platform, TritonOptions, CONFIG_FILE, DENOISER_KEY, MODEL_PY_FILE, ONNX_FILE,
    PIXEL_LEVEL_PARAM, PLAN_FILE, README_FILE, VERSION,
};
use crate::error::{Result, TritonError};
use crate::pb::inference::model_config::SchedulingChoice;
use crate::pb::inference::model_instance_group::Kind;
use crate::pb::inference::{DataType, ModelConfig, ModelTensorReshape};
use pixeldit_runtime::io::write_atomic;
use pixeldit_spec::{ModelMetadata, META_KEY};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Platforms Triton knows (`platform:` values); pixeldit writes the first two.
pub const KNOWN_PLATFORMS: &[&str] = &[
    "onnxruntime_onnx",
    "tensorrt_plan",
    "pytorch_libtorch",
    "tensorflow_graphdef",
    "tensorflow_savedmodel",
    "ensemble",
];

/// Where the exported ONNX goes in a repository: `<repo>/<name>/1/model.onnx` for onnxruntime,
/// `<repo>/<name>/model.onnx` (the source of the plan) for TensorRT.
pub fn onnx_path(repo: &Path, name: &str, platform: Platform) -> PathBuf {
    match platform {
        Platform::OnnxRuntime => repo.join(name).join(VERSION.to_string()).join(ONNX_FILE),
        Platform::TensorRtPlan => repo.join(name).join(ONNX_FILE),
    }
}

/// What [`write_model_config`] wrote.
#[derive(Debug, Clone)]
pub struct RepositoryReport {
    /// The model directory.
    pub model_dir: PathBuf,
    /// The config file.
    pub config_path: PathBuf,
    /// The ONNX model file.
    pub onnx_path: PathBuf,
    /// The trtexec command (tensorrt_plan only; also in README.txt).
    pub trtexec: Option<String>,
}

/// Writes `config.pbtxt` (and for TensorRT plans the version folder and README.txt) for a model whose ONNX is
/// already at [`onnx_path`], then validates the model directory (a TensorRT plan still to be built is allowed).
pub fn write_model_config(
    repo: &Path,
    meta: &ModelMetadata,
    opts: &TritonOptions,
) -> Result<RepositoryReport> {
    let name = opts
        .model_name
        .clone()
        .unwrap_or_else(|| default_model_name(&meta.config.name));
    let cfg = model_config(meta, &name, opts)?;
    let model_dir = repo.join(&name);
    let version_dir = model_dir.join(VERSION.to_string());
    std::fs::create_dir_all(&version_dir).map_err(|e| TritonError::io(&version_dir, e))?;
    let config_path = model_dir.join(CONFIG_FILE);
    write_atomic(&config_path, config_text(&cfg).as_bytes())?;
    let onnx = onnx_path(repo, &name, opts.platform);
    let trtexec = (opts.platform == Platform::TensorRtPlan).then(|| trtexec_command(&cfg, meta, opts));
    let readme = match &trtexec {
        Some(cmd) => format!(
            "{name}: PixelDiT {preset} {h}x{w} {prec} for Triton's TensorRT backend (platform tensorrt_plan).\n\n\
             A TensorRT engine is specific to the GPU model and TensorRT version it is built with, so\n\
             {VERSION}/{PLAN_FILE} is not written by pixeldit-export. Build it on the serving GPU with the TensorRT\n\
             of the Triton container (e.g. inside nvcr.io/nvidia/tritonserver:<yy.mm>-py3, which has\n\
             /usr/src/tensorrt/bin/trtexec), from this directory:\n\n    {cmd}\n\n\
             Batch profile: min 1, opt = largest preferred batch size, max = max_batch_size ({mbs}) of config.pbtxt.\n\
             Batch-only inputs are [B] in the ONNX; config.pbtxt declares them dims [1] with reshape [] (clients\n\
             send [B,1]). {ONNX_FILE} (and {ONNX_FILE}.data when present) can be deleted once the plan is built.\n",
            preset = meta.config.name,
            h = meta.height,
            w = meta.width,
            prec = meta.precision,
            mbs = cfg.max_batch_size,
            cmd = cmd.replace('\n', "\n    "),
        ),
        None => format!(
            "{name}: PixelDiT {preset} {h}x{w} {prec} (attention {att}) for Triton's onnxruntime backend.\n\
             Serve with: tritonserver --model-repository=<this repository>\n\
             The TensorRT execution accelerator in config.pbtxt applies on GPU instances only.\n",
            preset = meta.config.name,
            h = meta.height,
            w = meta.width,
            prec = meta.precision,
            att = meta.attention,
        ),
    };
    write_atomic(&model_dir.join(README_FILE), readme.as_bytes())?;
    validate_model_dir(&model_dir, true)?;
    Ok(RepositoryReport {
        model_dir,
        config_path,
        onnx_path: onnx,
        trtexec,
    })
}

/// Writes `<repo>/<name>/` for the pixel level of the denoiser with metadata `meta` (onnxruntime only): moves the
/// pixel-level ONNX `pixel_onnx` (`<denoiser>.pixel.onnx`, written beside the denoiser's ONNX) and its external data
/// file, under the name the ONNX refers to, into `1/`, writes config.pbtxt ([`pixel_model_config`]) and validates
/// the directory; returns it.
pub fn write_pixel_model(
    repo: &Path,
    meta: &ModelMetadata,
    name: &str,
    opts: &TritonOptions,
    pixel_onnx: &Path,
) -> Result<PathBuf> {
    if opts.platform != Platform::OnnxRuntime {
        return Err(TritonError::Options(format!(
            "the pixel-level model {name} is written for platform {} only",
            Platform::OnnxRuntime
        )));
    }
    let opts = TritonOptions {
        model_name: Some(name.to_string()),
        ..opts.clone()
    };
    let cfg = pixel_model_config(meta, name, &opts)?;
    let dir = repo.join(name);
    let version = dir.join(VERSION.to_string());
    std::fs::create_dir_all(&version).map_err(|e| TritonError::io(&version, e))?;
    let file_name = pixel_onnx
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let data = pixel_onnx.with_file_name(format!("{file_name}.data"));
    if data.is_file() {
        let to = version.join(format!("{file_name}.data"));
        std::fs::rename(&data, &to).map_err(|e| TritonError::io(&to, e))?;
    }
    let to = version.join(ONNX_FILE);
    std::fs::rename(pixel_onnx, &to).map_err(|e| TritonError::io(&to, e))?;
    write_atomic(&dir.join(CONFIG_FILE), config_text(&cfg).as_bytes())?;
    let readme = format!(
        "{name}: the pixel level of PixelDiT {preset} {h}x{w} {prec} (inputs x, t, patch_tokens; output v), called\n\
         by the pipeline model for requests with a patch cache (patch_cache / patch_cache_threshold): the denoiser's\n\
         output patch_tokens is reused across steps and only this model runs in between.\n",
        preset = meta.config.name,
        h = meta.height,
        w = meta.width,
        prec = meta.precision,
    );
    write_atomic(&dir.join(README_FILE), readme.as_bytes())?;
    validate_model_dir(&dir, false)?;
    Ok(dir)
}

/// What [`validate_model_dir`] found in a valid model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedModel {
    /// Model name.
    pub name: String,
    /// Platform (or backend) string.
    pub platform: String,
    /// Numeric version folders, ascending.
    pub versions: Vec<u64>,
    /// `max_batch_size`.
    pub max_batch_size: i64,
    /// A TensorRT plan that is still to be built (only accepted with `allow_pending_plan`).
    pub plan_pending: bool,
}

/// Checks every model directory of a repository ([`validate_model_dir`], strict: TensorRT plans must exist). The
/// error lists every problem of every model, one per line.
pub fn validate_repository(repo: &Path) -> Result<Vec<ValidatedModel>> {
    let entries = std::fs::read_dir(repo).map_err(|e| TritonError::io(repo, e))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(TritonError::Invalid {
            path: repo.to_path_buf(),
            reason: "no model directories in the repository".into(),
        });
    }
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for d in dirs {
        match validate_model_dir(&d, false) {
            Ok(m) => ok.push(m),
            Err(TritonError::Invalid { reason, .. }) => problems.push(reason),
            Err(e) => problems.push(format!("  {e}")),
        }
    }
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(TritonError::Invalid {
            path: repo.to_path_buf(),
            reason: format!("invalid model repository:\n{}", problems.join("\n")),
        })
    }
}

/// Reads and parses a model directory's `config.pbtxt` with Triton's schema.
pub fn read_config(dir: &Path) -> Result<ModelConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| TritonError::io(&path, e))?;
    crate::pbtxt::parse(&text, &path)
}

/// The dims a tensor has inside the model: `reshape.shape` when given, else `dims`.
fn seen_dims(dims: &[i64], reshape: &Option<ModelTensorReshape>) -> Vec<i64> {
    reshape
        .as_ref()
        .map_or_else(|| dims.to_vec(), |r| r.shape.clone())
}

/// Checks one model directory (see the module docs). With `allow_pending_plan`, a `tensorrt_plan` model whose
/// version folder lacks `model.plan` is accepted when `model.onnx` (the plan's source) is in the model directory.
/// The error lists every problem found, one per line.
pub fn validate_model_dir(dir: &Path, allow_pending_plan: bool) -> Result<ValidatedModel> {
    let dir_name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cfg = read_config(dir)?;
    let mut problems: Vec<String> = Vec::new();
    let name = check_name_and_platform(&cfg, &dir_name, &mut problems);
    check_batching_and_instances(&cfg, &mut problems);
    let declared = check_tensors(&cfg, &mut problems);
    check_io_contract(&cfg, &declared, &mut problems);
    let (versions, plan_pending) = check_versions_and_files(dir, &cfg, allow_pending_plan, &mut problems)?;
    let platform = cfg.platform.as_str();
    let mbs = i64::from(cfg.max_batch_size);
    if !problems.is_empty() {
        return Err(TritonError::Invalid {
            path: dir.to_path_buf(),
            reason: problems
                .iter()
                .map(|p| format!("  {dir_name}: {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    Ok(ValidatedModel {
        name,
        platform: if platform.is_empty() {
            cfg.backend.clone()
        } else {
            platform.to_string()
        },
        versions,
        max_batch_size: mbs,
        plan_pending,
    })
}

/// The model name (the directory's when the config has none); it must equal the directory name, and the platform
/// (or backend) must be set and known.
fn check_name_and_platform(cfg: &ModelConfig, dir_name: &str, problems: &mut Vec<String>) -> String {
    let name = if cfg.name.is_empty() {
        dir_name.to_string()
    } else {
        cfg.name.clone()
    };
    if name != dir_name {
        problems.push(format!(
            "model name '{name}' differs from its directory name '{dir_name}' (Triton requires them equal)"
        ));
    }
    let platform = cfg.platform.as_str();
    if platform.is_empty() && cfg.backend.is_empty() {
        problems.push("neither 'platform' nor 'backend' is set".into());
    } else if !platform.is_empty() && !KNOWN_PLATFORMS.contains(&platform) {
        problems.push(format!(
            "unknown platform '{platform}' (expected one of {})",
            KNOWN_PLATFORMS.join(", ")
        ));
    }
    name
}

/// `max_batch_size`, dynamic batching (preferred sizes within it), instance counts and kinds, execution accelerators.
fn check_batching_and_instances(cfg: &ModelConfig, problems: &mut Vec<String>) {
    let platform = cfg.platform.as_str();
    let mbs = i64::from(cfg.max_batch_size);
    if mbs < 0 {
        problems.push("max_batch_size must be a non-negative integer".into());
    }
    if let Some(SchedulingChoice::DynamicBatching(db)) = &cfg.scheduling_choice {
        if mbs <= 0 {
            problems.push("dynamic_batching needs max_batch_size > 0".into());
        }
        for s in db.preferred_batch_size.iter().map(|&s| i64::from(s)) {
            if s < 1 || (mbs > 0 && s > mbs) {
                problems.push(format!(
                    "preferred_batch_size {s} is outside 1..={mbs} (max_batch_size)"
                ));
            }
        }
    }
    for g in &cfg.instance_group {
        if g.count < 1 {
            problems.push(format!("instance_group count {} must be at least 1", g.count));
        }
        if platform == "tensorrt_plan" && g.kind == Kind::Cpu as i32 {
            problems.push("tensorrt_plan models cannot run on KIND_CPU instances".into());
        }
    }
    let accelerators = cfg
        .optimization
        .as_ref()
        .and_then(|o| o.execution_accelerators.as_ref())
        .map(|a| a.gpu_execution_accelerator.as_slice())
        .unwrap_or_default();
    for a in accelerators {
        if platform != "onnxruntime_onnx" {
            problems.push(format!(
                "gpu_execution_accelerator is an onnxruntime backend option, not valid for platform '{platform}'"
            ));
        }
        if !["tensorrt", "cuda"].contains(&a.name.as_str()) {
            problems.push(format!("unknown gpu_execution_accelerator '{}'", a.name));
        }
        if let Some(p) = a.parameters.get("precision_mode") {
            if !matches!(p.as_str(), "FP32" | "FP16" | "INT8") {
                problems.push(format!(
                    "TensorRT precision_mode '{p}' must be FP32, FP16 or INT8"
                ));
            }
        }
    }
}

/// Every input and output named, typed and with positive dims (a leading `-1` only without `max_batch_size`; `-1`
/// anywhere for a dynamic-size PixelDiT model or its pipeline, whose denoiser dims the I/O contract check then
/// compares exactly), none
/// declared twice; returns the declared tensors with the dims the model sees (after `reshape`).
fn check_tensors<'a>(cfg: &'a ModelConfig, problems: &mut Vec<String>) -> BTreeMap<&'a str, (i32, Vec<i64>)> {
    let mbs = i64::from(cfg.max_batch_size);
    // (A pipeline model carries its denoiser's metadata: its outputs have the request's size.)
    let dynamic_size = cfg
        .parameters
        .get(META_KEY)
        .and_then(|p| ModelMetadata::from_json(&p.string_value).ok())
        .is_some_and(|m| m.dynamic.is_some());
    let mut declared: BTreeMap<&str, (i32, Vec<i64>)> = BTreeMap::new();
    let tensors = [
        (
            "input",
            cfg.input
                .iter()
                .map(|t| (t.name.as_str(), t.data_type, &t.dims, &t.reshape))
                .collect::<Vec<_>>(),
        ),
        (
            "output",
            cfg.output
                .iter()
                .map(|t| (t.name.as_str(), t.data_type, &t.dims, &t.reshape))
                .collect(),
        ),
    ];
    for (field, list) in &tensors {
        if list.is_empty() {
            problems.push(format!("no '{field}' tensors"));
        }
        for &(tname, dtype, dims, reshape) in list {
            if tname.is_empty() {
                problems.push(format!("an {field} has no name"));
            }
            if dtype == DataType::TypeInvalid as i32 {
                problems.push(format!("{field} '{tname}': data_type is missing"));
            }
            if dims.is_empty() {
                problems.push(format!(
                    "{field} '{tname}' has no dims (a batch-only tensor is declared dims [1] with reshape {{ shape: [] }})"
                ));
            }
            for (i, &d) in dims.iter().enumerate() {
                let batch_axis = mbs == 0 && i == 0 && d == -1;
                if d < 1 && !batch_axis && !(dynamic_size && d == -1) {
                    problems.push(format!(
                        "{field} '{tname}' dims {dims:?}: dim {i} is {d}; dims must be positive{}",
                        if mbs > 0 {
                            " (the batch axis is implicit with max_batch_size > 0 and must not be listed)"
                        } else {
                            " (only a leading -1 batch axis is allowed with max_batch_size 0)"
                        }
                    ));
                }
            }
            if declared
                .insert(tname, (dtype, seen_dims(dims, reshape)))
                .is_some()
            {
                problems.push(format!("{field} '{tname}' is declared twice"));
            }
        }
    }
    declared
}

/// Dims and data types against the I/O contract of the exported model, when the config carries its metadata (a
/// pipeline model carries its denoiser's metadata but has its own I/O, see `crate::pipeline`).
fn check_io_contract(
    cfg: &ModelConfig,
    declared: &BTreeMap<&str, (i32, Vec<i64>)>,
    problems: &mut Vec<String>,
) {
    let mbs = i64::from(cfg.max_batch_size);
    let is_pipeline = cfg.parameters.contains_key(DENOISER_KEY);
    let is_pixel_level = cfg.parameters.contains_key(PIXEL_LEVEL_PARAM);
    if let Some(p) = cfg.parameters.get(META_KEY).filter(|_| !is_pipeline) {
        match ModelMetadata::from_json(&p.string_value) {
            Ok(meta) => {
                let split = match split_io(&meta) {
                    Ok(s) => s,
                    Err(e) => {
                        problems.push(format!("parameter '{META_KEY}': {e}"));
                        return;
                    }
                };
                let (ins, mut outs) = meta.io();
                let (ins, outs) = match (split, is_pixel_level) {
                    (Some(s), true) => (s.pixel_inputs, s.pixel_outputs),
                    (None, true) => {
                        problems.push(format!(
                            "a pixel-level model ('{PIXEL_LEVEL_PARAM}') of a model without a patch-level split"
                        ));
                        return;
                    }
                    (Some(s), false) => {
                        outs.push(s.cut);
                        (ins, outs)
                    }
                    (None, false) => (ins, outs),
                };
                for t in ins.iter().chain(outs.iter()) {
                    let expected = expected_dims(t, mbs.max(0) as usize);
                    let ty = data_type(t.dtype);
                    match declared.get(t.name) {
                        None => problems.push(format!(
                            "tensor '{}' of the exported model is not declared",
                            t.name
                        )),
                        Some((dt, seen)) => {
                            if *seen != expected {
                                problems.push(format!(
                                    "'{}' has dims {seen:?} but the model exported at {} takes {expected:?} ({} \
                                     batch axis; from pixeldit_spec::io)",
                                    t.name,
                                    match meta.dynamic {
                                        Some(_) => "a dynamic size".to_string(),
                                        None => format!("{}x{}", meta.height, meta.width),
                                    },
                                    if mbs > 0 { "without the" } else { "with the" }
                                ));
                            }
                            if *dt != ty as i32 {
                                let name = |v: i32| {
                                    DataType::try_from(v)
                                        .map_or_else(|_| v.to_string(), |d| d.as_str_name().to_string())
                                };
                                problems.push(format!(
                                    "'{}' has data_type {}, expected {}",
                                    t.name,
                                    name(*dt),
                                    ty.as_str_name()
                                ));
                            }
                        }
                    }
                }
            }
            Err(e) => problems.push(format!("parameter '{META_KEY}': {e}")),
        }
    }
}

/// Numeric version folders, each holding the model file (a TensorRT plan may be pending, see
/// [`validate_model_dir`]); returns the versions, ascending, and whether a plan is still to be built.
fn check_versions_and_files(
    dir: &Path,
    cfg: &ModelConfig,
    allow_pending_plan: bool,
    problems: &mut Vec<String>,
) -> Result<(Vec<u64>, bool)> {
    let platform = cfg.platform.as_str();
    let file = if cfg.default_model_filename.is_empty() {
        match (platform, cfg.backend.as_str()) {
            ("tensorrt_plan", _) => PLAN_FILE.to_string(),
            (_, "python") => MODEL_PY_FILE.to_string(),
            _ => ONNX_FILE.to_string(),
        }
    } else {
        cfg.default_model_filename.clone()
    };
    let mut versions: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| TritonError::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()))
        .collect();
    versions.sort_unstable();
    let mut plan_pending = false;
    if versions.is_empty() {
        problems.push(format!(
            "no version folder: expected a numeric directory such as {VERSION}/ holding {file}"
        ));
    }
    for v in &versions {
        if dir.join(v.to_string()).join(&file).is_file() {
            continue;
        }
        if platform == "tensorrt_plan" && allow_pending_plan && dir.join(ONNX_FILE).is_file() {
            plan_pending = true;
        } else if platform == "tensorrt_plan" && dir.join(README_FILE).is_file() {
            problems.push(format!(
                "{v}/{file} is missing: build it on the target GPU with the trtexec command in {README_FILE}"
            ));
        } else {
            problems.push(format!("{v}/{file} is missing"));
        }
    }
    Ok((versions, plan_pending))
}

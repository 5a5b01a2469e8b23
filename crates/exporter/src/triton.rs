//! Triton Inference Server model repositories for exported PixelDiT models.
//!
//! A repository written here is
//!
//! ```text
//! <repo>/<name>/config.pbtxt        generated from pixeldit_spec::io (never typed by hand)
//! <repo>/<name>/1/model.onnx        platform onnxruntime_onnx (+ model.onnx.data with external weights)
//! <repo>/<name>/model.onnx          platform tensorrt_plan: the ONNX to build 1/model.plan from on the target
//! <repo>/<name>/README.txt          GPU (trtexec command in README.txt); 1/ is created empty
//! ```
//!
//! * [`TritonModelConfig::from_metadata`] derives inputs, outputs and dims from [`pixeldit_spec::io::c2i_io`]:
//!   with `max_batch_size > 0` the batch axis (`-1`) is left out of `dims`; a tensor that is only the batch axis
//!   (`t [B]`, `y [B]`) is declared `dims: [ 1 ]` with `reshape: { shape: [ ] }`, so clients send `[B, 1]` and the
//!   model sees `[B]`. The full [`ModelMetadata`] JSON goes to the config `parameters` under
//!   [`pixeldit_spec::META_KEY`], so a client (`pixeldit-run --triton`) needs nothing but the server.
//! * [`TritonModelConfig::to_pbtxt`] is deterministic text (fixed field order, no timestamps).
//! * [`validate_repository`] checks what Triton's protobuf schema does not: platform names, dims present and
//!   positive (batch only through `max_batch_size`), dims equal to the I/O contract of the exported size,
//!   batching settings against `max_batch_size`, numeric version folders with the model file, and the model name
//!   equal to its directory. The exporter runs it after writing; the Python check
//!   `tools/triton/check_config.py` parses the same file with Triton's real `ModelConfig` schema.
//!
//! The default attention lowering (`pixeldit.RotaryAttention`, a custom op) cannot run in a stock Triton
//! onnxruntime backend: [`check_attention`] rejects it unless forced.

use crate::error::{ExportError, Result};
use pixeldit_spec::io::{model_io, IoTensor, IoType};
use pixeldit_spec::{AttentionMode, ModelMetadata, Precision, META_KEY};
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Name of the configuration file in a model directory.
pub const CONFIG_FILE: &str = "config.pbtxt";
/// Version folder the exporter writes.
pub const VERSION: u32 = 1;
/// Model file name of the `onnxruntime_onnx` platform (Triton's default).
pub const ONNX_FILE: &str = "model.onnx";
/// Model file name of the `tensorrt_plan` platform (Triton's default).
pub const PLAN_FILE: &str = "model.plan";
/// Notes file written next to `config.pbtxt`.
pub const README_FILE: &str = "README.txt";

/// The Triton platform (backend) a model directory is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Platform {
    /// Triton's onnxruntime backend serving `1/model.onnx` (optionally with the TensorRT execution provider).
    #[default]
    OnnxRuntime,
    /// Triton's TensorRT backend serving `1/model.plan`, an engine built on the target GPU with `trtexec`.
    TensorRtPlan,
}

impl Platform {
    /// All values.
    pub const ALL: &'static [Platform] = &[Platform::OnnxRuntime, Platform::TensorRtPlan];
    /// The `platform:` string of config.pbtxt.
    pub fn as_str(&self) -> &'static str {
        match self {
            Platform::OnnxRuntime => "onnxruntime_onnx",
            Platform::TensorRtPlan => "tensorrt_plan",
        }
    }
    /// The model file in the version folder.
    pub fn model_file(&self) -> &'static str {
        match self {
            Platform::OnnxRuntime => ONNX_FILE,
            Platform::TensorRtPlan => PLAN_FILE,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = ExportError;
    fn from_str(s: &str) -> Result<Self> {
        Platform::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                ExportError::Unsupported(format!(
                    "Triton platform '{s}': expected onnxruntime_onnx or tensorrt_plan"
                ))
            })
    }
}

/// `instance_group.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstanceKind {
    /// `KIND_AUTO`: GPU instances when the server has GPUs, else CPU (onnxruntime only).
    #[default]
    Auto,
    /// `KIND_GPU`.
    Gpu,
    /// `KIND_CPU`.
    Cpu,
}

impl InstanceKind {
    /// The enum value in config.pbtxt.
    pub fn as_str(&self) -> &'static str {
        match self {
            InstanceKind::Auto => "KIND_AUTO",
            InstanceKind::Gpu => "KIND_GPU",
            InstanceKind::Cpu => "KIND_CPU",
        }
    }
}

impl FromStr for InstanceKind {
    type Err = ExportError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(InstanceKind::Auto),
            "gpu" => Ok(InstanceKind::Gpu),
            "cpu" => Ok(InstanceKind::Cpu),
            _ => Err(ExportError::Unsupported(format!(
                "instance kind '{s}': expected auto, gpu or cpu"
            ))),
        }
    }
}

/// How a repository entry is written (the `--triton-*` / `--max-batch-size ...` options of `pixeldit-export`).
#[derive(Debug, Clone)]
pub struct TritonOptions {
    /// Model name (= directory name); `pixeldit_<preset>` when `None`, see [`default_model_name`].
    pub model_name: Option<String>,
    /// Platform.
    pub platform: Platform,
    /// `max_batch_size` (> 0: the batch axis is implicit and dynamic batching is possible; 0: no batching).
    pub max_batch_size: usize,
    /// `dynamic_batching.preferred_batch_size` (each in `1..=max_batch_size`); `None`: no dynamic batching.
    pub preferred_batch_sizes: Option<Vec<usize>>,
    /// `dynamic_batching.max_queue_delay_microseconds`.
    pub max_queue_delay_us: u64,
    /// `instance_group.count`.
    pub instance_count: usize,
    /// `instance_group.kind`; `None`: `KIND_AUTO` for onnxruntime, `KIND_GPU` for TensorRT plans.
    pub instance_kind: Option<InstanceKind>,
    /// onnxruntime only: add the TensorRT execution accelerator block (`gpu_execution_accelerator`).
    pub tensorrt_accelerator: bool,
    /// Workspace of TensorRT builds (`max_workspace_size_bytes`, and `--memPoolSize` in the trtexec command).
    pub trt_workspace_bytes: u64,
}

impl Default for TritonOptions {
    fn default() -> Self {
        TritonOptions {
            model_name: None,
            platform: Platform::OnnxRuntime,
            max_batch_size: 16,
            preferred_batch_sizes: Some(vec![8, 16]),
            max_queue_delay_us: 1000,
            instance_count: 1,
            instance_kind: None,
            tensorrt_accelerator: true,
            trt_workspace_bytes: 4 << 30,
        }
    }
}

impl TritonOptions {
    /// Checks the options on their own (the exporter does this before writing anything).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(ExportError::Unsupported(m));
        if let Some(name) = &self.model_name {
            check_model_name(name)?;
        }
        if self.instance_count == 0 {
            return bad("Triton instance count must be at least 1".into());
        }
        if let Some(sizes) = &self.preferred_batch_sizes {
            if self.max_batch_size == 0 {
                return bad(
                    "dynamic batching needs --max-batch-size > 0 (or pass --no-dynamic-batching)".into(),
                );
            }
            if let Some(s) = sizes.iter().find(|&&s| s == 0 || s > self.max_batch_size) {
                return bad(format!(
                    "preferred batch size {s} is outside 1..={} (--max-batch-size)",
                    self.max_batch_size
                ));
            }
        }
        if self.platform == Platform::TensorRtPlan && self.kind() != InstanceKind::Gpu {
            return bad("TensorRT plans run on GPUs only: use --instance-kind gpu".into());
        }
        Ok(())
    }

    /// `instance_group.kind`: the given one, else `KIND_AUTO` for onnxruntime and `KIND_GPU` for TensorRT plans.
    pub fn kind(&self) -> InstanceKind {
        self.instance_kind.unwrap_or(match self.platform {
            Platform::OnnxRuntime => InstanceKind::Auto,
            Platform::TensorRtPlan => InstanceKind::Gpu,
        })
    }
}

/// `pixeldit_<preset>` with every character outside `[A-Za-z0-9_]` replaced by `_`, lower-cased
/// (`XL-256` -> `pixeldit_xl_256`).
pub fn default_model_name(preset: &str) -> String {
    let s: String = preset
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("pixeldit_{s}")
}

/// Checks a model name for use as a directory and URL path segment: `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn check_model_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ExportError::Unsupported(format!(
            "Triton model name '{name}': use letters, digits, '_', '-' and '.' (not leading)"
        )))
    }
}

/// Rejects attention lowerings a stock Triton backend cannot run: `custom` needs the `pixeldit.RotaryAttention`
/// kernel that only `pixeldit-run` has (`force` accepts it, e.g. for a server with the kernel as a custom-op
/// library). `onnx23` needs opset 23 (onnxruntime >= 1.23 in the Triton onnxruntime backend); `decomposed`
/// (opset 17) runs everywhere, including TensorRT.
pub fn check_attention(attention: AttentionMode, platform: Platform, force: bool) -> Result<()> {
    match (attention, platform) {
        (AttentionMode::Custom, _) if !force => Err(ExportError::Unsupported(format!(
            "--attention custom writes the pixeldit.RotaryAttention custom op, which Triton's {} backend cannot \
             run; use --attention decomposed (the default with --triton-repo) or onnx23, or pass \
             --triton-allow-custom-op if your server loads a kernel for it",
            match platform {
                Platform::OnnxRuntime => "onnxruntime",
                Platform::TensorRtPlan => "TensorRT",
            }
        ))),
        (AttentionMode::Onnx23, Platform::TensorRtPlan) if !force => Err(ExportError::Unsupported(
            "--attention onnx23 (opset-23 Attention/RotaryEmbedding) is not supported by every TensorRT ONNX parser; \
             use --attention decomposed for --triton-platform tensorrt_plan (or --triton-allow-custom-op to force)"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Where the exported ONNX goes in a repository: `<repo>/<name>/1/model.onnx` for onnxruntime,
/// `<repo>/<name>/model.onnx` (the source of the plan) for TensorRT.
pub fn onnx_path(repo: &Path, name: &str, platform: Platform) -> PathBuf {
    match platform {
        Platform::OnnxRuntime => repo.join(name).join(VERSION.to_string()).join(ONNX_FILE),
        Platform::TensorRtPlan => repo.join(name).join(ONNX_FILE),
    }
}

/// One `input` / `output` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorConfig {
    /// Tensor name (the ONNX graph's).
    pub name: String,
    /// `TYPE_FP32`, `TYPE_INT64`, ...
    pub data_type: &'static str,
    /// Dims without the batch axis when `max_batch_size > 0`.
    pub dims: Vec<i64>,
    /// `reshape.shape` (what the model sees, batch excluded), when it differs from `dims`.
    pub reshape: Option<Vec<i64>>,
    /// One line written as a comment.
    pub doc: String,
}

/// The TensorRT execution accelerator of the onnxruntime backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtAccelerator {
    /// `parameters` of the accelerator, in order (`precision_mode`, `max_workspace_size_bytes`, ...).
    pub parameters: Vec<(String, String)>,
}

/// A Triton `ModelConfig` as this exporter writes it; [`Self::to_pbtxt`] renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TritonModelConfig {
    /// Model name (= directory name).
    pub name: String,
    /// Platform.
    pub platform: Platform,
    /// `max_batch_size`.
    pub max_batch_size: usize,
    /// `default_model_filename`.
    pub default_model_filename: String,
    /// Inputs.
    pub inputs: Vec<TensorConfig>,
    /// Outputs.
    pub outputs: Vec<TensorConfig>,
    /// `dynamic_batching { preferred_batch_size, max_queue_delay_microseconds }`.
    pub dynamic_batching: Option<(Vec<usize>, u64)>,
    /// `instance_group [{ count, kind }]`.
    pub instance: (usize, InstanceKind),
    /// onnxruntime: `optimization.execution_accelerators.gpu_execution_accelerator` TensorRT entry.
    pub trt_accelerator: Option<TrtAccelerator>,
    /// `parameters` (string values), sorted by key.
    pub parameters: BTreeMap<String, String>,
}

fn data_type(t: IoType) -> &'static str {
    match t {
        IoType::F32 => "TYPE_FP32",
        IoType::I64 => "TYPE_INT64",
    }
}

/// TensorRT `precision_mode` of the onnxruntime backend (it accepts FP32, FP16 and INT8) for a variant.
/// bf16 variants carry their bf16 casts in the graph and build as FP32 (no extra reduced precision); FP8 Q/DQ
/// variants build with FP16 enabled (the onnxruntime backend has no FP8 mode; use the tensorrt_plan route with
/// `--stronglyTyped` to keep FP8).
pub fn trt_precision_mode(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 | Precision::Bf16 => "FP32",
        Precision::Fp16 | Precision::Fp8 | Precision::Fp8Weights => "FP16",
        Precision::Int8 | Precision::Int8Weights => "INT8",
    }
}

/// trtexec precision flags for a variant: fp32 builds in FP32; every reduced-precision variant is built
/// `--stronglyTyped`, so TensorRT keeps the types written in the ONNX (fp16/bf16 linears with fp32 norms, Q/DQ).
pub fn trtexec_precision_flags(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 => "",
        _ => " --stronglyTyped",
    }
}

/// Escapes a string for a protobuf text-format string literal.
fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c => o.push(c),
        }
    }
    o
}

fn list<T: fmt::Display>(v: &[T]) -> String {
    if v.is_empty() {
        "[ ]".into()
    } else {
        format!(
            "[ {} ]",
            v.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        )
    }
}

/// Triton tensor entries for I/O tensors of the spec (batch axis `-1` first).
pub fn tensor_configs(io: &[IoTensor], max_batch_size: usize) -> Vec<TensorConfig> {
    io.iter()
        .map(|t| {
            let (dims, reshape) = if max_batch_size > 0 {
                debug_assert_eq!(t.dims.first(), Some(&-1), "batch axis first");
                let rest: Vec<i64> = t.dims[1..].to_vec();
                if rest.is_empty() {
                    (vec![1], Some(vec![]))
                } else {
                    (rest, None)
                }
            } else {
                (t.dims.clone(), None)
            };
            TensorConfig {
                name: t.name.to_string(),
                data_type: data_type(t.dtype),
                dims,
                reshape,
                doc: t.doc.to_string(),
            }
        })
        .collect()
}

impl TritonModelConfig {
    /// The config of an exported model, from its metadata (image size, channels, precision) and the I/O
    /// contract [`model_io`] (C2I `x, t, y` or T2I `x, t, text`).
    pub fn from_metadata(meta: &ModelMetadata, name: &str, opts: &TritonOptions) -> Result<Self> {
        check_model_name(name)?;
        opts.check()?;
        let dynamic_batching = opts.preferred_batch_sizes.as_ref().map(|sizes| {
            let mut sizes = sizes.clone();
            sizes.sort_unstable();
            sizes.dedup();
            (sizes, opts.max_queue_delay_us)
        });
        let kind = opts.kind();
        let trt_accelerator =
            (opts.platform == Platform::OnnxRuntime && opts.tensorrt_accelerator).then(|| TrtAccelerator {
                parameters: vec![
                    ("precision_mode".into(), trt_precision_mode(meta.precision).into()),
                    (
                        "max_workspace_size_bytes".into(),
                        opts.trt_workspace_bytes.to_string(),
                    ),
                    ("trt_engine_cache_enable".into(), "true".into()),
                    (
                        "trt_engine_cache_path".into(),
                        format!("/tmp/triton_trt_cache/{name}"),
                    ),
                ],
            });
        let (inputs, outputs) = model_io(&meta.config, meta.height, meta.width);
        let mut parameters = BTreeMap::new();
        parameters.insert(META_KEY.to_string(), meta.to_json());
        Ok(TritonModelConfig {
            name: name.to_string(),
            platform: opts.platform,
            max_batch_size: opts.max_batch_size,
            default_model_filename: opts.platform.model_file().to_string(),
            inputs: tensor_configs(&inputs, opts.max_batch_size),
            outputs: tensor_configs(&outputs, opts.max_batch_size),
            dynamic_batching,
            instance: (opts.instance_count, kind),
            trt_accelerator,
            parameters,
        })
    }

    /// Renders config.pbtxt (protobuf text format of Triton's `inference.ModelConfig`). Deterministic.
    pub fn to_pbtxt(&self) -> String {
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(
            w,
            "# Triton model configuration written by pixeldit-export {} from pixeldit_spec::io; do not edit by hand.",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(w, "name: \"{}\"", escape(&self.name));
        let _ = writeln!(w, "platform: \"{}\"", self.platform);
        let _ = writeln!(w, "max_batch_size: {}", self.max_batch_size);
        let _ = writeln!(
            w,
            "default_model_filename: \"{}\"",
            escape(&self.default_model_filename)
        );
        for (field, tensors) in [("input", &self.inputs), ("output", &self.outputs)] {
            let _ = writeln!(w, "{field} [");
            for (i, t) in tensors.iter().enumerate() {
                let _ = writeln!(w, "  {{");
                let _ = writeln!(w, "    # {}", t.doc.replace('\n', " "));
                let _ = writeln!(w, "    name: \"{}\"", escape(&t.name));
                let _ = writeln!(w, "    data_type: {}", t.data_type);
                let _ = writeln!(w, "    dims: {}", list(&t.dims));
                if let Some(r) = &t.reshape {
                    let _ = writeln!(w, "    reshape: {{ shape: {} }}", list(r));
                }
                let _ = writeln!(w, "  }}{}", if i + 1 < tensors.len() { "," } else { "" });
            }
            let _ = writeln!(w, "]");
        }
        if let Some((sizes, delay)) = &self.dynamic_batching {
            let _ = writeln!(w, "dynamic_batching {{");
            if !sizes.is_empty() {
                let _ = writeln!(w, "  preferred_batch_size: {}", list(sizes));
            }
            let _ = writeln!(w, "  max_queue_delay_microseconds: {delay}");
            let _ = writeln!(w, "}}");
        }
        let _ = writeln!(w, "instance_group [");
        let _ = writeln!(w, "  {{");
        let _ = writeln!(w, "    count: {}", self.instance.0);
        let _ = writeln!(w, "    kind: {}", self.instance.1.as_str());
        let _ = writeln!(w, "  }}");
        let _ = writeln!(w, "]");
        if let Some(a) = &self.trt_accelerator {
            let _ = writeln!(w, "optimization {{");
            let _ = writeln!(w, "  execution_accelerators {{");
            let _ = writeln!(w, "    gpu_execution_accelerator: [");
            let _ = writeln!(w, "      {{");
            let _ = writeln!(w, "        name: \"tensorrt\"");
            for (k, v) in &a.parameters {
                let _ = writeln!(
                    w,
                    "        parameters {{ key: \"{}\" value: \"{}\" }}",
                    escape(k),
                    escape(v)
                );
            }
            let _ = writeln!(w, "      }}");
            let _ = writeln!(w, "    ]");
            let _ = writeln!(w, "  }}");
            let _ = writeln!(w, "}}");
        }
        for (k, v) in &self.parameters {
            let _ = writeln!(w, "parameters {{");
            let _ = writeln!(w, "  key: \"{}\"", escape(k));
            let _ = writeln!(w, "  value: {{ string_value: \"{}\" }}", escape(v));
            let _ = writeln!(w, "}}");
        }
        s
    }

    /// The trtexec command that builds `1/model.plan` from `model.onnx`, run inside the model directory.
    pub fn trtexec_command(&self, meta: &ModelMetadata, opts: &TritonOptions) -> String {
        let (c, h, w) = (meta.config.in_channels, meta.height, meta.width);
        let max = self.max_batch_size.max(1);
        let opt = self
            .dynamic_batching
            .as_ref()
            .and_then(|(s, _)| s.last().copied())
            .unwrap_or(max);
        let shapes = |b: usize| format!("x:{b}x{c}x{h}x{w},t:{b},y:{b}");
        format!(
            "trtexec --onnx={ONNX_FILE} --saveEngine={VERSION}/{PLAN_FILE} \\\n    --minShapes={} --optShapes={} --maxShapes={} \\\n    --memPoolSize=workspace:{}M{}",
            shapes(1),
            shapes(opt),
            shapes(max),
            opts.trt_workspace_bytes >> 20,
            trtexec_precision_flags(meta.precision)
        )
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

fn io_err(path: &Path, e: std::io::Error) -> ExportError {
    ExportError::Triton {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Writes `config.pbtxt` (and for TensorRT plans the version folder and README.txt) for a model whose ONNX is
/// already at [`onnx_path`], then validates the model directory ([`validate_model_dir`]; a TensorRT plan that is
/// still to be built is allowed).
pub fn write_model_config(
    repo: &Path,
    meta: &ModelMetadata,
    opts: &TritonOptions,
) -> Result<RepositoryReport> {
    let name = opts
        .model_name
        .clone()
        .unwrap_or_else(|| default_model_name(&meta.config.name));
    let cfg = TritonModelConfig::from_metadata(meta, &name, opts)?;
    let model_dir = repo.join(&name);
    let version_dir = model_dir.join(VERSION.to_string());
    std::fs::create_dir_all(&version_dir).map_err(|e| io_err(&version_dir, e))?;
    let config_path = model_dir.join(CONFIG_FILE);
    write_atomic(&config_path, &cfg.to_pbtxt())?;
    let onnx = onnx_path(repo, &name, opts.platform);
    let trtexec = (opts.platform == Platform::TensorRtPlan).then(|| cfg.trtexec_command(meta, opts));
    let readme = match &trtexec {
        Some(cmd) => format!(
            "{name}: PixelDiT {preset} {h}x{w} {prec} for Triton's TensorRT backend (platform tensorrt_plan).\n\n\
             A TensorRT engine is specific to the GPU model and TensorRT version it is built with, so\n\
             {VERSION}/{PLAN_FILE} is not written by pixeldit-export. Build it on the serving GPU with the TensorRT\n\
             of the Triton container (e.g. inside nvcr.io/nvidia/tritonserver:<yy.mm>-py3, which has\n\
             /usr/src/tensorrt/bin/trtexec), from this directory:\n\n    {cmd}\n\n\
             Batch profile: min 1, opt = largest preferred batch size, max = max_batch_size ({mbs}) of config.pbtxt.\n\
             t and y are [B] in the ONNX; config.pbtxt declares them dims [1] with reshape [] (clients send [B,1]).\n\
             {ONNX_FILE} (and {ONNX_FILE}.data when present) can be deleted once the plan is built.\n",
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
    write_atomic(&model_dir.join(README_FILE), &readme)?;
    validate_model_dir(&model_dir, true)?;
    Ok(RepositoryReport {
        model_dir,
        config_path,
        onnx_path: onnx,
        trtexec,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Validation.

/// A parsed protobuf text-format value (the subset config.pbtxt uses).
#[derive(Debug, Clone, PartialEq)]
pub enum PbValue {
    /// A number, enum identifier or `true`/`false`, as written.
    Scalar(String),
    /// A string literal, unescaped.
    Str(String),
    /// A message `{ ... }`.
    Message(PbMessage),
}

/// A parsed text-format message: fields in order, repeated fields appear several times.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PbMessage {
    /// `(field, value)` pairs; a list `f: [a, b]` contributes one pair per element.
    pub fields: Vec<(String, PbValue)>,
}

impl PbMessage {
    /// All values of a field.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a PbValue> + 'a {
        self.fields.iter().filter(move |(k, _)| k == name).map(|(_, v)| v)
    }
    /// The last value of a field (text format: last one wins for singular fields).
    pub fn get(&self, name: &str) -> Option<&PbValue> {
        self.fields.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v)
    }
    /// A string field.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            PbValue::Str(s) => Some(s),
            _ => None,
        }
    }
    /// A scalar field (number or enum).
    pub fn scalar(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            PbValue::Scalar(s) => Some(s),
            _ => None,
        }
    }
    /// All messages of a repeated message field.
    pub fn messages<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a PbMessage> + 'a {
        self.all(name).filter_map(|v| match v {
            PbValue::Message(m) => Some(m),
            _ => None,
        })
    }
    /// A singular message field.
    pub fn message(&self, name: &str) -> Option<&PbMessage> {
        self.fields.iter().rev().find_map(|(k, v)| match v {
            PbValue::Message(m) if k == name => Some(m),
            _ => None,
        })
    }
    /// A repeated integer field; `Err` names a non-integer element.
    pub fn ints(&self, name: &str) -> std::result::Result<Vec<i64>, String> {
        self.all(name)
            .map(|v| match v {
                PbValue::Scalar(s) => s
                    .parse::<i64>()
                    .map_err(|_| format!("'{name}' value '{s}' is not an integer")),
                _ => Err(format!("'{name}' has a non-integer value")),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Punct(char),
}

fn tokenize(text: &str) -> std::result::Result<Vec<(Tok, usize)>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 1usize);
    while i < b.len() {
        let c = b[i] as char;
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            '#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            '{' | '}' | '[' | ']' | ':' | ',' | ';' | '<' | '>' => {
                out.push((Tok::Punct(c), line));
                i += 1;
            }
            '"' | '\'' => {
                let q = b[i];
                i += 1;
                let mut s = Vec::new();
                loop {
                    match b.get(i) {
                        None | Some(b'\n') => return Err(format!("line {line}: unterminated string")),
                        Some(&ch) if ch == q => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let e = *b
                                .get(i + 1)
                                .ok_or_else(|| format!("line {line}: unterminated string"))?;
                            s.push(match e {
                                b'n' => b'\n',
                                b't' => b'\t',
                                b'r' => b'\r',
                                e => e,
                            });
                            i += 2;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                out.push((Tok::Str(String::from_utf8_lossy(&s).into_owned()), line));
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '.') => {
                let st = i;
                while i < b.len()
                    && ((b[i] as char).is_ascii_alphanumeric() || matches!(b[i], b'_' | b'-' | b'+' | b'.'))
                {
                    i += 1;
                }
                out.push((Tok::Ident(text[st..i].to_string()), line));
            }
            c => return Err(format!("line {line}: unexpected character '{c}'")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser {
    fn line(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map(|t| t.1)
            .unwrap_or(1)
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn message(&mut self, close: Option<char>) -> std::result::Result<PbMessage, String> {
        let mut m = PbMessage::default();
        loop {
            match (self.peek().cloned(), close) {
                (None, None) => return Ok(m),
                (None, Some(c)) => return Err(format!("line {}: missing '{c}'", self.line())),
                (Some(Tok::Punct(p)), Some(c)) if p == c => {
                    self.pos += 1;
                    return Ok(m);
                }
                (Some(Tok::Ident(name)), _) => {
                    self.pos += 1;
                    let colon = self.eat(':');
                    if self.eat('[') {
                        if !self.eat(']') {
                            loop {
                                let v = self.value(colon)?;
                                m.fields.push((name.clone(), v));
                                if self.eat(']') {
                                    break;
                                }
                                if !self.eat(',') {
                                    return Err(format!(
                                        "line {}: expected ',' or ']' in list '{name}'",
                                        self.line()
                                    ));
                                }
                            }
                        }
                    } else {
                        let v = self.value(colon)?;
                        m.fields.push((name, v));
                    }
                    let _ = self.eat(',') || self.eat(';');
                }
                (Some(t), _) => return Err(format!("line {}: unexpected {t:?}", self.line())),
            }
        }
    }
    fn value(&mut self, colon: bool) -> std::result::Result<PbValue, String> {
        if self.eat('{') {
            return Ok(PbValue::Message(self.message(Some('}'))?));
        }
        if self.eat('<') {
            return Ok(PbValue::Message(self.message(Some('>'))?));
        }
        if !colon {
            return Err(format!("line {}: expected ':' or '{{'", self.line()));
        }
        match self.peek().cloned() {
            Some(Tok::Str(mut s)) => {
                self.pos += 1;
                // Adjacent string literals concatenate.
                while let Some(Tok::Str(more)) = self.peek().cloned() {
                    s.push_str(&more);
                    self.pos += 1;
                }
                Ok(PbValue::Str(s))
            }
            Some(Tok::Ident(s)) => {
                self.pos += 1;
                Ok(PbValue::Scalar(s))
            }
            _ => Err(format!("line {}: expected a value", self.line())),
        }
    }
}

/// Parses protobuf text format (the subset Triton configs use: messages, lists, strings, numbers, enums).
pub fn parse_pbtxt(text: &str) -> std::result::Result<PbMessage, String> {
    let mut p = Parser {
        toks: tokenize(text)?,
        pos: 0,
    };
    p.message(None)
}

/// Platforms Triton knows (`platform:` values); the exporter writes the first two.
pub const KNOWN_PLATFORMS: &[&str] = &[
    "onnxruntime_onnx",
    "tensorrt_plan",
    "pytorch_libtorch",
    "tensorflow_graphdef",
    "tensorflow_savedmodel",
    "ensemble",
];

const KNOWN_TYPES: &[&str] = &[
    "TYPE_BOOL",
    "TYPE_UINT8",
    "TYPE_UINT16",
    "TYPE_UINT32",
    "TYPE_UINT64",
    "TYPE_INT8",
    "TYPE_INT16",
    "TYPE_INT32",
    "TYPE_INT64",
    "TYPE_FP16",
    "TYPE_FP32",
    "TYPE_FP64",
    "TYPE_STRING",
    "TYPE_BF16",
];

/// What [`validate_model_dir`] found in a valid model directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedModel {
    /// Model name.
    pub name: String,
    /// Platform string.
    pub platform: String,
    /// Numeric version folders, ascending.
    pub versions: Vec<u64>,
    /// `max_batch_size`.
    pub max_batch_size: i64,
    /// A TensorRT plan that is still to be built (only accepted with `allow_pending_plan`).
    pub plan_pending: bool,
}

/// Checks every model directory of a repository ([`validate_model_dir`], strict: TensorRT plans must exist).
/// The error lists every problem of every model, one per line.
pub fn validate_repository(repo: &Path) -> Result<Vec<ValidatedModel>> {
    let entries = std::fs::read_dir(repo).map_err(|e| io_err(repo, e))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(ExportError::Triton {
            path: repo.display().to_string(),
            reason: "no model directories in the repository".into(),
        });
    }
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for d in dirs {
        match validate_model_dir(&d, false) {
            Ok(m) => ok.push(m),
            Err(ExportError::Triton { reason, .. }) => problems.push(reason),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(ok)
    } else {
        Err(ExportError::Triton {
            path: repo.display().to_string(),
            reason: format!("invalid model repository:\n{}", problems.join("\n")),
        })
    }
}

/// Checks one model directory: the semantics Triton's schema does not enforce (see the module docs). With
/// `allow_pending_plan`, a `tensorrt_plan` model whose version folder lacks `model.plan` is accepted when
/// `model.onnx` (the plan's source) is in the model directory.
pub fn validate_model_dir(dir: &Path, allow_pending_plan: bool) -> Result<ValidatedModel> {
    let dir_name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut problems: Vec<String> = Vec::new();
    let cfg_path = dir.join(CONFIG_FILE);
    let fail = |problems: Vec<String>| {
        Err(ExportError::Triton {
            path: dir.display().to_string(),
            reason: problems
                .iter()
                .map(|p| format!("  {dir_name}: {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        })
    };
    let text = match std::fs::read_to_string(&cfg_path) {
        Ok(t) => t,
        Err(e) => return fail(vec![format!("cannot read {CONFIG_FILE}: {e}")]),
    };
    let cfg = match parse_pbtxt(&text) {
        Ok(c) => c,
        Err(e) => return fail(vec![format!("{CONFIG_FILE} does not parse: {e}")]),
    };

    // Name and platform.
    let name = cfg.str("name").unwrap_or(&dir_name).to_string();
    if name != dir_name {
        problems.push(format!(
            "model name '{name}' differs from its directory name '{dir_name}' (Triton requires them equal)"
        ));
    }
    let platform = cfg.str("platform").unwrap_or_default().to_string();
    let backend = cfg.str("backend").unwrap_or_default().to_string();
    if platform.is_empty() && backend.is_empty() {
        problems.push("neither 'platform' nor 'backend' is set".into());
    } else if !platform.is_empty() && !KNOWN_PLATFORMS.contains(&platform.as_str()) {
        problems.push(format!(
            "unknown platform '{platform}' (expected one of {})",
            KNOWN_PLATFORMS.join(", ")
        ));
    }

    // Batching.
    let mbs: i64 = match cfg.scalar("max_batch_size").map(str::parse::<i64>) {
        None => 0,
        Some(Ok(v)) if v >= 0 => v,
        Some(_) => {
            problems.push("max_batch_size must be a non-negative integer".into());
            0
        }
    };
    if let Some(db) = cfg.message("dynamic_batching") {
        if mbs == 0 {
            problems.push("dynamic_batching needs max_batch_size > 0".into());
        }
        match db.ints("preferred_batch_size") {
            Ok(sizes) => {
                for s in sizes.into_iter().filter(|&s| s < 1 || (mbs > 0 && s > mbs)) {
                    problems.push(format!(
                        "preferred_batch_size {s} is outside 1..={mbs} (max_batch_size)"
                    ));
                }
            }
            Err(e) => problems.push(e),
        }
    }
    for g in cfg.messages("instance_group") {
        if let Some(c) = g.scalar("count") {
            if c.parse::<i64>().map_or(true, |c| c < 1) {
                problems.push(format!("instance_group count '{c}' must be at least 1"));
            }
        }
        if let Some(k) = g.scalar("kind") {
            if !["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"].contains(&k) {
                problems.push(format!("unknown instance_group kind '{k}'"));
            } else if platform == "tensorrt_plan" && k == "KIND_CPU" {
                problems.push("tensorrt_plan models cannot run on KIND_CPU instances".into());
            }
        }
    }
    if let Some(acc) = cfg
        .message("optimization")
        .and_then(|o| o.message("execution_accelerators"))
    {
        for a in acc.messages("gpu_execution_accelerator") {
            if platform != "onnxruntime_onnx" {
                problems.push(format!(
                    "gpu_execution_accelerator is an onnxruntime backend option, not valid for platform '{platform}'"
                ));
            }
            let aname = a.str("name").unwrap_or_default();
            if !["tensorrt", "cuda"].contains(&aname) {
                problems.push(format!("unknown gpu_execution_accelerator '{aname}'"));
            }
            for p in a.messages("parameters") {
                if p.str("key") == Some("precision_mode")
                    && !matches!(p.str("value"), Some("FP32" | "FP16" | "INT8"))
                {
                    problems.push(format!(
                        "TensorRT precision_mode '{}' must be FP32, FP16 or INT8",
                        p.str("value").unwrap_or_default()
                    ));
                }
            }
        }
    }

    // Inputs and outputs.
    let mut declared: BTreeMap<String, (String, Vec<i64>)> = BTreeMap::new();
    for field in ["input", "output"] {
        let tensors: Vec<&PbMessage> = cfg.messages(field).collect();
        if tensors.is_empty() {
            problems.push(format!("no '{field}' tensors"));
        }
        for t in tensors {
            let tname = t.str("name").unwrap_or_default().to_string();
            if tname.is_empty() {
                problems.push(format!("an {field} has no name"));
            }
            let dtype = t.scalar("data_type").unwrap_or_default().to_string();
            if !KNOWN_TYPES.contains(&dtype.as_str()) {
                problems.push(format!(
                    "{field} '{tname}': data_type '{dtype}' is missing or unknown"
                ));
            }
            let dims = match t.ints("dims") {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{field} '{tname}': {e}"));
                    continue;
                }
            };
            if dims.is_empty() {
                problems.push(format!(
                    "{field} '{tname}' has no dims (a batch-only tensor is declared dims [1] with reshape {{ shape: [] }})"
                ));
            }
            for (i, &d) in dims.iter().enumerate() {
                let batch_axis = mbs == 0 && i == 0 && d == -1;
                if d < 1 && !batch_axis {
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
            let seen = match t.message("reshape") {
                Some(r) => match r.ints("shape") {
                    Ok(s) => s,
                    Err(e) => {
                        problems.push(format!("{field} '{tname}' reshape: {e}"));
                        continue;
                    }
                },
                None => dims.clone(),
            };
            if declared.insert(tname.clone(), (dtype, seen)).is_some() {
                problems.push(format!("{field} '{tname}' is declared twice"));
            }
        }
    }

    // Dims against the I/O contract of the exported model, when the config carries its metadata.
    if let Some(PbValue::Message(pm)) = cfg
        .messages("parameters")
        .find(|p| p.str("key") == Some(META_KEY))
        .and_then(|p| p.get("value"))
    {
        match pm.str("string_value").map(ModelMetadata::from_json) {
            Some(Ok(meta)) => {
                let (ins, outs) = model_io(&meta.config, meta.height, meta.width);
                for t in ins.iter().chain(outs.iter()) {
                    let expected: Vec<i64> = if mbs > 0 {
                        t.dims[1..].to_vec()
                    } else {
                        t.dims.clone()
                    };
                    let ty = data_type(t.dtype);
                    match declared.get(t.name) {
                        None => problems.push(format!(
                            "tensor '{}' of the exported model is not declared",
                            t.name
                        )),
                        Some((dt, seen)) => {
                            if *seen != expected {
                                problems.push(format!(
                                    "'{}' has dims {seen:?} but the model exported at {}x{} takes {expected:?} \
                                     ({} batch axis; from pixeldit_spec::io)",
                                    t.name,
                                    meta.height,
                                    meta.width,
                                    if mbs > 0 { "without the" } else { "with the" }
                                ));
                            }
                            if dt != ty {
                                problems.push(format!("'{}' has data_type {dt}, expected {ty}", t.name));
                            }
                        }
                    }
                }
            }
            Some(Err(e)) => problems.push(format!("parameter '{META_KEY}': {e}")),
            None => problems.push(format!("parameter '{META_KEY}' has no string_value")),
        }
    }

    // Versions and model files.
    let file = cfg
        .str("default_model_filename")
        .map(str::to_string)
        .unwrap_or_else(|| match platform.as_str() {
            "tensorrt_plan" => PLAN_FILE.into(),
            _ => ONNX_FILE.into(),
        });
    let mut versions: Vec<u64> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
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
        let f = dir.join(v.to_string()).join(&file);
        if !f.is_file() {
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
    }
    if !problems.is_empty() {
        return fail(problems);
    }
    Ok(ValidatedModel {
        name,
        platform: if platform.is_empty() { backend } else { platform },
        versions,
        max_batch_size: mbs,
        plan_pending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixeldit_spec::{ModelConfig, SamplerDefaults, META_FORMAT_VERSION};

    fn meta(precision: Precision) -> ModelMetadata {
        let config = ModelConfig::preset("tiny").unwrap();
        ModelMetadata {
            format_version: META_FORMAT_VERSION,
            height: 32,
            width: 32,
            precision,
            attention: AttentionMode::Decomposed,
            sampler: SamplerDefaults {
                ..config.sampler.clone()
            },
            config,
            weights_sha256: "00".into(),
            weights_source: "random-init:seed=0".into(),
            exporter_version: "test".into(),
            quantization: None,
        }
    }

    /// A repository with a fake model file (validation looks at the layout, not the ONNX bytes).
    fn repo(opts: &TritonOptions) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let m = meta(Precision::Fp16);
        let name = opts
            .model_name
            .clone()
            .unwrap_or_else(|| default_model_name("tiny"));
        let onnx = onnx_path(d.path(), &name, opts.platform);
        std::fs::create_dir_all(onnx.parent().unwrap()).unwrap();
        std::fs::write(&onnx, b"onnx").unwrap();
        write_model_config(d.path(), &m, opts).unwrap();
        let dir = d.path().join(name);
        (d, dir)
    }

    fn edit(dir: &Path, from: &str, to: &str) {
        let p = dir.join(CONFIG_FILE);
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains(from), "{from} not in\n{t}");
        std::fs::write(&p, t.replacen(from, to, 1)).unwrap();
    }

    fn err(dir: &Path) -> String {
        match validate_repository(dir.parent().unwrap()) {
            Ok(m) => panic!("expected an error, got {m:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_is_generated_from_the_io_spec() {
        let opts = TritonOptions::default();
        let cfg = TritonModelConfig::from_metadata(&meta(Precision::Fp16), "m", &opts).unwrap();
        let text = cfg.to_pbtxt();
        assert_eq!(text, cfg.to_pbtxt(), "deterministic");
        for want in [
            "name: \"m\"",
            "platform: \"onnxruntime_onnx\"",
            "max_batch_size: 16",
            "dims: [ 3, 32, 32 ]",
            "data_type: TYPE_INT64",
            "dims: [ 1 ]\n    reshape: { shape: [ ] }",
            "preferred_batch_size: [ 8, 16 ]",
            "max_queue_delay_microseconds: 1000",
            "kind: KIND_AUTO",
            "name: \"tensorrt\"",
            "parameters { key: \"precision_mode\" value: \"FP16\" }",
            "key: \"pixeldit.metadata\"",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        // The parser reads back what the writer wrote, metadata JSON included.
        let parsed = parse_pbtxt(&text).unwrap();
        let json = parsed
            .messages("parameters")
            .next()
            .unwrap()
            .message("value")
            .unwrap()
            .str("string_value")
            .unwrap()
            .to_string();
        assert_eq!(ModelMetadata::from_json(&json).unwrap(), meta(Precision::Fp16));
        assert_eq!(parsed.messages("input").count(), 3);
        assert_eq!(
            parsed.messages("input").next().unwrap().ints("dims").unwrap(),
            vec![3, 32, 32]
        );
        assert_eq!(trt_precision_mode(Precision::Int8), "INT8");
        assert_eq!(default_model_name("XL-256"), "pixeldit_xl_256");
    }

    #[test]
    fn max_batch_size_zero_keeps_the_batch_axis() {
        let opts = TritonOptions {
            max_batch_size: 0,
            preferred_batch_sizes: None,
            ..Default::default()
        };
        let cfg = TritonModelConfig::from_metadata(&meta(Precision::Fp32), "m", &opts).unwrap();
        assert_eq!(cfg.inputs[0].dims, vec![-1, 3, 32, 32]);
        assert_eq!(cfg.inputs[1].dims, vec![-1]);
        assert!(cfg.dynamic_batching.is_none());
        let bad = TritonOptions {
            max_batch_size: 0,
            ..Default::default()
        };
        assert!(TritonModelConfig::from_metadata(&meta(Precision::Fp32), "m", &bad).is_err());
        let bad = TritonOptions {
            preferred_batch_sizes: Some(vec![32]),
            ..Default::default()
        };
        let e = TritonModelConfig::from_metadata(&meta(Precision::Fp32), "m", &bad).unwrap_err();
        assert!(e.to_string().contains("preferred batch size 32"), "{e}");
    }

    #[test]
    fn written_repositories_validate() {
        let (_d, dir) = repo(&TritonOptions::default());
        let m = validate_repository(dir.parent().unwrap()).unwrap();
        assert_eq!(m[0].name, "pixeldit_tiny");
        assert_eq!(m[0].versions, vec![1]);
        let (_d, dir) = repo(&TritonOptions {
            platform: Platform::TensorRtPlan,
            ..Default::default()
        });
        let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
        assert!(text.contains("platform: \"tensorrt_plan\"") && text.contains("KIND_GPU"));
        assert!(!text.contains("gpu_execution_accelerator"));
        let readme = std::fs::read_to_string(dir.join(README_FILE)).unwrap();
        assert!(
            readme.contains("trtexec --onnx=model.onnx --saveEngine=1/model.plan")
                && readme.contains("--maxShapes=x:16x3x32x32,t:16,y:16")
                && readme.contains("--stronglyTyped"),
            "{readme}"
        );
        assert!(validate_model_dir(&dir, true).unwrap().plan_pending);
        // Strict validation wants the plan.
        assert!(err(&dir).contains("1/model.plan is missing: build it on the target GPU"));
        std::fs::write(dir.join("1").join(PLAN_FILE), b"plan").unwrap();
        validate_repository(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn broken_repositories_give_clear_errors() {
        // Wrong dims (batch axis listed although max_batch_size > 0).
        let (_d, dir) = repo(&TritonOptions::default());
        edit(&dir, "dims: [ 3, 32, 32 ]", "dims: [ -1, 3, 32, 32 ]");
        let e = err(&dir);
        assert!(e.contains("input 'x' dims [-1, 3, 32, 32]: dim 0 is -1"), "{e}");
        assert!(e.contains("batch axis is implicit"), "{e}");
        // Wrong size.
        let (_d, dir) = repo(&TritonOptions::default());
        edit(&dir, "dims: [ 3, 32, 32 ]", "dims: [ 3, 64, 64 ]");
        let e = err(&dir);
        assert!(
            e.contains("'x' has dims [3, 64, 64] but the model exported at 32x32 takes [3, 32, 32]"),
            "{e}"
        );
        // Missing dims.
        let (_d, dir) = repo(&TritonOptions::default());
        edit(&dir, "    dims: [ 3, 32, 32 ]\n", "");
        assert!(err(&dir).contains("input 'x' has no dims"));
        // Missing version folder.
        let (_d, dir) = repo(&TritonOptions::default());
        std::fs::remove_dir_all(dir.join("1")).unwrap();
        let e = err(&dir);
        assert!(
            e.contains("pixeldit_tiny: no version folder: expected a numeric directory such as 1/"),
            "{e}"
        );
        // Missing model file.
        let (_d, dir) = repo(&TritonOptions::default());
        std::fs::remove_file(dir.join("1").join(ONNX_FILE)).unwrap();
        assert!(err(&dir).contains("1/model.onnx is missing"));
        // Name differs from the directory.
        let (_d, dir) = repo(&TritonOptions::default());
        edit(&dir, "name: \"pixeldit_tiny\"", "name: \"other\"");
        assert!(err(&dir).contains("model name 'other' differs from its directory name 'pixeldit_tiny'"));
        // Platform typo, preferred size over the maximum, precision typo.
        let (_d, dir) = repo(&TritonOptions::default());
        edit(&dir, "onnxruntime_onnx", "onnxruntime");
        edit(&dir, "[ 8, 16 ]", "[ 8, 32 ]");
        edit(&dir, "\"FP16\"", "\"fp16\"");
        let e = err(&dir);
        assert!(e.contains("unknown platform 'onnxruntime'"), "{e}");
        assert!(e.contains("preferred_batch_size 32 is outside 1..=16"), "{e}");
        assert!(e.contains("precision_mode 'fp16'"), "{e}");
        // Syntax error.
        let (_d, dir) = repo(&TritonOptions::default());
        edit(&dir, "max_batch_size: 16", "max_batch_size: {");
        assert!(err(&dir).contains("config.pbtxt does not parse"));
    }

    #[test]
    fn custom_attention_is_rejected_unless_forced() {
        let e = check_attention(AttentionMode::Custom, Platform::OnnxRuntime, false).unwrap_err();
        assert!(e.to_string().contains("--attention decomposed"), "{e}");
        check_attention(AttentionMode::Custom, Platform::OnnxRuntime, true).unwrap();
        check_attention(AttentionMode::Decomposed, Platform::TensorRtPlan, false).unwrap();
        check_attention(AttentionMode::Onnx23, Platform::OnnxRuntime, false).unwrap();
        assert!(check_attention(AttentionMode::Onnx23, Platform::TensorRtPlan, false).is_err());
    }
}

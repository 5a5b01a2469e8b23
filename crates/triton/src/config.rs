//! The `config.pbtxt` of an exported PixelDiT model, as Triton's typed `ModelConfig`, derived from the model's
//! metadata and the I/O contract [`pixeldit_spec::ModelMetadata::io`] (never typed by hand).
//!
//! With `max_batch_size > 0` the batch axis (`-1`) is left out of `dims`; a tensor that is only the batch axis
//! (`t [B]`, `y [B]`) is declared `dims: [ 1 ]` with `reshape: { shape: [ ] }`, so clients send `[B, 1]` and the
//! model sees `[B]`. The full metadata JSON goes to the config `parameters` under [`pixeldit_spec::META_KEY`], so a
//! client (`pixeldit-run --triton`) needs nothing but the server.

use crate::error::{Result, TritonError};
use crate::pb::inference::model_config::SchedulingChoice;
use crate::pb::inference::model_instance_group::Kind;
use crate::pb::inference::model_optimization_policy::execution_accelerators::Accelerator;
use crate::pb::inference::model_optimization_policy::ExecutionAccelerators;
use crate::pb::inference::{
    DataType, ModelConfig, ModelDynamicBatching, ModelInput, ModelInstanceGroup, ModelOptimizationPolicy,
    ModelOutput, ModelParameter, ModelTensorReshape,
};
use pixeldit_spec::io::{IoTensor, IoType};
use pixeldit_spec::{AttentionMode, ModelMetadata, PatchCut, Precision, META_KEY};
use std::fmt;

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

// The pipeline model (`NAME_pipeline`, see `crate::pipeline`): files of its version folder and the config parameters
// its `model.py` hands to the sampler library, which reads them (`pixeldit_triton_pipeline::config` mirrors these
// keys; a test of this crate checks that a written pipeline config is accepted there).

/// File name of the sampler library in the pipeline's version folder.
pub const LIBRARY_FILE: &str = "libpixeldit_triton_pipeline.so";
/// The python-backend model file of the pipeline.
pub const MODEL_PY_FILE: &str = "model.py";
/// The tokenizer's file name in the pipeline's version folder (text-to-image pipelines).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// Config parameter naming the denoiser model that the pipeline calls; its presence marks a pipeline model.
pub const DENOISER_KEY: &str = "pixeldit.denoiser";
/// Config parameter with the denoiser's `max_batch_size` (batch-only inputs are sent as `[B, 1]` when > 0).
pub const DENOISER_MBS_KEY: &str = "pixeldit.denoiser_max_batch_size";
/// Config parameter naming the library file (read by `model.py`, which loads the library).
pub const LIBRARY_KEY: &str = "pixeldit.library";
/// Config parameter naming the text encoder model (text-to-image pipelines).
pub const TEXT_ENCODER_KEY: &str = "pixeldit.text_encoder_model";
/// Config parameter with the text encoder's metadata JSON (text-to-image pipelines).
pub const TEXT_ENCODER_META_PARAM: &str = "pixeldit.text_encoder_metadata";
/// Config parameter naming the tokenizer file in the version folder (text-to-image pipelines).
pub const TOKENIZER_KEY: &str = "pixeldit.tokenizer";

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
    fn kind(self) -> Kind {
        match self {
            InstanceKind::Auto => Kind::Auto,
            InstanceKind::Gpu => Kind::Gpu,
            InstanceKind::Cpu => Kind::Cpu,
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
    /// Checks the options on their own (before anything is written).
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(TritonError::Options(m));
        if let Some(name) = &self.model_name {
            check_model_name(name)?;
        }
        if self.instance_count == 0 {
            return bad("instance count must be at least 1".into());
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
        Err(TritonError::Options(format!(
            "Triton model name '{name}': use letters, digits, '_', '-' and '.' (not leading)"
        )))
    }
}

/// Rejects attention lowerings a stock Triton backend cannot run: `custom` needs the `pixeldit` custom-op kernels
/// that only `pixeldit-run` has (`force` accepts it, e.g. for a server with the kernels as a custom-op library);
/// `onnx23` is not parsed by every TensorRT; `decomposed` (opset 17) runs everywhere, including TensorRT.
pub fn check_attention(attention: AttentionMode, platform: Platform, force: bool) -> Result<()> {
    match (attention, platform) {
        (AttentionMode::Custom, _) if !force => Err(TritonError::Options(format!(
            "--attention custom writes the pixeldit.RotaryAttention custom op, which Triton's {} backend cannot run; \
             use --attention decomposed (the default with --triton-repo) or onnx23, or pass --triton-allow-custom-op if \
             your server loads a kernel for it",
            match platform {
                Platform::OnnxRuntime => "onnxruntime",
                Platform::TensorRtPlan => "TensorRT",
            }
        ))),
        (AttentionMode::Onnx23, Platform::TensorRtPlan) if !force => Err(TritonError::Options(
            "--attention onnx23 (opset-23 Attention/RotaryEmbedding) is not supported by every TensorRT ONNX parser; \
             use --attention decomposed for --triton-platform tensorrt_plan (or --triton-allow-custom-op to force)"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Triton's data type of an I/O tensor.
pub fn data_type(t: IoType) -> DataType {
    match t {
        IoType::F32 => DataType::TypeFp32,
        IoType::I64 => DataType::TypeInt64,
    }
}

/// TensorRT `precision_mode` of the onnxruntime backend (it accepts FP32, FP16 and INT8) for a variant. bf16
/// variants carry their bf16 casts in the graph and build as FP32; FP8 Q/DQ variants build with FP16 enabled (the
/// onnxruntime backend has no FP8 mode; use the tensorrt_plan route with `--stronglyTyped` to keep FP8).
pub fn trt_precision_mode(p: Precision) -> &'static str {
    match p {
        Precision::Fp32 | Precision::Bf16 => "FP32",
        Precision::Fp16 | Precision::Fp8 | Precision::Fp8Weights | Precision::Mxfp8Weights => "FP16",
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

/// `(dims, reshape)` of a spec tensor under `max_batch_size`.
fn dims_of(t: &IoTensor, max_batch_size: usize) -> (Vec<i64>, Option<ModelTensorReshape>) {
    if max_batch_size == 0 {
        return (t.dims.clone(), None);
    }
    debug_assert_eq!(t.dims.first(), Some(&-1), "batch axis first");
    let rest = t.dims[1..].to_vec();
    if rest.is_empty() {
        (vec![1], Some(ModelTensorReshape { shape: vec![] }))
    } else {
        (rest, None)
    }
}

/// The dims (batch axis excluded when `max_batch_size > 0`) the model itself sees for a spec tensor.
pub fn expected_dims(t: &IoTensor, max_batch_size: usize) -> Vec<i64> {
    if max_batch_size > 0 {
        t.dims[1..].to_vec()
    } else {
        t.dims.clone()
    }
}

/// Name of the cut tensor Triton serves: the patch tokens ([`PatchCut::Tokens`]), an extra output of the denoiser
/// and an input of its pixel-level model.
pub const PATCH_TOKENS: &str = "patch_tokens";
/// Config parameter marking the pixel-level model (`<denoiser>_pixel`); its value is the cut
/// ([`pixeldit_spec::PIXEL_LEVEL_KEY`]).
pub const PIXEL_LEVEL_PARAM: &str = pixeldit_spec::PIXEL_LEVEL_KEY;
/// Pipeline config parameter naming the pixel-level model the patch cache calls (absent: no patch cache).
pub const PIXEL_MODEL_KEY: &str = "pixeldit.pixel_model";

/// The pixel-level model's name for a denoiser: `<denoiser>_pixel`.
pub fn pixel_model_name(denoiser: &str) -> String {
    format!("{denoiser}_pixel")
}

/// The tensors of a model's patch-level split as Triton serves it ([`split_io`]).
#[derive(Debug, Clone)]
pub struct SplitIo {
    /// The cut tensor `patch_tokens [-1, L, D]` (L patches of width D): an extra output of the denoiser.
    pub cut: IoTensor,
    /// Inputs of the pixel-level model: `x`, `t` and the cut tensor.
    pub pixel_inputs: Vec<IoTensor>,
    /// Outputs of the pixel-level model: the velocity `v`.
    pub pixel_outputs: Vec<IoTensor>,
}

/// The split I/O of a model whose metadata has a patch-level split (`None` without one). Only the `tokens` cut is
/// served: the `cond` tensor `[B*L, D]` has no batch axis Triton could batch.
pub fn split_io(meta: &ModelMetadata) -> Result<Option<SplitIo>> {
    let Some(split) = &meta.patch_split else {
        return Ok(None);
    };
    if split.cut != PatchCut::Tokens || split.tensor != PATCH_TOKENS {
        return Err(TritonError::Options(format!(
            "{}: Triton serves the patch-level split at the tokens cut ('{PATCH_TOKENS}'), not '{}' ('{}'): export \
             with --patch-split tokens (the default) or --no-patch-split",
            meta.config.name, split.cut, split.tensor
        )));
    }
    let c = &meta.config;
    // A dynamic-size model has a variable token count too.
    let patches = match meta.dynamic {
        Some(_) => -1,
        None => ((meta.height / c.patch_size) * (meta.width / c.patch_size)) as i64,
    };
    let cut = IoTensor {
        name: PATCH_TOKENS,
        dtype: IoType::F32,
        dims: vec![-1, patches, c.hidden_size as i64],
        doc: "patch tokens after the last patch block (the patch-level step cache)",
    };
    let (inputs, outputs) = meta.io();
    let mut pixel_inputs: Vec<IoTensor> = inputs
        .into_iter()
        .filter(|t| t.name == "x" || t.name == "t")
        .collect();
    pixel_inputs.push(cut.clone());
    Ok(Some(SplitIo {
        cut,
        pixel_inputs,
        pixel_outputs: outputs,
    }))
}

/// The `ModelConfig` of an exported model named `name`, from its metadata (image size, channels, precision) and
/// the I/O contract (C2I `x, t, y` or T2I `x, t, text`; with a patch-level split also the output `patch_tokens`).
pub fn model_config(meta: &ModelMetadata, name: &str, opts: &TritonOptions) -> Result<ModelConfig> {
    let (inputs, mut outputs) = meta.io();
    if let Some(split) = split_io(meta)? {
        outputs.push(split.cut);
    }
    tensors_config(meta, name, opts, &inputs, &outputs, vec![])
}

/// The `ModelConfig` of the pixel level of the model with metadata `meta` (inputs `x`, `t`, `patch_tokens`, output
/// `v`), served as `name` (see [`pixel_model_name`]) with the denoiser's batching options; marked with the
/// [`PIXEL_LEVEL_PARAM`] parameter. An error when `meta` has no (servable) split.
pub fn pixel_model_config(meta: &ModelMetadata, name: &str, opts: &TritonOptions) -> Result<ModelConfig> {
    let split = split_io(meta)?.ok_or_else(|| {
        TritonError::Options(format!(
            "{}: the export has no patch-level split (--no-patch-split), so there is no pixel-level model",
            meta.config.name
        ))
    })?;
    let marker = (PIXEL_LEVEL_PARAM, PatchCut::Tokens.to_string());
    tensors_config(
        meta,
        name,
        opts,
        &split.pixel_inputs,
        &split.pixel_outputs,
        vec![marker],
    )
}

/// The `ModelConfig` of a graph with these inputs and outputs; the metadata and `extra` go to the parameters.
fn tensors_config(
    meta: &ModelMetadata,
    name: &str,
    opts: &TritonOptions,
    inputs: &[IoTensor],
    outputs: &[IoTensor],
    extra: Vec<(&str, String)>,
) -> Result<ModelConfig> {
    check_model_name(name)?;
    opts.check()?;
    let mbs = opts.max_batch_size;
    let input = inputs
        .iter()
        .map(|t| {
            let (dims, reshape) = dims_of(t, mbs);
            ModelInput {
                name: t.name.to_string(),
                data_type: data_type(t.dtype) as i32,
                dims,
                reshape,
                ..Default::default()
            }
        })
        .collect();
    let output = outputs
        .iter()
        .map(|t| {
            let (dims, reshape) = dims_of(t, mbs);
            ModelOutput {
                name: t.name.to_string(),
                data_type: data_type(t.dtype) as i32,
                dims,
                reshape,
                ..Default::default()
            }
        })
        .collect();
    let scheduling_choice = opts.preferred_batch_sizes.as_ref().map(|sizes| {
        let mut sizes: Vec<i32> = sizes.iter().map(|&s| s as i32).collect();
        sizes.sort_unstable();
        sizes.dedup();
        SchedulingChoice::DynamicBatching(ModelDynamicBatching {
            preferred_batch_size: sizes,
            max_queue_delay_microseconds: opts.max_queue_delay_us,
            ..Default::default()
        })
    });
    let optimization = (opts.platform == Platform::OnnxRuntime && opts.tensorrt_accelerator).then(|| {
        let parameters = [
            ("precision_mode", trt_precision_mode(meta.precision).to_string()),
            ("max_workspace_size_bytes", opts.trt_workspace_bytes.to_string()),
            ("trt_engine_cache_enable", "true".to_string()),
            ("trt_engine_cache_path", format!("/tmp/triton_trt_cache/{name}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        ModelOptimizationPolicy {
            execution_accelerators: Some(ExecutionAccelerators {
                gpu_execution_accelerator: vec![Accelerator {
                    name: "tensorrt".into(),
                    parameters,
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    });
    let parameters = std::iter::once((META_KEY, meta.to_json()))
        .chain(extra)
        .map(|(k, v)| (k.to_string(), ModelParameter { string_value: v }))
        .collect();
    Ok(ModelConfig {
        name: name.to_string(),
        platform: opts.platform.as_str().to_string(),
        max_batch_size: mbs as i32,
        default_model_filename: opts.platform.model_file().to_string(),
        input,
        output,
        scheduling_choice,
        instance_group: vec![ModelInstanceGroup {
            count: opts.instance_count as i32,
            kind: opts.kind().kind() as i32,
            ..Default::default()
        }],
        optimization,
        parameters,
        ..Default::default()
    })
}

/// The text of `config.pbtxt` for `cfg`, with a header naming its origin. Deterministic.
pub fn config_text(cfg: &ModelConfig) -> String {
    let origin = format!(
        "Triton model configuration written by pixeldit {} from pixeldit_spec::io; do not edit by hand.",
        env!("CARGO_PKG_VERSION")
    );
    crate::pbtxt::render(cfg, &[origin.as_str()])
}

/// The trtexec command that builds `1/model.plan` from `model.onnx`, run inside the model directory.
pub fn trtexec_command(cfg: &ModelConfig, meta: &ModelMetadata, opts: &TritonOptions) -> String {
    let max = (cfg.max_batch_size.max(1)) as usize;
    let opt = match &cfg.scheduling_choice {
        Some(SchedulingChoice::DynamicBatching(d)) => {
            d.preferred_batch_size.last().map_or(max, |&s| s as usize)
        }
        _ => max,
    };
    let (inputs, _) = meta.io();
    // A dynamic-size model: the profile spans its range (min x min, opt, max x max).
    let sizes = meta
        .dynamic
        .as_ref()
        .map(|d| [[d.min, d.min], d.opt, [d.max, d.max]]);
    let shapes = |b: usize, k: usize| {
        let size = sizes.map(|s| s[k]);
        inputs
            .iter()
            .map(|t| {
                let rest: Vec<String> = t.dims[1..]
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match (size, *d < 0) {
                        (Some([h, w]), true) => if i == 1 { h } else { w }.to_string(),
                        _ => d.to_string(),
                    })
                    .collect();
                if rest.is_empty() {
                    format!("{}:{b}", t.name)
                } else {
                    format!("{}:{b}x{}", t.name, rest.join("x"))
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "trtexec --onnx={ONNX_FILE} --saveEngine={VERSION}/{PLAN_FILE} \\\n    --minShapes={} --optShapes={} --maxShapes={} \\\n    --memPoolSize=workspace:{}M{}",
        shapes(1, 0),
        shapes(opt, 1),
        shapes(max, 2),
        opts.trt_workspace_bytes >> 20,
        trtexec_precision_flags(meta.precision)
    )
}

//! Writes the dual-level PixelDiT (arXiv 2511.20645) as an ONNX graph.
//!
//! The graph is built with [`pixeldit_graph`], one file per checkpoint subtree under [`model`], with
//! initializer names equal to the official checkpoint keys (after stripping `ema_denoiser.`/`core.`)
//! and node scopes equal to the module paths (`patch_blocks.3.attn.qkv/Gemm_0`).
//!
//! * Inputs `x [B,3,H,W]` f32, `t [B]` f32, `y [B]` int64; output `v [B,3,H,W]`; batch is dynamic, the
//!   image size is fixed per export (RoPE tables and pixel positional embeddings are constants), or, with
//!   [`ExportOptions::dynamic`], symbolic: the patch grid, the 2D RoPE tables, the pixel positional embedding and
//!   the patchify reshapes are computed in the graph from the shape of `x`.
//! * Attention (QK-RMSNorm, 2D RoPE, SDPA) is one `pixeldit.RotaryAttention` node by default
//!   ([`AttentionMode::Custom`]; semantics in [`pixeldit_spec::custom_op`]), or standard opset-23 ops
//!   ([`AttentionMode::Onnx23`]), or opset-17 primitives ([`AttentionMode::Decomposed`]).
//! * Everything `pixeldit-run` needs is stored as JSON under the `pixeldit.metadata` metadata key.
//! * fp32 and fp16 graphs are written here; the quantized variants are `pixeldit-quantize` passes over the fp32
//!   graph, orchestrated by `pixeldit-cli` (this crate depends on `pixeldit-spec` and `pixeldit-graph` only).
//!
//! Module map:
//! * [`model`]: the graphs, one file per checkpoint subtree (C2I, [`model::t2i`], the Gemma-2 text encoder
//!   [`model::gemma`]); each weight is requested with its shape where it is read, so the model files are the
//!   checkpoint schema ([`model::parameter_shapes`]).
//! * [`nn`]: reusable layers (linear, RMSNorm, adaLN chunks, SwiGLU, GELU, the three attention lowerings) and the
//!   build context that checks every weight it reads.
//! * [`weights`]: checkpoints (safetensors, `torch.save` archives) memory-mapped and read lazily, or random init.
//! * [`checkpoint`]: the `torch.save` zip reader and the pickle VM that never executes code.
//! * `comfy` (private): ComfyUI's layouts read into the official one (MXFP8 and float8 Linears dequantized exactly,
//!   split PiT modulation recombined); [`lora`]: LoRA adapters merged into the weights before anything reads them.
//! * [`resolve_config`]: layout options a checkpoint fixes by its shapes (post-modulation PiT blocks).
//!
//! ```no_run
//! use pixeldit_exporter::{export_to_file, ExportOptions, WeightsSpec};
//! use pixeldit_spec::ModelConfig;
//! let opts = ExportOptions::new(ModelConfig::preset("tiny")?, WeightsSpec::RandomInit { seed: 0 });
//! let report = export_to_file(&opts, "tiny.onnx".as_ref())?;
//! println!("{} parameters", report.write.weight_params);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod checkpoint;
mod comfy;
mod error;
pub mod lora;
pub mod model;
pub mod nn;
pub mod weights;

pub use error::{ExportError, Result};
pub use lora::{AdapterInfo, LoraSpec};
pub use pixeldit_graph::ExternalData;
pub use weights::{KeyReport, Weights};

use pixeldit_graph::{DType, Graph, Progress, WriteOptions, WriteReport};
use pixeldit_spec::{
    AttentionMode, DynamicSize, ModelConfig, ModelMetadata, PatchCut, PatchSplit, PixelOps, Precision,
    SamplerDefaults, META_FORMAT_VERSION, META_KEY, PIXEL_LEVEL_KEY,
};
use std::path::{Path, PathBuf};

/// Where the weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsSpec {
    /// An official-layout checkpoint file.
    Checkpoint(PathBuf),
    /// Deterministic random weights (benchmarks, structure tests).
    RandomInit {
        /// Seed of the per-tensor ChaCha8 streams.
        seed: u64,
    },
}

/// Everything one export needs.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Model configuration.
    pub config: ModelConfig,
    /// Image height (multiple of the patch size).
    pub height: usize,
    /// Image width (multiple of the patch size).
    pub width: usize,
    /// Precision of the variant.
    pub precision: Precision,
    /// Attention lowering.
    pub attention: AttentionMode,
    /// How the PiT blocks' per-pixel work is written ([`PixelOps::Fused`] needs fp32 linears and pre-modulation
    /// blocks, and is not available with [`AttentionMode::Onnx23`], whose graphs use standard ops only).
    pub pixel_ops: PixelOps,
    /// Let the export choose `pixel_ops` (it replaces the field): fused with [`AttentionMode::Custom`] where the
    /// model can be written with them ([`fused_pixel_ops_refusal`]), else standard. `false` in
    /// [`ExportOptions::new`]; `pixeldit-export --pixel-ops auto` (its default) sets it.
    pub auto_pixel_ops: bool,
    /// Weights.
    pub weights: WeightsSpec,
    /// External-data policy.
    pub external_data: ExternalData,
    /// Sampler defaults written to the metadata (the config's when `None`).
    pub sampler: Option<SamplerDefaults>,
    /// LoRA adapters merged into the checkpoint's weights before anything reads them, in order.
    pub loras: Vec<LoraSpec>,
    /// The patch-level split for the step cache (`pixeldit-run --patch-cache`): the whole model also outputs the
    /// cut tensor and the pixel level is written as a second graph, `<model>.pixel.onnx`. `None` (the default of
    /// [`ExportOptions::new`]; `pixeldit-export` splits at [`PatchCut::Tokens`] unless told not to): one graph.
    pub patch_cut: Option<PatchCut>,
    /// A dynamic image size (symbolic `H`, `W`; `height x width` is then the default size, which must be inside
    /// the range). `None`: the size is fixed.
    pub dynamic: Option<DynamicSize>,
}

impl ExportOptions {
    /// Defaults: the config's default size, fp32, custom attention, automatic external data, no patch-level split.
    pub fn new(config: ModelConfig, weights: WeightsSpec) -> Self {
        ExportOptions {
            height: config.default_height,
            width: config.default_width,
            config,
            precision: Precision::Fp32,
            attention: AttentionMode::Custom,
            pixel_ops: PixelOps::Standard,
            auto_pixel_ops: false,
            weights,
            external_data: ExternalData::Auto,
            sampler: None,
            loras: Vec::new(),
            patch_cut: None,
            dynamic: None,
        }
    }
}

/// What an export did.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// Files, sizes and the weight hash.
    pub write: WriteReport,
    /// Unused and dropped checkpoint keys.
    pub keys: KeyReport,
    /// The metadata stored in the model.
    pub metadata: ModelMetadata,
    /// Number of graph nodes.
    pub nodes: usize,
    /// The pixel-level graph, when the export has the patch-level split.
    pub pixel_level: Option<WriteReport>,
}

/// Opens the weights of an export, merges its LoRA adapters, and checks them against the model before anything is
/// written: the graph is built once, and every key is checked where the model files read it (all missing keys are
/// listed at once); returns the unused and dropped keys.
pub fn load_weights(opts: &ExportOptions) -> Result<(Weights, KeyReport)> {
    let mut weights = match &opts.weights {
        WeightsSpec::Checkpoint(p) => Weights::from_checkpoint(p)?,
        WeightsSpec::RandomInit { seed } => Weights::random(*seed),
    };
    for l in &opts.loras {
        weights.merge_lora(l)?;
    }
    let (_, keys) = build_graph_and_report(opts, &weights)?;
    Ok((weights, keys))
}

/// The float type of the linear layers for a precision (quantized variants start from fp32).
pub fn linear_dtype(precision: Precision) -> DType {
    match precision {
        Precision::Fp16 => DType::F16,
        Precision::Bf16 => DType::BF16,
        _ => DType::F32,
    }
}

/// The configuration an export really builds: `config` with the layout options a checkpoint fixes by its shapes.
/// Today that is post-modulation PiT blocks, detected when `pixel_blocks.0.adaLN_modulation.0.weight` has
/// `4 * D_pix * p^2` rows (the default has 6); every other block must then agree, or the build names its key.
pub fn resolve_config(config: &ModelConfig, weights: &Weights) -> ModelConfig {
    let mut cfg = config.clone();
    if cfg.pixel_depth > 0 {
        let rows = weights
            .shape("pixel_blocks.0.adaLN_modulation.0.weight")
            .and_then(|s| s.first().copied());
        if rows == Some(4 * cfg.pixel_hidden_size * cfg.patch_pixels()) {
            cfg.pit_adaln_post_modulation = true;
        }
    }
    cfg
}

/// Why the export of `opts` cannot be written with [`PixelOps::Fused`] (`config`: [`resolve_config`]'s), or
/// `None` when it can.
pub fn fused_pixel_ops_refusal(opts: &ExportOptions, config: &ModelConfig) -> Option<String> {
    if opts.attention == AttentionMode::Onnx23 {
        Some("--attention onnx23 exports standard ops only".to_string())
    } else if linear_dtype(opts.precision) != DType::F32 {
        Some(format!(
            "the {} variant stores its linears in a 16-bit float; use an fp32-based one",
            opts.precision
        ))
    } else if config.pit_adaln_post_modulation {
        Some("the checkpoint's PiT blocks are post-modulation (4 chunks); the fused ops read 6".to_string())
    } else {
        None
    }
}

/// The pixel ops an export writes: `opts.pixel_ops`, or with `opts.auto_pixel_ops` fused where the attention is
/// the custom op and nothing refuses them, else standard (`config`: [`resolve_config`]'s).
pub fn pixel_ops_of(opts: &ExportOptions, config: &ModelConfig) -> PixelOps {
    if !opts.auto_pixel_ops {
        opts.pixel_ops
    } else if opts.attention == AttentionMode::Custom && fused_pixel_ops_refusal(opts, config).is_none() {
        PixelOps::Fused
    } else {
        PixelOps::Standard
    }
}

/// `opts` with its pixel ops chosen ([`pixel_ops_of`]) and `auto_pixel_ops` cleared, so that a later change of
/// the precision (the quantizer builds bf16, int8 and fp8 variants from the fp32 graph) keeps the variant's
/// choice.
pub fn with_pixel_ops_chosen(opts: &ExportOptions, weights: &Weights) -> ExportOptions {
    let mut o = opts.clone();
    o.pixel_ops = pixel_ops_of(opts, &resolve_config(&opts.config, weights));
    o.auto_pixel_ops = false;
    o
}

/// Builds the graph of an export (no file is written).
pub fn build_graph(opts: &ExportOptions, weights: &Weights) -> Result<Graph> {
    build_graph_and_report(opts, weights).map(|(g, _)| g)
}

/// [`build_graph`] and the key report of the weights.
pub fn build_graph_and_report(opts: &ExportOptions, weights: &Weights) -> Result<(Graph, KeyReport)> {
    opts.config.check_size(opts.height, opts.width)?;
    let config = resolve_config(&opts.config, weights);
    let mut cx = nn::Ctx::new(
        weights,
        linear_dtype(opts.precision),
        opts.attention,
        opts.config.norm_eps as f32,
    );
    cx.patch_cut = opts.patch_cut;
    cx.pixel_ops = pixel_ops_of(opts, &config);
    if cx.pixel_ops == PixelOps::Fused {
        if let Some(reason) = fused_pixel_ops_refusal(opts, &config) {
            return Err(ExportError::Unsupported(format!("fused pixel ops: {reason}")));
        }
    }
    let size = match &opts.dynamic {
        Some(d) => {
            if d.multiple != opts.config.patch_size {
                return Err(ExportError::Unsupported(format!(
                    "a dynamic size with multiple {} for patch size {}",
                    d.multiple, opts.config.patch_size
                )));
            }
            d.validate()?;
            d.check(opts.height, opts.width)?;
            cx.dynamic_size = true;
            format!(
                "dynamic {}..={} per side, default {}x{}",
                d.min, d.max, opts.height, opts.width
            )
        }
        None => format!("{}x{}", opts.height, opts.width),
    };
    let (mut g, report) = model::build_graph(cx, &config, opts.height, opts.width)?;
    g.set_name(&format!("pixeldit_{}", opts.config.name));
    g.set_doc(&format!(
        "PixelDiT {} ({size}, {}, attention {}), exported by pixeldit-exporter {}",
        opts.config.name,
        opts.precision,
        opts.attention,
        env!("CARGO_PKG_VERSION")
    ));
    Ok((g, report))
}

/// The metadata of an export, with the weight hash filled in by the writer; its config is
/// [`resolve_config`]'s.
pub fn metadata(opts: &ExportOptions, weights: &Weights, weights_sha256: &str) -> ModelMetadata {
    let config = resolve_config(&opts.config, weights);
    ModelMetadata {
        format_version: META_FORMAT_VERSION,
        pixel_ops: pixel_ops_of(opts, &config),
        config,
        height: opts.height,
        width: opts.width,
        precision: opts.precision,
        attention: opts.attention,
        sampler: opts
            .sampler
            .clone()
            .unwrap_or_else(|| opts.config.sampler.clone()),
        weights_sha256: weights_sha256.to_string(),
        weights_source: weights.origin().to_string(),
        exporter_version: env!("CARGO_PKG_VERSION").to_string(),
        quantization: None,
        patch_split: None,
        dynamic: opts.dynamic.clone(),
    }
}

/// Writes a built graph with its metadata; `progress` is called per tensor. With `opts.patch_cut`, the pixel level
/// of the same graph follows in `<path>.pixel.onnx` ([`pixeldit_spec::pixel_level_path`]; its metadata is the
/// whole model's, marked with [`PIXEL_LEVEL_KEY`]); if that fails, the whole model is removed again.
pub fn write_graph(
    graph: &Graph,
    opts: &ExportOptions,
    weights: &Weights,
    path: &Path,
    progress: Option<Progress>,
    quantization: Option<serde_json::Value>,
) -> Result<(WriteReport, ModelMetadata, Option<WriteReport>)> {
    let wopts = WriteOptions {
        external: opts.external_data,
        progress,
        producer: ("pixeldit-exporter", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    let split = opts.patch_cut.map(|cut| PatchSplit {
        cut,
        tensor: model::patch_cut_tensor(cut).to_string(),
    });
    let mut meta_out = None;
    let report = pixeldit_graph::write_model(graph, path, &wopts, |r, props| {
        let mut meta = metadata(opts, weights, &r.weights_sha256);
        meta.quantization = quantization;
        meta.patch_split = split.clone();
        props.push((META_KEY.to_string(), meta.to_json()));
        props.push(("pixeldit.preset".into(), opts.config.name.clone()));
        props.push(("pixeldit.precision".into(), opts.precision.to_string()));
        props.push(("pixeldit.attention".into(), opts.attention.to_string()));
        props.push((
            "pixeldit.image_size".into(),
            match &opts.dynamic {
                Some(_) => "dynamic".to_string(),
                None => format!("{}x{}", opts.height, opts.width),
            },
        ));
        props.push(("pixeldit.weights_sha256".into(), r.weights_sha256.clone()));
        if !weights.adapters().is_empty() {
            let list: Vec<_> = weights.adapters().iter().map(AdapterInfo::to_json).collect();
            let adapters = serde_json::Value::Array(list).to_string();
            props.push(("pixeldit.adapters".into(), adapters));
        }
        meta_out = Some(meta);
    })?;
    let meta = meta_out.expect("finalize ran");
    let pixel = match &split {
        None => None,
        Some(split) => {
            let written = write_pixel_level(graph, &meta, split, path, opts.external_data);
            match written {
                Ok(r) => Some(r),
                Err(e) => {
                    remove_written(&report);
                    return Err(e);
                }
            }
        }
    };
    Ok((report, meta, pixel))
}

/// The pixel level of a whole-model graph that has the cut tensor of `split` as an extra output: `x`, `t` (for
/// the tokens cut) and the cut tensor in, the velocity out.
pub fn pixel_level_graph(graph: &Graph, split: &PatchSplit) -> Result<Graph> {
    let velocity = graph
        .outputs()
        .first()
        .map(|v| graph.info(*v).name.clone())
        .ok_or_else(|| ExportError::Unsupported("the graph has no outputs".into()))?;
    let cut: Vec<String> = match split.cut {
        PatchCut::Modulation => graph
            .outputs()
            .iter()
            .map(|v| graph.info(*v).name.clone())
            .filter(|n| n.starts_with(&format!("{}.", split.tensor)))
            .collect(),
        _ => vec![split.tensor.clone()],
    };
    let cut: Vec<&str> = cut.iter().map(String::as_str).collect();
    let mut g = graph.extract(&cut, &[velocity.as_str()])?;
    g.set_name(&format!("{}_pixel_level", graph.name()));
    Ok(g)
}

/// Writes the pixel level of `graph` next to the whole model at `path`.
fn write_pixel_level(
    graph: &Graph,
    meta: &ModelMetadata,
    split: &PatchSplit,
    path: &Path,
    external: ExternalData,
) -> Result<WriteReport> {
    let g = pixel_level_graph(graph, split)?;
    let wopts = WriteOptions {
        external,
        producer: ("pixeldit-exporter", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    let pixel_path = pixeldit_spec::pixel_level_path(path);
    Ok(pixeldit_graph::write_model(
        &g,
        &pixel_path,
        &wopts,
        |_, props| {
            props.push((META_KEY.to_string(), meta.to_json()));
            props.push((PIXEL_LEVEL_KEY.to_string(), split.cut.to_string()));
        },
    )?)
}

/// Removes the files of a write (best effort; used when a later part of an export fails).
fn remove_written(r: &WriteReport) {
    let _ = std::fs::remove_file(&r.model_path);
    if let Some(p) = &r.external_path {
        let _ = std::fs::remove_file(p);
    }
}

/// Exports an fp32 or fp16 model to `path`. The quantized variants (bf16, int8, fp8, weight-only) are graph
/// rewrites of the fp32 graph ([`build_graph`] with [`Precision::Fp32`]) by `pixeldit-quantize`, orchestrated by
/// `pixeldit-cli` (calibration runs the model); asking this crate for them is [`ExportError::Unsupported`].
pub fn export_to_file(opts: &ExportOptions, path: &Path) -> Result<ExportReport> {
    export_with_progress(opts, path, None)
}

/// [`export_to_file`] with a per-tensor progress callback.
pub fn export_with_progress(
    opts: &ExportOptions,
    path: &Path,
    progress: Option<Progress>,
) -> Result<ExportReport> {
    if !matches!(opts.precision, Precision::Fp32 | Precision::Fp16) {
        return Err(ExportError::Unsupported(format!(
            "precision {} is a quantized variant: export it with pixeldit-export (pixeldit-cli), which calibrates \
             and quantizes the fp32 graph",
            opts.precision
        )));
    }
    let (weights, keys) = load_weights(opts)?;
    let graph = build_graph(opts, &weights)?;
    let (write, metadata, pixel_level) = write_graph(&graph, opts, &weights, path, progress, None)?;
    Ok(ExportReport {
        write,
        keys,
        metadata,
        nodes: graph.nodes().len(),
        pixel_level,
    })
}

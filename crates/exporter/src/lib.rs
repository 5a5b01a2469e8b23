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
mod error;
pub mod model;
pub mod nn;
pub mod weights;

pub use error::{ExportError, Result};
pub use pixeldit_graph::ExternalData;
pub use weights::{KeyReport, Weights};

use pixeldit_graph::{DType, Graph, Progress, WriteOptions, WriteReport};
use pixeldit_spec::{
    AttentionMode, DynamicSize, ModelConfig, ModelMetadata, Precision, SamplerDefaults, META_FORMAT_VERSION,
    META_KEY,
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
    /// Weights.
    pub weights: WeightsSpec,
    /// External-data policy.
    pub external_data: ExternalData,
    /// Sampler defaults written to the metadata (the config's when `None`).
    pub sampler: Option<SamplerDefaults>,
    /// A dynamic image size (symbolic `H`, `W`; `height x width` is then the default size, which must be inside
    /// the range). `None`: the size is fixed.
    pub dynamic: Option<DynamicSize>,
}

impl ExportOptions {
    /// Defaults: the config's default size, fp32, custom attention, automatic external data.
    pub fn new(config: ModelConfig, weights: WeightsSpec) -> Self {
        ExportOptions {
            height: config.default_height,
            width: config.default_width,
            config,
            precision: Precision::Fp32,
            attention: AttentionMode::Custom,
            weights,
            external_data: ExternalData::Auto,
            sampler: None,
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
}

/// Opens the weights of an export and checks them against the model before anything is written: the graph is
/// built once, and every key is checked where the model files read it (all missing keys are listed at once);
/// returns the unused and dropped keys.
pub fn load_weights(opts: &ExportOptions) -> Result<(Weights, KeyReport)> {
    let weights = match &opts.weights {
        WeightsSpec::Checkpoint(p) => Weights::from_checkpoint(p)?,
        WeightsSpec::RandomInit { seed } => Weights::random(*seed),
    };
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

/// Builds the graph of an export (no file is written).
pub fn build_graph(opts: &ExportOptions, weights: &Weights) -> Result<Graph> {
    build_graph_and_report(opts, weights).map(|(g, _)| g)
}

/// [`build_graph`] and the key report of the weights.
pub fn build_graph_and_report(opts: &ExportOptions, weights: &Weights) -> Result<(Graph, KeyReport)> {
    opts.config.check_size(opts.height, opts.width)?;
    let mut cx = nn::Ctx::new(
        weights,
        linear_dtype(opts.precision),
        opts.attention,
        opts.config.norm_eps as f32,
    );
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
    let (mut g, report) = model::build_graph(cx, &opts.config, opts.height, opts.width)?;
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

/// The metadata of an export, with the weight hash filled in by the writer.
pub fn metadata(opts: &ExportOptions, weights: &Weights, weights_sha256: &str) -> ModelMetadata {
    ModelMetadata {
        format_version: META_FORMAT_VERSION,
        config: opts.config.clone(),
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
        dynamic: opts.dynamic.clone(),
    }
}

/// Writes a built graph with its metadata; `progress` is called per tensor.
pub fn write_graph(
    graph: &Graph,
    opts: &ExportOptions,
    weights: &Weights,
    path: &Path,
    progress: Option<Progress>,
    quantization: Option<serde_json::Value>,
) -> Result<(WriteReport, ModelMetadata)> {
    let wopts = WriteOptions {
        external: opts.external_data,
        progress,
        producer: ("pixeldit-exporter", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    let mut meta_out = None;
    let report = pixeldit_graph::write_model(graph, path, &wopts, |r, props| {
        let mut meta = metadata(opts, weights, &r.weights_sha256);
        meta.quantization = quantization;
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
        meta_out = Some(meta);
    })?;
    Ok((report, meta_out.expect("finalize ran")))
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
    let (write, metadata) = write_graph(&graph, opts, &weights, path, progress, None)?;
    Ok(ExportReport {
        write,
        keys,
        metadata,
        nodes: graph.nodes().len(),
    })
}

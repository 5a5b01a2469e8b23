//! BF16, INT8 and FP8 variants of an exported PixelDiT graph, as graph passes over a [`pixeldit_graph::Graph`].
//!
//! * **Which layers**: every Linear (`Gemm` on a checkpoint weight) is found by its scope, the checkpoint module
//!   path; fnmatch globs select them ([`select`]). INT8/FP8 keep the embedders, the final layer and the pixel MLP
//!   in f32 by default ([`config::DEFAULT_EXCLUDE`]); norms, softmax and RoPE are never touched; INT8/FP8 mark the
//!   custom attention ops to round their product operands to bf16 ([`passes::attention`]).
//! * **How**: weights per output channel (axis 0 of `[out, in]`), activations per tensor with zero point 0, as
//!   explicit `QuantizeLinear`/`DequantizeLinear` ([`passes::qdq`]); weight-only variants dequantize the weights
//!   and keep f32 math; BF16 stores weights as bfloat16 and rounds activations ([`passes::bf16`]).
//! * **Scales**: weights from their own maxima; activations from timestep-aware calibration statistics
//!   ([`calib`]: taps, per-forward observation, per-t ranges) that a driver collects by running the tapped fp32
//!   model through the runtime's sampler (`pixeldit-cli`'s `calibrate`); this crate never runs a model.
//!
//! Module map:
//! * [`config`]: [`QuantConfig`] (format, activations, globs, calibration and SmoothQuant settings).
//! * [`select`]: finds the Linear layers by scope and matches the fnmatch globs.
//! * [`calib`]: calibration taps and statistics ([`Calibration`], [`calib::TensorStats`]).
//! * [`scales`]: weight and activation scales (max, percentile, SmoothQuant).
//! * [`passes`]: the graph rewrites (`qdq`, `bf16`, `attention`, `opset`).
//!
//! The crate depends on `pixeldit-graph` and `pixeldit-spec` only.
//!
//! ```no_run
//! # fn demo(mut graph: pixeldit_graph::Graph, calibration: pixeldit_quantize::Calibration)
//! #         -> pixeldit_quantize::Result<()> {
//! use pixeldit_quantize::{apply, QuantConfig};
//! use pixeldit_spec::Precision;
//! let cfg = QuantConfig::for_precision(Precision::Fp8).expect("fp8 is quantized");
//! let summary = apply(&mut graph, &cfg, Some(calibration))?; // inserts Q/DQ with the calibrated ranges
//! println!("{}", summary.to_json());
//! # Ok(()) }
//! ```

pub mod calib;
pub mod config;
mod error;
pub mod passes;
pub mod scales;
pub mod select;

pub use calib::{add_taps, Calibration, TensorStats};
pub use config::{CalibConfig, CalibMethod, Format, QuantConfig};
pub use error::{QuantizeError, Result};
pub use passes::qdq::LayerReport;
pub use select::{find_linears, fnmatch, is_selected, Linear};

use pixeldit_graph::Graph;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a quantization did: settings, layers, scales and the calibration. Stored as JSON in the model metadata
/// (`quantization`) and beside the model.
#[derive(Debug, Clone, Serialize)]
pub struct QuantSummary {
    /// The settings.
    pub config: QuantConfig,
    /// Element type of the stored weights (`bfloat16`, `int8`, `float8e4m3fn`).
    pub weight_dtype: &'static str,
    /// Granularity of weight scales.
    pub weight_granularity: &'static str,
    /// Element type the activations are quantized to (`None` for weight-only).
    pub activation_dtype: Option<&'static str>,
    /// Granularity of activation scales.
    pub activation_granularity: Option<&'static str>,
    /// Default-domain opset of the result.
    pub opset: i64,
    /// Scopes of the rewritten layers.
    pub quantized: Vec<String>,
    /// Scopes of the Linear layers left in f32.
    pub kept: Vec<String>,
    /// Scales per rewritten layer (INT8/FP8).
    pub layers: BTreeMap<String, LayerReport>,
    /// Operand precision of the custom attention ops' products (`bf16` where [`QuantConfig::attention_bf16`] set
    /// it on at least one node, else `f32`).
    pub attention_matmul: &'static str,
    /// The calibration, when activations are quantized.
    pub calibration: Option<Calibration>,
}

impl QuantSummary {
    /// Compact JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("summary serializes")
    }
}

/// The Linear layers of `g` split into (selected, kept) by `cfg`.
pub fn partition(g: &Graph, cfg: &QuantConfig) -> (Vec<Linear>, Vec<Linear>) {
    find_linears(g)
        .into_iter()
        .partition(|l| is_selected(&l.scope, cfg))
}

/// Applies `cfg` to the fp32 graph `g` with an existing calibration (required when activations are quantized).
pub fn apply(g: &mut Graph, cfg: &QuantConfig, calibration: Option<Calibration>) -> Result<QuantSummary> {
    cfg.validate()?;
    let (mut selected, mut kept) = partition(g, cfg);
    if cfg.format == Format::Mxfp8 {
        // Blocks of 32 along the input: other widths stay f32.
        let (ok, narrow): (Vec<Linear>, Vec<Linear>) = selected
            .into_iter()
            .partition(|l| l.in_features % passes::mx::BLOCK == 0);
        selected = ok;
        kept.extend(narrow);
    }
    if cfg.needs_calibration() && calibration.is_none() {
        return Err(QuantizeError::Invalid(format!(
            "precision {} quantizes activations and needs a calibration",
            cfg.precision
        )));
    }
    if cfg.format == Format::Fp8 {
        passes::opset::upgrade_opset(g, 19)?;
    }
    if cfg.format == Format::Mxfp8 {
        // Blocked DequantizeLinear (`block_size`).
        passes::opset::upgrade_opset(g, 21)?;
    }
    let mut layers = BTreeMap::new();
    for l in &selected {
        match cfg.format {
            Format::Bf16 => passes::bf16::bf16_linear(g, l, cfg.activations)?,
            Format::Mxfp8 => {
                let r = passes::mx::mx_linear(g, l)?;
                layers.insert(l.scope.clone(), r);
            }
            Format::Int8 | Format::Fp8 => {
                let stats = calibration
                    .as_ref()
                    .filter(|_| cfg.activations)
                    .map(|c| {
                        c.layers
                            .get(&l.scope)
                            .ok_or_else(|| QuantizeError::MissingStats(l.scope.clone()))
                    })
                    .transpose()?;
                let r = passes::qdq::qdq_linear(g, l, cfg, stats)?;
                layers.insert(l.scope.clone(), r);
            }
        }
    }
    let attention_nodes = if cfg.attention_bf16 {
        passes::attention::round_attention_matmuls_to_bf16(g)
    } else {
        0
    };
    g.sort_nodes()?;
    let (weight_dtype, act) = match cfg.format {
        Format::Bf16 => ("bfloat16", "bfloat16 (rounded)"),
        Format::Int8 => ("int8", "int8"),
        Format::Fp8 | Format::Mxfp8 => ("float8e4m3fn", "float8e4m3fn"),
    };
    let weight_granularity = match cfg.format {
        Format::Bf16 => "element",
        Format::Mxfp8 => "blocks of 32 inputs (axis 1 of [out, in]), power-of-two scales",
        _ => "per output channel (axis 0 of [out, in])",
    };
    Ok(QuantSummary {
        config: cfg.clone(),
        weight_dtype,
        weight_granularity,
        activation_dtype: cfg.activations.then_some(act),
        activation_granularity: cfg.activations.then_some(match cfg.format {
            Format::Bf16 => "element",
            _ => "per tensor, zero point 0",
        }),
        opset: g.opset(),
        quantized: selected.into_iter().map(|l| l.scope).collect(),
        kept: kept.into_iter().map(|l| l.scope).collect(),
        layers,
        attention_matmul: if attention_nodes > 0 { "bf16" } else { "f32" },
        calibration,
    })
}

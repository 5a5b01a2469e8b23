//! What a variant does: the number format, weight-only or weights + activations, the layer globs, how the
//! activation scales are chosen and how calibration runs.

use crate::{QuantizeError, Result};
use pixeldit_spec::Precision;
use serde::Serialize;

/// Layers kept in high precision unless a user `include` glob names them (INT8 / FP8 variants): the embedders
/// (small, and they see raw pixels / sinusoids), the final layer (it writes `v` directly) and the pixel MLP
/// (16 -> 64 -> 16, tiny matrices where per-tensor activation scales cost the most accuracy).
pub const DEFAULT_EXCLUDE: &[&str] = &[
    "t_embedder.*",
    "y_embedder.*",
    "s_embedder.*",
    "pixel_embedder.*",
    "final_layer.*",
    "pixel_blocks.*.mlp.*",
];

/// Largest FP8 E4M3 (`float8e4m3fn`) value.
pub const FP8_MAX: f32 = 448.0;
/// Largest INT8 magnitude used for activations (symmetric, zero point 0).
pub const INT8_MAX: f32 = 127.0;
/// INT8 weight range for the reduced-range (7-bit) encoding: a `u8 x s8` pair sum `2 * 255 * 63` fits in i16,
/// so integer kernels that accumulate pairs in 16 bits (AVX2 without VNNI) cannot saturate.
pub const INT8_REDUCED_MAX: f32 = 63.0;

/// SmoothQuant alpha of the INT8 (weights + activations) variant. Measured on the `digits` model: sample PSNR vs
/// fp32 33.5 dB without smoothing, 35.0 / 38.2 / 37.2 / 37.7 dB with alpha 0.3 / 0.5 / 0.7 / 0.8 (the pixel-wise
/// adaLN input, SiLU(t_emb + s), has a few large channels that a per-tensor int8 scale cannot cover).
pub const DEFAULT_SMOOTHQUANT_ALPHA: f32 = 0.5;

/// The number format of a variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// bfloat16 weights (Cast to f32) and bf16-rounded activations at the Linear inputs; f32 accumulation.
    Bf16,
    /// Symmetric INT8 (zero point 0).
    Int8,
    /// FP8 E4M3 (`float8e4m3fn`, saturating).
    Fp8,
    /// MXFP8: FP8 E4M3 with one power-of-two scale per block of 32 inputs (weights only).
    Mxfp8,
}

/// How a per-tensor activation range is chosen from the calibration statistics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "value")]
pub enum CalibMethod {
    /// The largest |x| seen in any forward.
    Max,
    /// The largest per-forward percentile of |x| (e.g. 99.99): outliers of a single step are clipped, but the
    /// range still covers every timestep's bulk.
    Percentile(f64),
}

impl std::str::FromStr for CalibMethod {
    type Err = QuantizeError;
    fn from_str(s: &str) -> Result<Self> {
        if s == "max" {
            return Ok(CalibMethod::Max);
        }
        let p = s
            .strip_prefix("percentile")
            .unwrap_or(s)
            .trim_start_matches([':', '=']);
        match p.parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 100.0 => Ok(CalibMethod::Percentile(v)),
            _ => Err(QuantizeError::Invalid(format!(
                "calibration method '{s}': expected max or percentile:P with 0 < P <= 100 (e.g. percentile:99.99)"
            ))),
        }
    }
}

impl std::fmt::Display for CalibMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CalibMethod::Max => f.write_str("max"),
            CalibMethod::Percentile(p) => write!(f, "percentile:{p}"),
        }
    }
}

/// How calibration samples: the fp32 model runs through the real sampler (CFG batches, the model's time grid)
/// for every seed, with all classes in one batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CalibConfig {
    /// Class labels; empty means up to 8 classes spread evenly over the model's classes.
    pub classes: Vec<i64>,
    /// Noise seeds (one sampler run each).
    pub seeds: Vec<u64>,
    /// Sampler steps; `None` means the model's default, capped at 25.
    pub steps: Option<usize>,
    /// CFG scale; `None` means the model's default.
    pub cfg_scale: Option<f32>,
    /// Percentile recorded next to the max (and used by [`CalibMethod::Percentile`]).
    pub percentile: f64,
}

impl Default for CalibConfig {
    fn default() -> Self {
        CalibConfig {
            classes: Vec::new(),
            seeds: vec![0, 1],
            steps: None,
            cfg_scale: None,
            percentile: 99.99,
        }
    }
}

/// Everything one quantized variant needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantConfig {
    /// The precision written to the metadata.
    pub precision: Precision,
    /// Number format.
    pub format: Format,
    /// Whether activations are quantized (Q/DQ on the Linear inputs) or only weights (`*-weights` variants).
    pub activations: bool,
    /// User globs that select layers (win over everything).
    pub include: Vec<String>,
    /// User globs that keep layers in f32 (win over the defaults).
    pub exclude: Vec<String>,
    /// The format's default excludes ([`DEFAULT_EXCLUDE`], none for bf16).
    pub default_exclude: Vec<String>,
    /// Activation range choice.
    pub method: CalibMethod,
    /// Largest INT8 weight magnitude: 63 (reduced range, default for INT8 Q/DQ) or 127.
    pub int8_weight_qmax: f32,
    /// SmoothQuant migration strength alpha (INT8/FP8 with activations), `None` for off
    /// ([`DEFAULT_SMOOTHQUANT_ALPHA`] for INT8, off for FP8).
    pub smoothquant: Option<f32>,
    /// Calibration settings.
    pub calib: CalibConfig,
    /// Whether the custom attention ops (`pixeldit.RotaryAttention`, `JointRotaryAttention`) get
    /// `matmul_precision = "bf16"`: q, k, the probabilities and v rounded to bf16 around f32 sums. Default: on for
    /// INT8/FP8 with quantized activations, off otherwise. Graphs with standard-op attention are not affected.
    pub attention_bf16: bool,
}

impl QuantConfig {
    /// The defaults of a precision; `None` for fp32 and fp16, which the exporter writes directly.
    pub fn for_precision(precision: Precision) -> Option<Self> {
        let (format, activations) = match precision {
            Precision::Fp32 | Precision::Fp16 => return None,
            Precision::Bf16 => (Format::Bf16, true),
            Precision::Int8 => (Format::Int8, true),
            Precision::Fp8 => (Format::Fp8, true),
            Precision::Int8Weights => (Format::Int8, false),
            Precision::Fp8Weights => (Format::Fp8, false),
            Precision::Mxfp8Weights => (Format::Mxfp8, false),
        };
        let default_exclude = if format == Format::Bf16 {
            Vec::new()
        } else {
            DEFAULT_EXCLUDE.iter().map(|s| s.to_string()).collect()
        };
        Some(QuantConfig {
            precision,
            format,
            activations,
            include: Vec::new(),
            exclude: Vec::new(),
            default_exclude,
            method: match format {
                Format::Int8 => CalibMethod::Percentile(99.99),
                _ => CalibMethod::Max,
            },
            int8_weight_qmax: if activations { INT8_REDUCED_MAX } else { INT8_MAX },
            smoothquant: (precision == Precision::Int8).then_some(DEFAULT_SMOOTHQUANT_ALPHA),
            calib: CalibConfig::default(),
            attention_bf16: activations && matches!(format, Format::Int8 | Format::Fp8),
        })
    }

    /// Whether this variant needs activation statistics (a calibration run).
    pub fn needs_calibration(&self) -> bool {
        self.activations && self.format != Format::Bf16
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(QuantizeError::Invalid(m));
        if self.format == Format::Mxfp8 && self.activations {
            return bad("MXFP8 quantizes weights only".into());
        }
        if !(1.0..=127.0).contains(&self.int8_weight_qmax) {
            return bad(format!(
                "INT8 weight range {} is not in 1..=127",
                self.int8_weight_qmax
            ));
        }
        if let Some(a) = self.smoothquant {
            if !(0.0..=1.0).contains(&a) {
                return bad(format!("SmoothQuant alpha {a} is not in [0, 1]"));
            }
            if !self.needs_calibration() {
                return bad(format!(
                    "SmoothQuant needs quantized activations; precision {} has none",
                    self.precision
                ));
            }
        }
        if self.calib.seeds.is_empty() {
            return bad("calibration needs at least one seed".into());
        }
        if self.calib.steps == Some(0) {
            return bad("calibration needs at least one step".into());
        }
        if !(self.calib.percentile > 0.0 && self.calib.percentile <= 100.0) {
            return bad(format!("percentile {} is not in (0, 100]", self.calib.percentile));
        }
        Ok(())
    }

    /// Largest quantized magnitude of the weights.
    pub fn weight_qmax(&self) -> f32 {
        match self.format {
            Format::Int8 => self.int8_weight_qmax,
            Format::Fp8 | Format::Mxfp8 => FP8_MAX,
            Format::Bf16 => f32::INFINITY,
        }
    }

    /// Largest quantized magnitude of the activations.
    pub fn activation_qmax(&self) -> f32 {
        match self.format {
            Format::Int8 => INT8_MAX,
            Format::Fp8 | Format::Mxfp8 => FP8_MAX,
            Format::Bf16 => f32::INFINITY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduced_int8_weights_cannot_saturate_16_bit_pair_sums() {
        // AVX2 u8 x s8 kernels (vpmaddubsw) add two products into a saturating i16.
        let pair = |w: f32| 2.0 * 255.0 * w;
        assert!(pair(INT8_REDUCED_MAX) <= i16::MAX as f32);
        assert!(pair(INT8_MAX) > i16::MAX as f32);
    }

    #[test]
    fn methods_parse() {
        assert_eq!("max".parse::<CalibMethod>().unwrap(), CalibMethod::Max);
        assert_eq!(
            "percentile:99.9".parse::<CalibMethod>().unwrap(),
            CalibMethod::Percentile(99.9)
        );
        assert!("percentile:0".parse::<CalibMethod>().is_err());
        assert!("mse".parse::<CalibMethod>().is_err());
    }

    #[test]
    fn defaults_per_precision() {
        assert!(QuantConfig::for_precision(Precision::Fp16).is_none());
        let q = QuantConfig::for_precision(Precision::Int8).unwrap();
        assert_eq!(
            (q.format, q.activations, q.int8_weight_qmax),
            (Format::Int8, true, 63.0)
        );
        let q = QuantConfig::for_precision(Precision::Int8Weights).unwrap();
        assert_eq!((q.activations, q.int8_weight_qmax), (false, 127.0));
        assert!(!q.needs_calibration());
        assert!(QuantConfig::for_precision(Precision::Bf16)
            .unwrap()
            .default_exclude
            .is_empty());
        // bf16 attention operands only where the activations are quantized to 8 bits.
        for (p, bf16) in [
            (Precision::Int8, true),
            (Precision::Fp8, true),
            (Precision::Int8Weights, false),
            (Precision::Fp8Weights, false),
            (Precision::Bf16, false),
        ] {
            assert_eq!(QuantConfig::for_precision(p).unwrap().attention_bf16, bf16, "{p}");
        }
    }
}

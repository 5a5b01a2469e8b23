//! Shared description of a PixelDiT model, used by the exporter, the quantizer and the runtime.
//!
//! * [`ModelConfig`]: every hyper-parameter of one model, see `shared/docs/pixeldit-architecture.md` section 1.
//! * [`presets`]: the embedded presets ([`PRESETS`], [`TEXT_ENCODER_PRESETS`]): name, JSON, shipped weights.
//! * [`ModelMetadata`]: what the exporter writes into the ONNX `metadata_props` (key [`META_KEY`]) so that
//!   `pixeldit-run model.onnx` needs nothing else.
//! * [`io`]: the input/output contract of the exported graph (`x`, `t`, `y` -> `v`).
//! * [`text_encoder`]: the contract and metadata of an exported text encoder (Gemma-2).
//! * [`custom_op`]: the exact semantics of the fused attention ops in domain `pixeldit` and their attribute
//!   defaults.
//! * [`Precision`], [`AttentionMode`]: the string enums (one definition each; `clap::ValueEnum` with the `clap`
//!   feature).
//!
//! Every other crate depends on this one; it depends on none of them.

pub mod custom_op;
pub mod flops;
pub mod io;
pub mod presets;
pub mod text_encoder;

pub use presets::{Preset, PRESETS, TEXT_ENCODER_PRESETS};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Errors of the shared model description.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// A preset name that is not one of [`PRESETS`].
    #[error("unknown preset '{name}': expected one of {known}")]
    UnknownPreset { name: String, known: String },
    /// A JSON document (preset or metadata) that does not parse.
    #[error("invalid {what} JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A configuration whose values are inconsistent.
    #[error("invalid model configuration '{name}': {reason}")]
    InvalidConfig { name: String, reason: String },
    /// An image size a model cannot run at (not a multiple, out of the exported range, or another size than a
    /// static export's).
    #[error("{0}")]
    InvalidSize(String),
    /// A value of an enumerated option that is not known.
    #[error("unknown {what} '{value}': expected one of {expected}")]
    UnknownValue {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// Parses JSON into `T`; errors say `what` was being read.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(what: &'static str, json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|source| SpecError::Json { what, source })
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, SpecError>;

/// ONNX `metadata_props` key holding the JSON of [`ModelMetadata`].
pub const META_KEY: &str = "pixeldit.metadata";
/// Version of the metadata layout; bumped on incompatible changes.
pub const META_FORMAT_VERSION: u32 = 1;
/// ONNX domain of the custom ops.
pub const CUSTOM_DOMAIN: &str = "pixeldit";

/// Sampler defaults stored with a model (spec section 4.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplerDefaults {
    /// Sampler name: `flow_dpm` (official: Euler then 2-step Adams-Bashforth), `euler` or `heun`.
    pub name: String,
    /// Number of steps.
    pub steps: usize,
    /// Classifier-free guidance weight.
    pub cfg_scale: f32,
    /// CFG is applied only for `lo < t < hi` (strict, data-time t in [0,1]).
    pub guidance_interval: [f32; 2],
    /// Time shift s of the grid t/(t+(1-t)s).
    pub time_shift: f32,
}

/// Model kind: class-conditional (ImageNet) or text-to-image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Class-conditional model, inputs `x`, `t`, `y`.
    C2i,
    /// Text-to-image model (MM-DiT patch blocks).
    T2i,
}

/// Text conditioning of a text-to-image model (spec section 5.1, stage-3 yaml `model.extra`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    /// Width of the text-encoder hidden states (`txt_embed_dim`, 2304 for Gemma-2-2B-IT).
    pub embed_dim: usize,
    /// Number of text tokens (`txt_max_length`, 300); the graph input is `[B, max_length, embed_dim]`.
    pub max_length: usize,
    /// Base of the 1D text RoPE (`text_rope_theta`).
    pub rope_theta: f64,
}

/// Every hyper-parameter of one PixelDiT model. Field names follow the official configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Preset name (`tiny`, `B`, `L`, `XL-256`, `XL-512`, ...).
    pub name: String,
    /// One line for humans.
    #[serde(default)]
    pub description: String,
    /// Model kind.
    pub kind: ModelKind,
    /// Patch-level hidden size D.
    pub hidden_size: usize,
    /// Patch-level attention heads (`num_groups` in the official yaml).
    pub num_heads: usize,
    /// Number of patch-level blocks N.
    pub patch_depth: usize,
    /// Number of pixel-level (PiT) blocks M.
    pub pixel_depth: usize,
    /// Pixel hidden size D_pix (16 in every released model).
    pub pixel_hidden_size: usize,
    /// Width A of the PiT attention (equal to D for the C2I models).
    pub pixel_attn_hidden_size: usize,
    /// Heads of the PiT attention.
    pub pixel_num_heads: usize,
    /// Pixel MLP expansion (16 -> 64 -> 16).
    pub pixel_mlp_ratio: usize,
    /// Patch size p (16).
    pub patch_size: usize,
    /// Image channels (3).
    pub in_channels: usize,
    /// Number of classes; the null class for CFG is `num_classes` itself.
    pub num_classes: usize,
    /// Sinusoidal timestep embedding width (256).
    pub timestep_freq_dim: usize,
    /// max_period of the timestep embedding (10, not 10000).
    pub timestep_max_period: f64,
    /// RoPE base theta.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Default export height.
    pub default_height: usize,
    /// Default export width.
    pub default_width: usize,
    /// Text conditioning (text-to-image models only; absent from C2I configs and their metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextConfig>,
    /// Post-modulation PiT blocks (official `pit_adaln_post_modulation`, shared docs
    /// `checkpoints-in-the-wild.md` section 2): the pixel-wise adaLN has 4 chunks (scale1, shift1, scale2, shift2)
    /// that modulate the branch outputs, without gates. The exporter detects it from a checkpoint's
    /// `pixel_blocks.i.adaLN_modulation.0` row count; absent from the JSON when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pit_adaln_post_modulation: bool,
    /// Sampler defaults.
    pub sampler: SamplerDefaults,
}

impl ModelConfig {
    /// Loads an embedded preset ([`PRESETS`]) by name or alias (`XL` is an alias of `XL-256`).
    pub fn preset(name: &str) -> Result<Self> {
        let preset = Preset::find(PRESETS, name).ok_or_else(|| SpecError::UnknownPreset {
            name: name.to_string(),
            known: Preset::list(PRESETS),
        })?;
        Self::from_json(preset.json)
    }

    /// Parses and validates a configuration from JSON.
    pub fn from_json(json: &str) -> Result<Self> {
        let cfg: Self = parse_json("model config", json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the structural constraints (divisibility of heads, RoPE pairs, ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(SpecError::InvalidConfig {
                name: self.name.clone(),
                reason,
            })
        };
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return bad(format!(
                "hidden_size {} not divisible by num_heads {}",
                self.hidden_size, self.num_heads
            ));
        }
        if self.pixel_num_heads == 0 || !self.pixel_attn_hidden_size.is_multiple_of(self.pixel_num_heads) {
            return bad(format!(
                "pixel_attn_hidden_size {} not divisible by pixel_num_heads {}",
                self.pixel_attn_hidden_size, self.pixel_num_heads
            ));
        }
        if !self.head_dim().is_multiple_of(4) || !self.pixel_head_dim().is_multiple_of(4) {
            return bad("2D RoPE needs head dims divisible by 4".into());
        }
        if !self.timestep_freq_dim.is_multiple_of(2) || self.patch_size == 0 {
            return bad("timestep_freq_dim must be even and patch_size non-zero".into());
        }
        if !self.default_height.is_multiple_of(self.patch_size)
            || !self.default_width.is_multiple_of(self.patch_size)
        {
            return bad("default size must be a multiple of the patch size".into());
        }
        match (self.kind, &self.text) {
            (ModelKind::T2i, None) => return bad("a t2i model needs a `text` section".into()),
            (ModelKind::C2i, Some(_)) => return bad("a c2i model has no `text` section".into()),
            (ModelKind::T2i, Some(t)) if t.embed_dim == 0 || t.max_length == 0 => {
                return bad("text embed_dim and max_length must be positive".into())
            }
            _ => {}
        }
        Ok(())
    }

    /// Patch-level head dim D / heads.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// PiT attention head dim A / heads.
    pub fn pixel_head_dim(&self) -> usize {
        self.pixel_attn_hidden_size / self.pixel_num_heads
    }
    /// SwiGLU hidden F = int(2 * 4D / 3).
    pub fn mlp_hidden(&self) -> usize {
        2 * (4 * self.hidden_size) / 3
    }
    /// Pixels per patch p^2.
    pub fn patch_pixels(&self) -> usize {
        self.patch_size * self.patch_size
    }
    /// Chunks of the PiT blocks' pixel-wise adaLN: 4 with post-modulation, else 6.
    pub fn pit_modulation_chunks(&self) -> usize {
        if self.pit_adaln_post_modulation {
            4
        } else {
            6
        }
    }
    /// Null class label used for CFG.
    pub fn null_class(&self) -> i64 {
        self.num_classes as i64
    }
    /// Checks that an image size can be exported (multiples of the patch size, non-zero).
    pub fn check_size(&self, height: usize, width: usize) -> Result<()> {
        let p = self.patch_size;
        if height == 0 || width == 0 || !height.is_multiple_of(p) || !width.is_multiple_of(p) {
            return Err(SpecError::InvalidConfig {
                name: self.name.clone(),
                reason: format!(
                    "image size {height}x{width} must be non-zero multiples of the patch size {p}"
                ),
            });
        }
        Ok(())
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $what:literal, { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
        pub enum $name { $($(#[$vm])* #[serde(rename = $s)] #[cfg_attr(feature = "clap", value(name = $s))] $var),+ }
        impl $name {
            /// All values, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            /// The canonical spelling.
            pub fn as_str(&self) -> &'static str { match self { $($name::$var => $s),+ } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = SpecError;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(SpecError::UnknownValue {
                        what: $what, value: s.to_string(), expected: concat!($($s, " "),+)
                    }),
                }
            }
        }
    };
}

string_enum!(
    /// Numeric precision of an exported variant.
    Precision, "precision", {
        /// Full fp32.
        Fp32 => "fp32",
        /// fp16 weights and matmuls; norms, softmax, RoPE and the timestep embedding in fp32.
        Fp16 => "fp16",
        /// bf16 weights and matmuls, same fp32 islands as fp16.
        Bf16 => "bf16",
        /// INT8 Q/DQ on the big linears (weights per channel, activations per tensor).
        Int8 => "int8",
        /// FP8 E4M3 Q/DQ on the big linears.
        Fp8 => "fp8",
        /// INT8 weights with DequantizeLinear, fp32 math.
        Int8Weights => "int8-weights",
        /// FP8 E4M3 weights with DequantizeLinear, fp32 math.
        Fp8Weights => "fp8-weights",
        /// MXFP8 weights: E4M3 with one power-of-two scale per 32 inputs (blocked DequantizeLinear, opset 21),
        /// fp32 math; an MXFP8 checkpoint's weights keep their values exactly.
        Mxfp8Weights => "mxfp8-weights",
    }
);

string_enum!(
    /// How attention (QK-RMSNorm + 2D RoPE + SDPA) is written in the graph.
    AttentionMode, "attention mode", {
        /// One `pixeldit.RotaryAttention` node per attention (see [`custom_op`]).
        Custom => "custom",
        /// Standard opset-23 `RMSNormalization`, `RotaryEmbedding` and `Attention`.
        Onnx23 => "onnx23",
        /// Opset-17 primitives (MatMul, Softmax, ...), for TensorRT and older runtimes.
        Decomposed => "decomposed",
    }
);

string_enum!(
    /// How the per-pixel work of the PiT blocks (modulation, gated residuals, MLP) is written in the graph.
    #[derive(Default)]
    PixelOps, "pixel ops", {
        /// Standard ops (Split, RMSNorm, Mul/Add, Gemm, Erf): every consumer runs it.
        #[default]
        Standard => "standard",
        /// `pixeldit.PixelModulate` and `pixeldit.PixelGatedMlp` (see [`custom_op`]): one pass per pixel, for the
        /// runtimes with the project's kernels (ORT and tract in `pixeldit-run`); the patch level's RMSNorm +
        /// modulation become `pixeldit.RmsNormModulate` too.
        Fused => "fused",
    }
);

impl PixelOps {
    /// Whether this is [`PixelOps::Standard`] (the metadata leaves the field out then).
    pub fn is_standard(&self) -> bool {
        *self == PixelOps::Standard
    }
}

/// Everything `pixeldit-run` needs to know about an exported model, stored as JSON under [`META_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// [`META_FORMAT_VERSION`] at export time.
    pub format_version: u32,
    /// The full model configuration.
    pub config: ModelConfig,
    /// Exported image height (fixed per export).
    pub height: usize,
    /// Exported image width (fixed per export).
    pub width: usize,
    /// Numeric precision of this variant.
    pub precision: Precision,
    /// Attention lowering.
    pub attention: AttentionMode,
    /// How the PiT blocks' per-pixel work is written (absent: standard ops).
    #[serde(default, skip_serializing_if = "PixelOps::is_standard")]
    pub pixel_ops: PixelOps,
    /// Sampler defaults (copied from the config, may be overridden at export).
    pub sampler: SamplerDefaults,
    /// SHA-256 of the fp32 weights (key, shape and bytes in key order), hex.
    pub weights_sha256: String,
    /// Where the weights came from (`checkpoint` or `random-init:seed=<n>`); `weights_sha256` identifies them.
    pub weights_source: String,
    /// Version of the exporter that wrote the file.
    pub exporter_version: String,
    /// Quantization settings and scales, when the variant is quantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
    /// The patch-level split for the step cache, when the export has one ([`PatchSplit`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_split: Option<PatchSplit>,
    /// The accepted sizes of a dynamic-size export (`height x width` is then its default size); absent for a
    /// static export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dynamic: Option<DynamicSize>,
}

string_enum!(
    /// Where the step cache cuts the model between its patch level and its pixel level.
    PatchCut, "patch-cache cut", {
        /// The patch tokens `s` after the last patch block, before `SiLU(t_emb + s)`: the pixel level adds the
        /// current step's timestep embedding to the cached tokens.
        Tokens => "tokens",
        /// The pixel conditioning `s_cond = SiLU(t_emb + s)`: the cached value carries the timestep of the step
        /// that computed it.
        Cond => "cond",
        /// The output of every PiT block's pixel-wise adaLN projection (a function of `s_cond` only): cached
        /// forwards also skip those projections, the most expensive part of the pixel level. Tensors
        /// `<tensor>.<block>`.
        Modulation => "modulation",
    }
);

/// How an export supports the patch-level step cache: the whole model also outputs the tensor at the cut, and a
/// second graph, the pixel level alone, takes it as an input (with `x` and, for the `tokens` cut, `t`). The
/// pixel-level graph is the file [`pixel_level_path`] beside the model (no file name is stored, so that exports
/// are byte-identical whatever they are called).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchSplit {
    /// Where the model is cut.
    pub cut: PatchCut,
    /// Name of the cut tensor: an extra output of the whole model, an input of the pixel-level graph (for
    /// [`PatchCut::Modulation`] the prefix of one tensor per PiT block, see [`PatchSplit::tensors`]).
    pub tensor: String,
}

impl PatchSplit {
    /// The cut tensors of a model with `pixel_depth` PiT blocks, in order.
    pub fn tensors(&self, pixel_depth: usize) -> Vec<String> {
        match self.cut {
            PatchCut::Modulation => (0..pixel_depth).map(|i| format!("{}.{i}", self.tensor)).collect(),
            _ => vec![self.tensor.clone()],
        }
    }
}

/// The `metadata_props` key marking a pixel-level graph; its value is the [`PatchCut`]. Such a file carries the
/// [`ModelMetadata`] of the whole model it belongs to (same `weights_sha256`).
pub const PIXEL_LEVEL_KEY: &str = "pixeldit.pixel_level";

/// The pixel-level graph of `model` (`digits.onnx` -> `digits.pixel.onnx`).
pub fn pixel_level_path(model: &std::path::Path) -> std::path::PathBuf {
    model.with_extension("pixel.onnx")
}

/// The image sizes a dynamic-size export (`pixeldit-export --dynamic-size`) accepts, stored in its metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicSize {
    /// Smallest height and width in pixels.
    pub min: usize,
    /// Largest height and width in pixels.
    pub max: usize,
    /// Heights and widths are multiples of this (the patch size).
    pub multiple: usize,
    /// The size engines are tuned for (TensorRT's opt profile), `[H, W]`.
    pub opt: [usize; 2],
    /// The size table `--aspect-ratio` chooses from, `[H, W]` each.
    pub buckets: Vec<[usize; 2]>,
}

/// The official text-to-image sampling buckets `[H, W]` (`ASPECT_RATIO_1024_TEST` of the official
/// `t2i/diffusion/data/datasets/utils.py`, inherited from SANA/PixArt): 33 sizes from 512x2048 to 2048x512, chosen
/// by the nearest aspect ratio to a request (`--ar h:w`).
pub const ASPECT_RATIO_1024_TEST: [[usize; 2]; 33] = [
    [512, 2048],
    [512, 1856],
    [576, 1792],
    [576, 1728],
    [576, 1664],
    [640, 1600],
    [640, 1536],
    [704, 1472],
    [704, 1408],
    [704, 1344],
    [768, 1344],
    [768, 1280],
    [832, 1216],
    [832, 1152],
    [896, 1152],
    [896, 1088],
    [960, 1088],
    [960, 1024],
    [1024, 1024],
    [1024, 960],
    [1088, 960],
    [1088, 896],
    [1152, 896],
    [1152, 832],
    [1216, 832],
    [1280, 768],
    [1344, 768],
    [1408, 704],
    [1472, 704],
    [1536, 640],
    [1600, 640],
    [1728, 576],
    [2048, 512],
];

/// Aspect ratios (`h:w`) of the derived bucket table of class-conditional presets, which have no official table
/// (their checkpoints are square): each at about the area of the training size.
const C2I_BUCKET_RATIOS: [(usize, usize); 9] = [
    (1, 2),
    (9, 16),
    (2, 3),
    (3, 4),
    (1, 1),
    (4, 3),
    (3, 2),
    (16, 9),
    (2, 1),
];

impl DynamicSize {
    /// The defaults of a config: sides from half to twice the training size (at least one patch), opt at the
    /// training size; buckets: for text-to-image presets [`ASPECT_RATIO_1024_TEST`] scaled to the preset's size
    /// (exactly the official table at 1024), for class-conditional ones about the training area at the aspect
    /// ratios 1:2 .. 2:1; rounded to the patch and clamped to the range.
    pub fn for_config(cfg: &ModelConfig) -> Self {
        let p = cfg.patch_size;
        let (h, w) = (cfg.default_height, cfg.default_width);
        let side = h.max(w);
        let round = |v: f64| ((v / p as f64).round() as usize).max(1) * p;
        let min = round(side as f64 / 2.0).max(p);
        let max = round(side as f64 * 2.0);
        let area = (h * w) as f64;
        let candidates: Vec<[usize; 2]> = if cfg.kind == ModelKind::T2i {
            let scale = area.sqrt() / 1024.0;
            ASPECT_RATIO_1024_TEST
                .iter()
                .map(|&[bh, bw]| [round(bh as f64 * scale), round(bw as f64 * scale)])
                .collect()
        } else {
            C2I_BUCKET_RATIOS
                .iter()
                .map(|&(rh, rw)| {
                    let r = rh as f64 / rw as f64;
                    [round((area * r).sqrt()), round((area / r).sqrt())]
                })
                .collect()
        };
        let mut buckets: Vec<[usize; 2]> = Vec::new();
        for [bh, bw] in candidates {
            let b = [bh.clamp(min, max), bw.clamp(min, max)];
            if !buckets.contains(&b) {
                buckets.push(b);
            }
        }
        DynamicSize {
            min,
            max,
            multiple: p,
            opt: [h, w],
            buckets,
        }
    }

    /// Checks the range and the multiple (and the defaults: opt and every bucket inside the range).
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(SpecError::InvalidSize(reason));
        if self.multiple == 0
            || self.min == 0
            || !self.min.is_multiple_of(self.multiple)
            || !self.max.is_multiple_of(self.multiple)
        {
            return bad(format!(
                "the dynamic size range {}..={} must be non-zero multiples of {}",
                self.min, self.max, self.multiple
            ));
        }
        if self.min > self.max {
            return bad(format!(
                "the minimum size {} is above the maximum {}",
                self.min, self.max
            ));
        }
        for [h, w] in std::iter::once(self.opt).chain(self.buckets.iter().copied()) {
            self.check(h, w)?;
        }
        Ok(())
    }

    /// Whether `height x width` is accepted; the error names the valid range.
    pub fn check(&self, height: usize, width: usize) -> Result<()> {
        let ok = |v: usize| v >= self.min && v <= self.max && v.is_multiple_of(self.multiple);
        if ok(height) && ok(width) {
            return Ok(());
        }
        Err(SpecError::InvalidSize(format!(
            "image size {height}x{width} is not accepted by this dynamic-size model: height and width must be \
             multiples of {} in {}..={}",
            self.multiple, self.min, self.max
        )))
    }

    /// The bucket whose aspect ratio `h / w` is nearest to `ratio` (absolute difference, as the official
    /// `get_closest_ratio`; ties: the first in the table).
    pub fn nearest_bucket(&self, ratio: f64) -> Option<[usize; 2]> {
        let dist = |b: &[usize; 2]| (b[0] as f64 / b[1] as f64 - ratio).abs();
        self.buckets
            .iter()
            .copied()
            .min_by(|a, b| dist(a).total_cmp(&dist(b)))
    }
}

impl ModelMetadata {
    /// The I/O contract of the exported graph ([`io::model_io`]); a dynamic-size export has `-1` for the height
    /// and width of `x` and `v` too.
    pub fn io(&self) -> (Vec<io::IoTensor>, Vec<io::IoTensor>) {
        let (mut inputs, mut outputs) = io::model_io(&self.config, self.height, self.width);
        if self.dynamic.is_some() {
            for t in inputs.iter_mut().chain(outputs.iter_mut()) {
                if t.dims.len() == 4 {
                    t.dims[2] = -1;
                    t.dims[3] = -1;
                }
            }
        }
        (inputs, outputs)
    }

    /// Whether the model runs at `height x width`: inside the range of a dynamic-size export, or its exported size
    /// for a static one. Errors say what is accepted.
    pub fn check_size(&self, height: usize, width: usize) -> Result<()> {
        match &self.dynamic {
            Some(d) => d.check(height, width),
            None if (height, width) == (self.height, self.width) => Ok(()),
            None => Err(SpecError::InvalidSize(format!(
                "this model was exported at the fixed size {}x{}, not {height}x{width} (export it with \
                 --dynamic-size, or at that size with --height/--width)",
                self.height, self.width
            ))),
        }
    }
}

impl ModelMetadata {
    /// Parses the metadata JSON.
    pub fn from_json(json: &str) -> Result<Self> {
        parse_json("pixeldit metadata", json)
    }
    /// Serializes to compact, deterministic JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metadata serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_size_defaults_checks_and_buckets() {
        let d = DynamicSize::for_config(&ModelConfig::preset("B").unwrap());
        assert_eq!((d.min, d.max, d.multiple, d.opt), (128, 512, 16, [256, 256]));
        d.validate().unwrap();
        assert!(d.buckets.contains(&[256, 256]));
        // Every bucket keeps about the training area.
        for [h, w] in &d.buckets {
            let ratio = (h * w) as f64 / (256.0 * 256.0);
            assert!((0.85..1.15).contains(&ratio), "{h}x{w}");
        }
        assert_eq!(d.nearest_bucket(1.0), Some([256, 256]));
        let wide = d.nearest_bucket(9.0 / 16.0).unwrap();
        assert!(wide[0] < wide[1], "{wide:?}");
        assert_eq!(d.nearest_bucket(0.5), Some([176, 368]));
        d.check(256, 384).unwrap();
        for (h, w) in [(0, 256), (250, 256), (112, 256), (256, 528)] {
            let e = d.check(h, w).unwrap_err().to_string();
            assert!(e.contains("multiples of 16 in 128..=512"), "{e}");
        }
        // The text-to-image preset gets the official table at 1024.
        let t2i = DynamicSize::for_config(&ModelConfig::preset("t2i").unwrap());
        assert_eq!((t2i.min, t2i.max, t2i.opt), (512, 2048, [1024, 1024]));
        assert_eq!(t2i.buckets, ASPECT_RATIO_1024_TEST.to_vec());
        assert_eq!(t2i.nearest_bucket(9.0 / 16.0), Some([768, 1344]));
        assert_eq!(t2i.nearest_bucket(16.0 / 9.0), Some([1344, 768]));
        assert_eq!(t2i.nearest_bucket(1.0), Some([1024, 1024]));
        let mut bad = d.clone();
        bad.opt = [600, 600];
        assert!(bad.validate().is_err());
        bad = d.clone();
        (bad.min, bad.max) = (512, 128);
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("above the maximum"));
    }

    #[test]
    fn presets_parse_and_validate() {
        for p in PRESETS {
            let cfg = ModelConfig::preset(p.name).unwrap();
            assert_eq!(cfg.name, p.name);
        }
        assert_eq!(ModelConfig::preset("XL").unwrap().name, "XL-256");
        assert!(matches!(
            ModelConfig::preset("XXL"),
            Err(SpecError::UnknownPreset { .. })
        ));
    }

    #[test]
    fn enums_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.as_str().parse::<Precision>().unwrap(), *p);
        }
        assert!("fp4".parse::<Precision>().is_err());
        assert_eq!(
            "decomposed".parse::<AttentionMode>().unwrap(),
            AttentionMode::Decomposed
        );
    }
}

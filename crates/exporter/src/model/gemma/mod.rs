//! The Gemma-2 text encoder of PixelDiT-T2I (transformers' `Gemma2Model`, i.e.
//! `AutoModelForCausalLM.from_pretrained("Efficient-Large-Model/gemma-2-2b-it").get_decoder()`) as ONNX.
//!
//! * Inputs `input_ids [B, S]` int64 and `attention_mask [B, S]` int64 (1 = token, 0 = padding); output
//!   `last_hidden_state [B, S, D]` f32, after the final norm, at every position (padding included: the official
//!   pipeline keeps padded positions, whose values depend on the mask). S is fixed per export.
//! * Everything Gemma-2 does: embedding times `sqrt(D)` (rounded to the weights' dtype, as transformers does),
//!   RMSNorm with `(1 + w)`, grouped-query attention, RoPE (rotate_half form), attention-logit soft-capping, the
//!   sliding window on the layers transformers marks `sliding_attention` (even layers by default), the four norms
//!   per layer, the tanh-GELU gated MLP, the final norm. Attention is decomposed into opset-17 ops.
//! * Initializer names are the official checkpoint keys (`model.layers.3.self_attn.q_proj.weight`).

mod checkpoint;
mod decoder_layer;

use std::path::Path;

use pixeldit_graph::{DType, Dim, Graph, Progress, WriteOptions, WriteReport};
use pixeldit_spec::text_encoder::{
    TextEncoderMetadata, ATTENTION_MASK, INPUT_IDS, LAST_HIDDEN_STATE, TEXT_ENCODER_FORMAT_VERSION,
    TEXT_ENCODER_META_KEY,
};
use pixeldit_spec::{Precision, Preset, TEXT_ENCODER_PRESETS};

pub use checkpoint::{GemmaWeights, INDEX_FILE, SINGLE_FILE};
use decoder_layer::{additive_mask, decoder_layer, scoped, GemmaCtx, LayerInputs};

use crate::{ExportError, Result};

/// The hyper-parameters of a Gemma-2 decoder, with transformers' `Gemma2Config` names.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmaConfig {
    /// Preset or checkpoint name.
    pub name: String,
    /// Rows of the embedding table.
    pub vocab_size: usize,
    /// Model width D.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Attention scale is `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Window of the sliding-window layers (keys `q - window < k <= q`).
    pub sliding_window: usize,
    /// `tanh(logits / c) * c` on the attention logits when set.
    pub attn_logit_softcapping: Option<f32>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Per layer: true for `sliding_attention`, false for `full_attention`.
    pub sliding_layers: Vec<bool>,
    /// Sequence length of an export when none is given.
    pub default_sequence_length: usize,
}

fn cfg_err(config: &str, reason: impl Into<String>) -> ExportError {
    ExportError::GemmaConfig {
        config: config.to_string(),
        reason: reason.into(),
    }
}

fn cfg_file_err(
    config: &str,
    what: &'static str,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> ExportError {
    ExportError::GemmaConfigFile {
        config: config.to_string(),
        what,
        source: source.into(),
    }
}

impl GemmaConfig {
    /// A preset of [`TEXT_ENCODER_PRESETS`] (`gemma-2-2b`, `gemma-tiny`).
    pub fn preset(name: &str) -> Result<Self> {
        let preset = Preset::find(TEXT_ENCODER_PRESETS, name).ok_or_else(|| {
            cfg_err(
                name,
                format!("unknown preset (known: {})", Preset::list(TEXT_ENCODER_PRESETS)),
            )
        })?;
        Self::from_json(name, preset.json)
    }

    /// Reads a Hugging Face `config.json` (or a preset in the same format).
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let config = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| cfg_file_err(&config, "cannot read", e))?;
        Self::from_json(&config, &text)
    }

    /// Parses `Gemma2Config` JSON (`rope_theta` at the top level or under `rope_parameters`).
    pub fn from_json(source: &str, text: &str) -> Result<Self> {
        let j: serde_json::Value =
            serde_json::from_str(text).map_err(|e| cfg_file_err(source, "invalid JSON", e))?;
        let uint = |k: &str| -> Result<usize> {
            j.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| cfg_err(source, format!("'{k}' must be a non-negative integer")))
        };
        let float = |v: Option<&serde_json::Value>, k: &str| -> Result<f64> {
            v.and_then(|v| v.as_f64())
                .ok_or_else(|| cfg_err(source, format!("'{k}' must be a number")))
        };
        if let Some(act) = j.get("hidden_activation").and_then(|v| v.as_str()) {
            if act != "gelu_pytorch_tanh" {
                return Err(cfg_err(
                    source,
                    format!("hidden_activation '{act}' (only gelu_pytorch_tanh)"),
                ));
            }
        }
        let layers = uint("num_hidden_layers")?;
        let sliding_layers = match j.get("layer_types").and_then(|v| v.as_array()) {
            Some(types) => {
                let v: Vec<bool> = types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(cfg_err(
                            source,
                            format!("layer type {t} (sliding_attention|full_attention)"),
                        )),
                    })
                    .collect::<Result<_>>()?;
                if v.len() != layers {
                    return Err(cfg_err(
                        source,
                        format!("{} layer_types for {layers} layers", v.len()),
                    ));
                }
                v
            }
            // transformers' default: layers 0, 2, 4, ... slide.
            None => (0..layers).map(|i| i % 2 == 0).collect(),
        };
        let rope_theta = float(
            j.get("rope_theta")
                .or_else(|| j.get("rope_parameters").and_then(|r| r.get("rope_theta"))),
            "rope_theta",
        )?;
        if let Some(t) = j
            .get("rope_parameters")
            .and_then(|r| r.get("rope_type"))
            .and_then(|t| t.as_str())
        {
            if t != "default" {
                return Err(cfg_err(source, format!("rope_type '{t}' (only default)")));
            }
        }
        let cfg = GemmaConfig {
            name: j
                .get("name")
                .and_then(|v| v.as_str())
                .unwrap_or(source)
                .to_string(),
            vocab_size: uint("vocab_size")?,
            hidden_size: uint("hidden_size")?,
            intermediate_size: uint("intermediate_size")?,
            num_hidden_layers: layers,
            num_attention_heads: uint("num_attention_heads")?,
            num_key_value_heads: uint("num_key_value_heads")?,
            head_dim: uint("head_dim")?,
            query_pre_attn_scalar: float(j.get("query_pre_attn_scalar"), "query_pre_attn_scalar")?,
            rope_theta,
            sliding_window: uint("sliding_window")?,
            attn_logit_softcapping: match j.get("attn_logit_softcapping") {
                None | Some(serde_json::Value::Null) => None,
                v => Some(float(v, "attn_logit_softcapping")? as f32),
            },
            rms_norm_eps: float(j.get("rms_norm_eps"), "rms_norm_eps")? as f32,
            sliding_layers,
            default_sequence_length: j
                .get("default_sequence_length")
                .and_then(|v| v.as_u64())
                .map_or(300, |v| v as usize),
        };
        if cfg.num_key_value_heads == 0 || !cfg.num_attention_heads.is_multiple_of(cfg.num_key_value_heads) {
            return Err(cfg_err(
                source,
                "num_attention_heads must be a multiple of num_key_value_heads",
            ));
        }
        if !cfg.head_dim.is_multiple_of(2) {
            return Err(cfg_err(source, "head_dim must be even (RoPE)"));
        }
        Ok(cfg)
    }

    /// Whether layer `i` uses the sliding window.
    pub fn is_sliding(&self, i: usize) -> bool {
        self.sliding_layers[i]
    }

    /// Every checkpoint key the encoder reads, with its shape (official names).
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, i, dh) = (self.hidden_size, self.intermediate_size, self.head_dim);
        let (nh, nkv) = (self.num_attention_heads, self.num_key_value_heads);
        let mut v = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab_size, d])];
        for l in 0..self.num_hidden_layers {
            let p = format!("model.layers.{l}");
            v.push((format!("{p}.self_attn.q_proj.weight"), vec![nh * dh, d]));
            v.push((format!("{p}.self_attn.k_proj.weight"), vec![nkv * dh, d]));
            v.push((format!("{p}.self_attn.v_proj.weight"), vec![nkv * dh, d]));
            v.push((format!("{p}.self_attn.o_proj.weight"), vec![d, nh * dh]));
            v.push((format!("{p}.mlp.gate_proj.weight"), vec![i, d]));
            v.push((format!("{p}.mlp.up_proj.weight"), vec![i, d]));
            v.push((format!("{p}.mlp.down_proj.weight"), vec![d, i]));
            for n in [
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ] {
                v.push((format!("{p}.{n}.weight"), vec![d]));
            }
        }
        v.push(("model.norm.weight".to_string(), vec![d]));
        v
    }
}

/// RoPE tables `[S, 1, 1, Dh]`: `cos(p f)` and `sin(p f)` with the first half negated, `f` repeated over the two
/// halves, `f_j = theta^(-2j/Dh)` (transformers computes these in f32; f64 here, rounded once).
fn rope_tables(cfg: &GemmaConfig, s: usize) -> (Vec<f32>, Vec<f32>) {
    let dh = cfg.head_dim;
    let (mut cos, mut sin) = (Vec::with_capacity(s * dh), Vec::with_capacity(s * dh));
    for p in 0..s {
        for j in 0..dh {
            let k = j % (dh / 2);
            let inv = 1.0 / cfg.rope_theta.powf((2 * k) as f64 / dh as f64);
            let a = p as f64 * inv;
            cos.push(a.cos() as f32);
            sin.push(if j < dh / 2 { -a.sin() } else { a.sin() } as f32);
        }
    }
    (cos, sin)
}

/// What one encoder export writes: the fixed sequence length and the precision of the matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderExport {
    /// Sequence length S of the graph (the prompt recipe needs `len(tokenize(CHI)) + 298`).
    pub sequence_length: usize,
    /// fp32, fp16 or bf16: the embedding table and the linear layers are stored and multiplied in this type
    /// (transformers runs Gemma-2 in bf16 that way); norms, RoPE, softmax and the residual stream stay f32.
    pub precision: Precision,
}

impl EncoderExport {
    /// The storage type of the matrices, or an error for a precision the encoder does not support.
    pub fn matrix_dtype(&self) -> Result<DType> {
        match self.precision {
            Precision::Fp32 => Ok(DType::F32),
            Precision::Fp16 => Ok(DType::F16),
            Precision::Bf16 => Ok(DType::BF16),
            p => Err(ExportError::Unsupported(format!(
                "text encoder precision {p}: the Gemma-2 export supports fp32, fp16 and bf16"
            ))),
        }
    }
}

/// The value of `sqrt(D)` in the weights' type, as transformers multiplies the embeddings by
/// `torch.tensor(sqrt(D), dtype=hidden.dtype)`.
fn embedding_scale(d: usize, dt: DType) -> f32 {
    let s = (d as f64).sqrt() as f32;
    match dt {
        DType::F16 => half::f16::from_f32(s).to_f32(),
        DType::BF16 => half::bf16::from_f32(s).to_f32(),
        _ => s,
    }
}

/// Builds the encoder graph (weights must have passed [`GemmaWeights::check`]).
pub fn build_graph(cfg: &GemmaConfig, weights: &GemmaWeights, export: &EncoderExport) -> Result<Graph> {
    let seq = export.sequence_length;
    if seq == 0 {
        return Err(ExportError::Unsupported(
            "Gemma-2 export: sequence length 0".into(),
        ));
    }
    let matrix_dtype = export.matrix_dtype()?;
    let mut g = Graph::new(17);
    let (d, s) = (cfg.hidden_size, seq);
    let ids = g.input(INPUT_IDS, DType::I64, vec![Dim::Batch(1), Dim::Fixed(s)])?;
    let mask_in = g.input(ATTENTION_MASK, DType::I64, vec![Dim::Batch(1), Dim::Fixed(s)])?;
    let cx = GemmaCtx {
        weights,
        cfg,
        seq: s,
        matrix_dtype,
    };

    let h = scoped(&mut g, "model.embed_tokens", |g| {
        let table = cx.weight(
            g,
            "model.embed_tokens.weight",
            vec![cfg.vocab_size, d],
            matrix_dtype,
        )?;
        let mut e = g.gather(table, ids, 0)?; // [B, S, D]
        if matrix_dtype != DType::F32 {
            e = g.cast(e, DType::F32)?;
        }
        let scale = g.scalar(DType::F32, embedding_scale(d, matrix_dtype))?;
        let e = g.mul(e, scale)?;
        Ok(g.reshape(e, &[Dim::Batch(s), Dim::Fixed(d)])?)
    })?;

    let inputs = scoped(&mut g, "model.mask", |g| {
        let valid = g.cast(mask_in, DType::Bool)?;
        let valid = g.unsqueeze(valid, &[1])?; // [B, 1, S]
        let causal: Vec<bool> = (0..s * s).map(|i| i % s <= i / s).collect();
        let full_mask = additive_mask(g, valid, &causal, s)?;
        let w = cfg.sliding_window;
        let sliding: Vec<bool> = (0..s * s)
            .map(|i| {
                let (q, k) = (i / s, i % s);
                k <= q && k + w > q
            })
            .collect();
        let sliding_mask = if sliding == causal {
            full_mask
        } else {
            additive_mask(g, valid, &sliding, s)?
        };
        let (cos, sin) = rope_tables(cfg, s);
        let cos = g.const_f32(vec![s, 1, 1, cfg.head_dim], &cos)?;
        let sin_signed = g.const_f32(vec![s, 1, 1, cfg.head_dim], &sin)?;
        Ok(LayerInputs {
            cos,
            sin_signed,
            full_mask,
            sliding_mask,
        })
    })?;

    let mut h = h;
    for layer in 0..cfg.num_hidden_layers {
        h = decoder_layer(&cx, &mut g, h, layer, &inputs)?;
    }
    let h = scoped(&mut g, "model.norm", |g| cx.rms_norm(g, h, "model.norm.weight"))?;
    let out = g.reshape(h, &[Dim::Batch(1), Dim::Fixed(s), Dim::Fixed(d)])?;
    g.output(LAST_HIDDEN_STATE, out)?;
    g.set_name(&format!("gemma2_{}", cfg.name));
    g.set_doc(&format!(
        "Gemma-2 text encoder {} (last hidden state after the final norm, S = {s}, {}), exported by \
         pixeldit-exporter {}",
        cfg.name,
        export.precision,
        env!("CARGO_PKG_VERSION")
    ));
    Ok(g)
}

/// The metadata stored under [`TEXT_ENCODER_META_KEY`]: what `pixeldit-run` checks an encoder against (the
/// tokenizer's vocabulary and prompt length, the T2I model's text width).
pub fn encoder_metadata(
    cfg: &GemmaConfig,
    export: &EncoderExport,
    weights: &GemmaWeights,
    sha256: &str,
) -> TextEncoderMetadata {
    TextEncoderMetadata {
        format_version: TEXT_ENCODER_FORMAT_VERSION,
        architecture: "gemma2".into(),
        name: cfg.name.clone(),
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        sequence_length: export.sequence_length,
        sliding_window: cfg.sliding_window,
        precision: export.precision,
        weights_source: weights.origin().to_string(),
        weights_sha256: sha256.to_string(),
        exporter_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Exports the encoder to `path`: checks the weights against `cfg`, builds the graph and writes it (external data
/// for large models, temp files renamed at the end; each weight is read, converted and written one at a time).
pub fn export_to_file(
    cfg: &GemmaConfig,
    weights: &GemmaWeights,
    export: &EncoderExport,
    path: &Path,
    progress: Option<Progress>,
) -> Result<WriteReport> {
    weights.check(&cfg.parameter_shapes())?;
    let graph = build_graph(cfg, weights, export)?;
    let wopts = WriteOptions {
        progress,
        producer: ("pixeldit-exporter", env!("CARGO_PKG_VERSION")),
        ..Default::default()
    };
    Ok(pixeldit_graph::write_model(&graph, path, &wopts, |r, props| {
        let meta = encoder_metadata(cfg, export, weights, &r.weights_sha256);
        props.push((TEXT_ENCODER_META_KEY.to_string(), meta.to_json()));
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_match_the_official_shapes() {
        let big = GemmaConfig::preset("gemma-2-2b").unwrap();
        assert_eq!(
            (big.hidden_size, big.num_hidden_layers, big.vocab_size),
            (2304, 26, 256000)
        );
        assert_eq!(big.sliding_layers.iter().filter(|s| **s).count(), 13);
        let params: usize = big
            .parameter_shapes()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // Gemma-2-2B without the tied LM head: 2,614,341,888 parameters.
        assert_eq!(params, 2_614_341_888);
        let tiny = GemmaConfig::preset("gemma-tiny").unwrap();
        assert!(tiny.sliding_window < tiny.default_sequence_length);
        assert!(GemmaConfig::preset("gemma-9b").is_err());
    }

    #[test]
    fn tiny_graph_builds_with_random_weights() {
        let cfg = GemmaConfig::preset("gemma-tiny").unwrap();
        let w = GemmaWeights::random(&cfg.parameter_shapes(), 0);
        assert!(w.check(&cfg.parameter_shapes()).unwrap().is_empty());
        let export = EncoderExport {
            sequence_length: 20,
            precision: Precision::Fp32,
        };
        let g = build_graph(&cfg, &w, &export).unwrap();
        let dump = g.dump();
        assert!(dump.contains("model.layers.3.mlp"), "{dump}");
        assert_eq!(g.outputs().len(), 1);
    }
}

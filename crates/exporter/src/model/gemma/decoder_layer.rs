//! One Gemma-2 decoder layer (transformers' `Gemma2DecoderLayer`) in standard opset-17 ONNX ops, and the pieces
//! it shares with the model: RMSNorm with `(1 + w)`, the linear layers, the tanh-GELU gated MLP.
//!
//! The residual stream is `[B*S, D]`; attention works on `[B, KV, G, S, Dh]` (G = query heads per KV head) so that
//! grouped-query attention is a broadcasting MatMul against `[B, KV, 1, ...]` keys and values (query head
//! `h = kv * G + g` reads KV head `kv`, transformers' `repeat_kv`).

use pixeldit_graph::{DType, Dim, Encoding, Graph, TensorData, Value};

use super::{GemmaConfig, GemmaWeights};
use crate::Result;

/// Shared per-export state: weights, config, sequence length and the type of the linear layers and the embedding
/// table (everything else computes in f32).
pub(crate) struct GemmaCtx<'a> {
    pub weights: &'a GemmaWeights,
    pub cfg: &'a GemmaConfig,
    /// Sequence length S of the export.
    pub seq: usize,
    /// Storage and compute type of the matrices (f32, f16 or bf16).
    pub matrix_dtype: DType,
}

impl GemmaCtx<'_> {
    /// The initializer of checkpoint key `key`, stored as `dtype` (deferred: read while writing).
    pub fn weight(&self, g: &mut Graph, key: &str, shape: Vec<usize>, dtype: DType) -> Result<Value> {
        if let Some(v) = g.value_by_name(key) {
            return Ok(v);
        }
        let source = self.weights.source(key)?;
        Ok(g.initializer(
            key,
            dtype,
            shape,
            TensorData::Deferred {
                source,
                encoding: Encoding::Float(dtype),
            },
        )?)
    }

    /// `x @ W^T` for `x [B*S, in]` and the checkpoint's `W [out, in]` (no bias in Gemma-2), in the matrix type;
    /// returns f32.
    pub fn linear(&self, g: &mut Graph, x: Value, key: &str, out: usize, inp: usize) -> Result<Value> {
        let dt = self.matrix_dtype;
        let w = self.weight(g, key, vec![out, inp], dt)?;
        if dt == DType::F32 {
            return Ok(g.gemm_bt(x, w, None)?);
        }
        if dt == DType::BF16 {
            // ONNX Runtime's CPU provider has no bf16 Gemm: bf16 weights are widened, the input and the product
            // rounded to bf16 (f32 accumulation, as a bf16 GPU matmul), which every backend runs.
            let w = g.cast(w, DType::F32)?;
            let x = round_through(g, x, dt)?;
            let y = g.gemm_bt(x, w, None)?;
            return round_through(g, y, dt);
        }
        let x = g.cast(x, dt)?;
        let y = g.gemm_bt(x, w, None)?;
        Ok(g.cast(y, DType::F32)?)
    }

    /// Gemma's RMSNorm over the last axis: `x / sqrt(mean(x^2) + eps) * (1 + w)`, in f32.
    pub fn rms_norm(&self, g: &mut Graph, x: Value, key: &str) -> Result<Value> {
        let d = self.cfg.hidden_size;
        let w = self.weight(g, key, vec![d], DType::F32)?;
        let one = g.scalar(DType::F32, 1.0)?;
        let scale = g.add(w, one)?;
        let sq = g.mul(x, x)?;
        let ms = g.reduce_mean(sq, &[-1], true)?;
        let eps = g.scalar(DType::F32, self.cfg.rms_norm_eps)?;
        let ms = g.add(ms, eps)?;
        let rms = g.sqrt(ms)?;
        let xn = g.div(x, rms)?;
        Ok(g.mul(xn, scale)?)
    }
}

/// `x` (f32) rounded to `dt` and widened back.
fn round_through(g: &mut Graph, x: Value, dt: DType) -> Result<Value> {
    let r = g.cast(x, dt)?;
    Ok(g.cast(r, DType::F32)?)
}

/// An elementwise op without attributes whose output has the input's dtype and shape.
pub(crate) fn unary(g: &mut Graph, op: &str, x: Value) -> Result<Value> {
    let (dt, shape) = (g.dtype(x), g.shape(x).to_vec());
    Ok(g.add_node(op, "", &[Some(x)], vec![], vec![(dt, shape)])?[0])
}

/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))` (PyTorch's `gelu(approximate="tanh")`).
fn gelu_tanh(g: &mut Graph, x: Value) -> Result<Value> {
    let c = g.scalar(DType::F32, 0.044_715)?;
    let k = g.scalar(DType::F32, (2.0f64 / std::f64::consts::PI).sqrt() as f32)?;
    let half = g.scalar(DType::F32, 0.5)?;
    let one = g.scalar(DType::F32, 1.0)?;
    let x2 = g.mul(x, x)?;
    let x3 = g.mul(x2, x)?;
    let cx3 = g.mul(c, x3)?;
    let inner = g.add(x, cx3)?;
    let inner = g.mul(k, inner)?;
    let t = unary(g, "Tanh", inner)?;
    let t = g.add(one, t)?;
    let hx = g.mul(half, x)?;
    Ok(g.mul(hx, t)?)
}

/// RoPE in transformers' rotate_half form on `x [B, S, n, m, Dh]`: `x cos + cat(x2, x1) sin'` with
/// `sin' = cat(-sin, sin)` over the halves (tables `[S, 1, 1, Dh]`).
fn rope(g: &mut Graph, x: Value, cos: Value, sin_signed: Value, head_dim: usize) -> Result<Value> {
    let halves = g.split(x, -1, &[head_dim / 2, head_dim / 2])?;
    let swapped = g.concat(&[halves[1], halves[0]], -1)?;
    let a = g.mul(x, cos)?;
    let b = g.mul(swapped, sin_signed)?;
    Ok(g.add(a, b)?)
}

/// Values shared by all layers: RoPE tables and the two additive attention masks `[B, 1, 1, S, S]`.
pub(crate) struct LayerInputs {
    pub cos: Value,
    pub sin_signed: Value,
    pub full_mask: Value,
    pub sliding_mask: Value,
}

/// Runs `f` inside the node scope `name` (node names `name/Op_n`), passing the exporter's errors through.
pub(crate) fn scoped<T>(g: &mut Graph, name: &str, f: impl FnOnce(&mut Graph) -> Result<T>) -> Result<T> {
    g.scoped(name, |g| Ok(f(g)))?
}

/// Grouped-query self-attention of layer `p` on the normalised stream `x [B*S, D]`; returns `[B*S, H*Dh]`.
fn self_attention(
    cx: &GemmaCtx,
    g: &mut Graph,
    x: Value,
    p: &str,
    mask: Value,
    inputs: &LayerInputs,
) -> Result<Value> {
    let cfg = cx.cfg;
    let (d, s, dh) = (cfg.hidden_size, cx.seq, cfg.head_dim);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let groups = nh / nkv;
    let (b, f) = (Dim::Batch(1), Dim::Fixed);
    let q = cx.linear(g, x, &format!("{p}.q_proj.weight"), nh * dh, d)?;
    let k = cx.linear(g, x, &format!("{p}.k_proj.weight"), nkv * dh, d)?;
    let v = cx.linear(g, x, &format!("{p}.v_proj.weight"), nkv * dh, d)?;
    let q = g.reshape(q, &[b, f(s), f(nkv), f(groups), f(dh)])?;
    let k = g.reshape(k, &[b, f(s), f(nkv), f(1), f(dh)])?;
    let v = g.reshape(v, &[b, f(s), f(nkv), f(1), f(dh)])?;
    let q = rope(g, q, inputs.cos, inputs.sin_signed, dh)?;
    let k = rope(g, k, inputs.cos, inputs.sin_signed, dh)?;
    let q = g.transpose(q, &[0, 2, 3, 1, 4])?; // [B, KV, G, S, Dh]
    let kt = g.transpose(k, &[0, 2, 3, 4, 1])?; // [B, KV, 1, Dh, S]
    let v = g.transpose(v, &[0, 2, 3, 1, 4])?; // [B, KV, 1, S, Dh]
    let scores = g.matmul(q, kt)?; // [B, KV, G, S, S]
    let scaling = g.scalar(DType::F32, cfg.query_pre_attn_scalar.powf(-0.5) as f32)?;
    let mut scores = g.mul(scores, scaling)?;
    if let Some(cap) = cfg.attn_logit_softcapping {
        let c = g.scalar(DType::F32, cap)?;
        let t = g.div(scores, c)?;
        let t = unary(g, "Tanh", t)?;
        scores = g.mul(t, c)?;
    }
    let scores = g.add(scores, mask)?;
    let probs = g.softmax(scores, -1)?;
    let o = g.matmul(probs, v)?; // [B, KV, G, S, Dh]
    let o = g.transpose(o, &[0, 3, 1, 2, 4])?; // [B, S, KV, G, Dh]
    let o = g.reshape(o, &[Dim::Batch(s), f(nh * dh)])?;
    cx.linear(g, o, &format!("{p}.o_proj.weight"), d, nh * dh)
}

/// One decoder layer on the residual stream `h [B*S, D]`: the four norms around attention and the GeGLU MLP.
pub(crate) fn decoder_layer(
    cx: &GemmaCtx,
    g: &mut Graph,
    h: Value,
    layer: usize,
    inputs: &LayerInputs,
) -> Result<Value> {
    let cfg = cx.cfg;
    let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
    let p = format!("model.layers.{layer}");
    let mask = if cfg.is_sliding(layer) {
        inputs.sliding_mask
    } else {
        inputs.full_mask
    };
    let x = scoped(g, &format!("{p}.input_layernorm"), |g| {
        cx.rms_norm(g, h, &format!("{p}.input_layernorm.weight"))
    })?;
    let a = scoped(g, &format!("{p}.self_attn"), |g| {
        self_attention(cx, g, x, &format!("{p}.self_attn"), mask, inputs)
    })?;
    let a = scoped(g, &format!("{p}.post_attention_layernorm"), |g| {
        cx.rms_norm(g, a, &format!("{p}.post_attention_layernorm.weight"))
    })?;
    let h = g.add(h, a)?;
    let x = scoped(g, &format!("{p}.pre_feedforward_layernorm"), |g| {
        cx.rms_norm(g, h, &format!("{p}.pre_feedforward_layernorm.weight"))
    })?;
    let m = scoped(g, &format!("{p}.mlp"), |g| {
        let gate = cx.linear(g, x, &format!("{p}.mlp.gate_proj.weight"), i, d)?;
        let up = cx.linear(g, x, &format!("{p}.mlp.up_proj.weight"), i, d)?;
        let act = gelu_tanh(g, gate)?;
        let prod = g.mul(act, up)?;
        cx.linear(g, prod, &format!("{p}.mlp.down_proj.weight"), d, i)
    })?;
    let m = scoped(g, &format!("{p}.post_feedforward_layernorm"), |g| {
        cx.rms_norm(g, m, &format!("{p}.post_feedforward_layernorm.weight"))
    })?;
    Ok(g.add(h, m)?)
}

/// `Where(allowed, 0, finfo(f32).min)` as `[B, 1, 1, S, S]`, where `allowed = structure [S, S] AND key_valid`.
///
/// transformers' eager attention adds exactly this (`torch.finfo(float32).min`, not `-inf`): a query whose keys
/// are all masked gets equal logits everywhere and a uniform softmax over all S keys, which this reproduces.
pub(crate) fn additive_mask(g: &mut Graph, key_valid: Value, structure: &[bool], s: usize) -> Result<Value> {
    let bytes = structure.iter().map(|&b| b as u8).collect();
    let st = g.constant(DType::Bool, vec![s, s], bytes)?;
    let allowed = g.add_node(
        "And",
        "",
        &[Some(st), Some(key_valid)],
        vec![],
        vec![(DType::Bool, vec![Dim::Batch(1), Dim::Fixed(s), Dim::Fixed(s)])],
    )?[0];
    let zero = g.scalar(DType::F32, 0.0)?;
    let min = g.scalar(DType::F32, f32::MIN)?;
    let m = g.add_node(
        "Where",
        "",
        &[Some(allowed), Some(zero), Some(min)],
        vec![],
        vec![(DType::F32, vec![Dim::Batch(1), Dim::Fixed(s), Dim::Fixed(s)])],
    )?[0];
    Ok(g.unsqueeze(m, &[1, 2])?)
}

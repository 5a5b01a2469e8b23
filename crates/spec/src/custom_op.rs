//! The custom ops of domain `pixeldit`, version 1: the fused attention ops and the fused pixel-level ops.
//!
//! `pixeldit.RotaryAttention(qkv, q_norm_weight, k_norm_weight, cos, sin) -> out` computes, for the patch
//! blocks and the PiT blocks alike, everything between the qkv projection and the output projection of
//! `RotaryAttention` in the official code (QK-RMSNorm, 2D RoPE, SDPA, head merge).
//!
//! Inputs (all `float32`):
//! * `qkv` `[B, S, 3*H*Dh]`: the output of the qkv Linear; features are `[q | k | v]`, each head-contiguous
//!   (feature `part*H*Dh + h*Dh + d`).
//! * `q_norm_weight`, `k_norm_weight` `[Dh]`: RMSNorm weights over the head dim.
//! * `cos`, `sin` `[S, Dh/2]`: rotation tables, one angle per token and complex pair.
//!
//! Attributes: `num_heads` (int, H), `epsilon` (float, RMSNorm eps, 1e-6), `scale` (float, softmax scale,
//! `1/sqrt(Dh)`), `matmul_precision` (string, `"f32"` by default, or `"bf16"`: q and k after the norm and rotation,
//! the softmax probabilities `p` and v are rounded to bfloat16, to nearest even, before the two products, which
//! are summed in f32; the quantized variants set it, see [`MATMUL_PRECISION_ATTR`]).
//!
//! Output `[B, S, H*Dh]` (feature `h*Dh + d`), `float32`.
//!
//! Semantics, per batch `b`, head `h`, token `s`:
//! ```text
//! q = qkv[b, s, 0*H*Dh + h*Dh .. +Dh];  k = qkv[b, s, 1*H*Dh + ..];  v = qkv[b, s, 2*H*Dh + ..]
//! q = q / sqrt(mean(q^2) + epsilon) * q_norm_weight        (same for k with k_norm_weight)
//! for j in 0..Dh/2:                                       (adjacent pairs, GPT-J style)
//!     (a, c) = (q[2j], q[2j+1])
//!     q[2j]   = a*cos[s,j] - c*sin[s,j]
//!     q[2j+1] = a*sin[s,j] + c*cos[s,j]                    (same for k)
//! p[s, s'] = softmax_s'( scale * dot(q_s, k_s') )          (no mask)
//! out[b, s, h*Dh + d] = sum_s' p[s, s'] * v_s'[d]
//! ```
//! The 2D RoPE tables of PixelDiT: pair `j` uses `angle = x_pos*freq[j/2]` for even `j` and
//! `y_pos*freq[(j-1)/2]` for odd `j`, `freq[k] = theta^(-4k/Dh)`, with `x_pos = linspace(0,16,Ws)[col]`
//! and `y_pos = linspace(0,16,Hs)[row]` for token `row*Ws + col` (see [`rope_2d_tables`]).
//!
//! # `pixeldit.JointRotaryAttention` (version 1), the MM-DiT joint attention of the T2I model
//!
//! `JointRotaryAttention(qkv_txt, qkv_img, q_norm_txt, k_norm_txt, q_norm_img, k_norm_img, cos, sin) -> out`
//! computes everything between the two qkv projections and the two output projections of
//! `MMDiTJointAttention` (spec section 5.2): per-stream QK-RMSNorm, RoPE, one SDPA over the concatenation
//! `[text; image]`, heads merged. The caller splits `out` back into text and image rows.
//!
//! Inputs (all `float32`), with `St` text tokens, `Si` image tokens and `S = St + Si`:
//! * `qkv_txt` `[B, St, 3*H*Dh]`, `qkv_img` `[B, Si, 3*H*Dh]`: outputs of `attn.qkv_y` / `attn.qkv_x`, laid
//!   out as for `RotaryAttention`;
//! * `q_norm_txt`, `k_norm_txt` `[Dh]` (`attn.q_norm_y` / `attn.k_norm_y`), `q_norm_img`, `k_norm_img`
//!   `[Dh]` (`attn.q_norm_x` / `attn.k_norm_x`);
//! * `cos`, `sin` `[S, Dh/2]`: rows `0..St` are the 1D text table ([`rope_1d_tables`]), rows `St..S` the 2D
//!   image table ([`rope_2d_tables`]).
//!
//! Attributes as for `RotaryAttention`: `num_heads`, `epsilon`, `scale`, `matmul_precision`.
//!
//! Output `[B, S, H*Dh]`, rows `0..St` text, `St..S` image. Semantics: build the joint sequence
//! `qkv[b, s] = qkv_txt[b, s]` for `s < St`, else `qkv_img[b, s - St]`; normalise q and k of text rows with
//! the text weights and of image rows with the image weights; then exactly the `RotaryAttention`
//! semantics above (adjacent-pair rotation with row `s` of the tables, softmax over all `S` keys, no mask).
//!
//! # The fused pixel-level ops (version 1), `pixeldit-export --pixel-ops fused`
//!
//! The PiT block's per-pixel work around its token compaction (spec 2.3 step 10, pre-modulation blocks), in two
//! ops so that the `[N, P*6*C]` modulation is never split, biased or copied, and the MLP's `[N, P, 4C]` hidden
//! tensor never reaches memory. `N = B*L` patch rows, `P = p*p` pixels per patch, `C = D_pix` channels.
//! The modulation `mod [N, P*6*C]` is the adaLN Linear's output *without* its bias; `bias [P*6*C]` is the
//! Linear's bias (`adaLN_modulation.0.bias`). Per row `n` and pixel `i`, chunk `k` (0..6: shift_msa, scale_msa,
//! gate_msa, shift_mlp, scale_mlp, gate_mlp) is `m_k[c] = mod[n, i*6*C + k*C + c] + bias[i*6*C + k*C + c]`,
//! the official `[pixel][6][D_pix]` row layout.
//!
//! `pixeldit.PixelModulate(x, mod, bias, norm_weight) -> xn`, the attention branch's input:
//! * `x [N, P, C]`, `norm_weight [C]` (`norm1.weight`);
//! * `xn[n, i, c] = x[n,i,c] / sqrt(mean_c(x[n,i,:]^2) + epsilon) * norm_weight[c] * (1 + m_1[c]) + m_0[c]`.
//!
//! `pixeldit.PixelGatedMlp(x, branch, mod, bias, norm_weight, fc1_weight, fc1_bias, fc2_weight, fc2_bias) -> y`,
//! the attention branch's gated residual and the whole MLP branch:
//! * `x [N, P, C]` (the block input), `branch` with `N*P*C` elements (`expand_from_attn`'s output, read as
//!   `[N, P, C]`), `norm_weight [C]` (`norm2.weight`), `fc1_weight [4C', C]`, `fc1_bias [4C']`,
//!   `fc2_weight [C, 4C']`, `fc2_bias [C]` (`mlp.fc1`, `mlp.fc2`, checkpoint `[out, in]` layout; any hidden width);
//! * `x1 = x + m_2 * branch`; `h = x1 / sqrt(mean_c(x1^2) + epsilon) * norm_weight * (1 + m_4) + m_3`;
//!   `y = x1 + m_5 * (fc2_weight · gelu(fc1_weight · h + fc1_bias) + fc2_bias)` with the exact erf GELU.
//!
//! Both: all inputs and the output `float32`, output `[N, P, C]` (the shape of `x`), attribute `epsilon`
//! (float, default [`DEFAULT_EPSILON`]).
//!
//! # `pixeldit.RmsNormModulate` (version 1), the patch level's adaLN input (also with `--pixel-ops fused`)
//!
//! `RmsNormModulate(x, norm_weight, shift, scale) -> y`: `x [B, L, D]`, `norm_weight [D]`, `shift` and `scale`
//! `[B, 1, D]` (two adaLN chunks, broadcast over the L tokens);
//! `y[b, l, d] = x[b,l,d] / sqrt(mean_d(x[b,l,:]^2) + epsilon) * norm_weight[d] * (1 + scale[b,0,d]) + shift[b,0,d]`,
//! i.e. `modulate(RMSNorm(x), shift, scale)` of a patch block (C2I) or either stream of an MM-DiT block (T2I) in
//! one pass instead of nine ops. All `float32`, output the shape of `x`, attribute `epsilon`.
//!
//! # `pixeldit.SwiGlu` (version 1), the gate of the patch level's SwiGLU MLP (also with `--pixel-ops fused`)
//!
//! `SwiGlu(a, b) -> y`: `a`, `b` `[B, L, H]` (the outputs of `mlp.w1` and `mlp.w3`), `y = a * sigmoid(a) * b`
//! (SiLU of `a` times `b`), the input of `mlp.w2`. All `float32`, output the shape of `a`, no attributes.

/// Domain of the op.
pub const DOMAIN: &str = crate::CUSTOM_DOMAIN;
/// Op type.
pub const OP_TYPE: &str = "RotaryAttention";
/// Version of the domain.
pub const VERSION: i64 = 1;
/// Op type of the MM-DiT joint attention (same domain and version).
pub const JOINT_OP_TYPE: &str = "JointRotaryAttention";
/// Op type of the fused pixel modulation (the attention branch's input).
pub const PIXEL_MODULATE_OP_TYPE: &str = "PixelModulate";
/// Op type of the fused gated residual + pixel MLP branch.
pub const PIXEL_GATED_MLP_OP_TYPE: &str = "PixelGatedMlp";
/// Op type of the SwiGLU gate of the patch level's MLP.
pub const SWIGLU_OP_TYPE: &str = "SwiGlu";
/// Op type of the fused RMSNorm + adaLN modulation of the patch level.
pub const RMS_NORM_MODULATE_OP_TYPE: &str = "RmsNormModulate";
/// Number of modulation chunks the fused pixel ops read per pixel (pre-modulation PiT blocks).
pub const PIXEL_MODULATION_CHUNKS: usize = 6;
/// The attention ops' optional string attribute that rounds the operands of their two products to bfloat16
/// (`"bf16"`; `"f32"`, the default, keeps them): twice the multiply-adds per instruction on CPUs with AVX512-BF16.
/// The int8 and fp8 variants set it (their activations are already quantized far more coarsely).
pub const MATMUL_PRECISION_ATTR: &str = "matmul_precision";
/// Default of the `epsilon` attribute (RMSNorm epsilon) of every op.
pub const DEFAULT_EPSILON: f32 = 1e-6;

/// Default of the `scale` attribute of both ops: `1/sqrt(Dh)`.
pub fn default_scale(head_dim: usize) -> f32 {
    1.0 / (head_dim.max(1) as f32).sqrt()
}

/// Computes the 1D RoPE tables of the T2I text stream `(cos, sin)`, each `[len, dim/2]` row-major: pair `j` of
/// token `p` uses `angle = p * theta^(-2j/dim)` (official `fetch_pos_text`), in f64 then cast to f32.
pub fn rope_1d_tables(len: usize, dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = dim / 2;
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for p in 0..len {
        for j in 0..half {
            let angle = p as f64 * theta.powf(-(2.0 * j as f64) / dim as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// Computes the 2D RoPE tables `(cos, sin)`, each `[Hs*Ws, dim/2]` row-major, in f64 then cast to f32.
pub fn rope_2d_tables(hs: usize, ws: usize, dim: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let lin = |n: usize| -> Vec<f64> {
        if n == 1 {
            vec![0.0]
        } else {
            (0..n).map(|i| 16.0 * i as f64 / (n - 1) as f64).collect()
        }
    };
    let (xs, ys) = (lin(ws), lin(hs));
    let half = dim / 2;
    let freqs: Vec<f64> = (0..dim / 4)
        .map(|k| theta.powf(-(4.0 * k as f64) / dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(hs * ws * half);
    let mut sin = Vec::with_capacity(hs * ws * half);
    for y in &ys {
        for x in &xs {
            for j in 0..half {
                let angle = if j % 2 == 0 {
                    x * freqs[j / 2]
                } else {
                    y * freqs[(j - 1) / 2]
                };
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    (cos, sin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_1d_tables_follow_spec() {
        let (cos, sin) = rope_1d_tables(3, 8, 10000.0);
        assert_eq!(cos.len(), 3 * 4);
        assert_eq!(sin[0], 0.0);
        // token 2, pair 1: angle 2 * 10000^(-2/8) = 0.2
        assert!((sin[4 + 4 + 1] - 0.2f64.sin() as f32).abs() < 1e-7);
        assert!((cos[8 + 3] - (2.0 * 10000f64.powf(-0.75)).cos() as f32).abs() < 1e-7);
    }

    #[test]
    fn rope_tables_follow_spec() {
        // 2x3 tokens, dim 8: freqs = [1, 10000^-0.5]
        let (cos, sin) = rope_2d_tables(2, 3, 8, 10000.0);
        assert_eq!(cos.len(), 6 * 4);
        // token (row 1, col 2): x = 16, y = 16
        let t = 5 * 4;
        assert!((cos[t] - (16f64).cos() as f32).abs() < 1e-7); // pair 0: x*freq0
        assert!((sin[t + 1] - (16f64).sin() as f32).abs() < 1e-7); // pair 1: y*freq0
        assert!((cos[t + 2] - (16.0 * 0.01f64).cos() as f32).abs() < 1e-7); // pair 2: x*freq1
                                                                            // token (row 0, col 1): x = 8, y = 0
        assert_eq!(sin[4 + 1], 0.0);
        assert!((sin[4] - (8f64).sin() as f32).abs() < 1e-7);
    }
}

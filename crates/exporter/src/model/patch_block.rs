//! `patch_blocks.{i}`: the AugmentedDiTBlock (adaLN, RMSNorm, RotaryAttention, SwiGLU), spec 2.2 step 7.

use crate::nn::Ctx;
use crate::Result;
use pixeldit_graph::{Dim, Value};
use pixeldit_spec::ModelConfig;

/// One patch block: `s [B, L, D]`, conditioning `c [B, D]` -> `[B, L, D]`.
pub fn patch_block(
    cx: &mut Ctx,
    cfg: &ModelConfig,
    i: usize,
    s: Value,
    c: Value,
    hs: usize,
    ws: usize,
) -> Result<Value> {
    let pre = format!("patch_blocks.{i}");
    let d = cfg.hidden_size;
    let b = cx.g.shape(c)[0];
    let m = cx.linear(c, &format!("{pre}.adaLN_modulation.0"), true)?;
    let chunks = cx.g.scoped(&format!("{pre}.adaLN_modulation"), |g| {
        let m = g.reshape(m, &[b, Dim::Fixed(1), Dim::Fixed(6 * d)])?;
        g.split(m, -1, &[d; 6])
    })?;
    let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = chunks[..] else {
        unreachable!()
    };

    let h = cx.rms_norm(s, &format!("{pre}.norm1.weight"))?;
    let h = cx.modulate(h, shift_msa, scale_msa)?;
    let a = cx.rotary_attention(h, &format!("{pre}.attn"), cfg.num_heads, hs, ws, cfg.rope_theta)?;
    let s = cx.g.scoped(&pre, |g| {
        let ga = g.mul(gate_msa, a)?;
        g.add(s, ga)
    })?;
    let h = cx.rms_norm(s, &format!("{pre}.norm2.weight"))?;
    let h = cx.modulate(h, shift_mlp, scale_mlp)?;
    let f = cx.swiglu(h, &format!("{pre}.mlp"))?;
    Ok(cx.g.scoped(&pre, |g| {
        let gf = g.mul(gate_mlp, f)?;
        g.add(s, gf)
    })?)
}

//! `patch_blocks.{i}`: the AugmentedDiTBlock (adaLN, RMSNorm, RotaryAttention, SwiGLU), spec 2.2 step 7.

use crate::nn::{AdaLn, Ctx, Grid};
use crate::Result;
use pixeldit_graph::Value;
use pixeldit_spec::ModelConfig;

/// One patch block: `s [B, L, D]`, conditioning `c [B, D]` -> `[B, L, D]`.
pub fn patch_block(
    cx: &mut Ctx,
    cfg: &ModelConfig,
    i: usize,
    s: Value,
    c: Value,
    grid: Grid,
) -> Result<Value> {
    let pre = format!("patch_blocks.{i}");
    let d = cfg.hidden_size;
    let AdaLn {
        shift_msa,
        scale_msa,
        gate_msa,
        shift_mlp,
        scale_mlp,
        gate_mlp,
    } = cx.adaln(c, &format!("{pre}.adaLN_modulation"), d)?;

    let h = cx.rms_norm_modulate(s, &format!("{pre}.norm1.weight"), shift_msa, scale_msa)?;
    let a = cx.rotary_attention(h, &format!("{pre}.attn"), cfg.num_heads, grid, cfg.rope_theta)?;
    let s = cx.g.scoped(&pre, |g| {
        let ga = g.mul(gate_msa, a)?;
        g.add(s, ga)
    })?;
    let h = cx.rms_norm_modulate(s, &format!("{pre}.norm2.weight"), shift_mlp, scale_mlp)?;
    let f = cx.swiglu(h, &format!("{pre}.mlp"), cfg.mlp_hidden())?;
    Ok(cx.g.scoped(&pre, |g| {
        let gf = g.mul(gate_mlp, f)?;
        g.add(s, gf)
    })?)
}

//! `patch_blocks.{i}` of the T2I model: `MMDiTBlockT2I`, two adaLN-modulated streams (image `x`, text `y`) with
//! separate weights and one joint attention (spec 5.2).

use super::joint_attention::joint_rotary_attention;
use crate::nn::{Ctx, Grid};
use crate::Result;
use pixeldit_graph::Value;
use pixeldit_spec::ModelConfig;

/// `x + gate * f`.
fn gated(cx: &mut Ctx, scope: &str, x: Value, gate: Value, f: Value) -> Result<Value> {
    Ok(cx.g.scoped(scope, |g| {
        let gf = g.mul(gate, f)?;
        g.add(x, gf)
    })?)
}

/// One MM-DiT block: image tokens `x [B, L, D]`, text tokens `y [B, Lt, D]`, conditioning `c [B, D]`. Returns the
/// new image tokens and, when `text_out`, the new text tokens (the last block's text output is dead).
#[allow(clippy::too_many_arguments)]
pub fn mmdit_block(
    cx: &mut Ctx,
    cfg: &ModelConfig,
    i: usize,
    x: Value,
    y: Value,
    c: Value,
    grid: Grid,
    text_out: bool,
) -> Result<(Value, Option<Value>)> {
    let pre = format!("patch_blocks.{i}");
    let d = cfg.hidden_size;
    let f = cfg.mlp_hidden();
    let mx = cx.adaln(c, &format!("{pre}.adaLN_modulation_img"), d)?;
    let my = cx.adaln(c, &format!("{pre}.adaLN_modulation_txt"), d)?;

    let xn = cx.rms_norm_modulate(x, &format!("{pre}.norm_x1.weight"), mx.shift_msa, mx.scale_msa)?;
    let yn = cx.rms_norm_modulate(y, &format!("{pre}.norm_y1.weight"), my.shift_msa, my.scale_msa)?;
    let (ax, ay) = joint_rotary_attention(cx, cfg, &format!("{pre}.attn"), xn, yn, grid, text_out)?;

    let x = gated(cx, &format!("{pre}.x"), x, mx.gate_msa, ax)?;
    let h = cx.rms_norm_modulate(x, &format!("{pre}.norm_x2.weight"), mx.shift_mlp, mx.scale_mlp)?;
    let h = cx.swiglu(h, &format!("{pre}.mlp_x"), f)?;
    let x = gated(cx, &format!("{pre}.x"), x, mx.gate_mlp, h)?;

    let Some(ay) = ay else {
        // The last block's text stream output is dead in the official model: its keys exist in checkpoints but
        // feed nothing.
        for (key, shape) in [
            ("attn.proj_y.weight", vec![d, d]),
            ("attn.proj_y.bias", vec![d]),
            ("norm_y2.weight", vec![d]),
            ("mlp_y.w1.weight", vec![f, d]),
            ("mlp_y.w3.weight", vec![f, d]),
            ("mlp_y.w2.weight", vec![d, f]),
        ] {
            cx.declare_unused(&format!("{pre}.{key}"), &shape)?;
        }
        return Ok((x, None));
    };
    let y = gated(cx, &format!("{pre}.y"), y, my.gate_msa, ay)?;
    let h = cx.rms_norm_modulate(y, &format!("{pre}.norm_y2.weight"), my.shift_mlp, my.scale_mlp)?;
    let h = cx.swiglu(h, &format!("{pre}.mlp_y"), f)?;
    let y = gated(cx, &format!("{pre}.y"), y, my.gate_mlp, h)?;
    Ok((x, Some(y)))
}

//! `patch_blocks.{i}` of the T2I model: `MMDiTBlockT2I`, two adaLN-modulated streams (image `x`, text `y`) with
//! separate weights and one joint attention (spec 5.2).

use super::joint_attention::joint_rotary_attention;
use crate::nn::Ctx;
use crate::Result;
use pixeldit_graph::{Dim, Value};
use pixeldit_spec::ModelConfig;

/// `adaLN_modulation_{img,txt}.0` on `c [B, D]`, chunked as shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp,
/// gate_mlp, each `[B, 1, D]`.
fn modulation(cx: &mut Ctx, prefix: &str, c: Value, d: usize) -> Result<Vec<Value>> {
    let b = cx.g.shape(c)[0];
    let m = cx.linear(c, &format!("{prefix}.0"), true)?;
    Ok(cx.g.scoped(prefix, |g| {
        let m = g.reshape(m, &[b, Dim::Fixed(1), Dim::Fixed(6 * d)])?;
        g.split(m, -1, &[d; 6])
    })?)
}

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
    hs: usize,
    ws: usize,
    text_out: bool,
) -> Result<(Value, Option<Value>)> {
    let pre = format!("patch_blocks.{i}");
    let d = cfg.hidden_size;
    let mx = modulation(cx, &format!("{pre}.adaLN_modulation_img"), c, d)?;
    let my = modulation(cx, &format!("{pre}.adaLN_modulation_txt"), c, d)?;

    let xn = cx.rms_norm(x, &format!("{pre}.norm_x1.weight"))?;
    let xn = cx.modulate(xn, mx[0], mx[1])?;
    let yn = cx.rms_norm(y, &format!("{pre}.norm_y1.weight"))?;
    let yn = cx.modulate(yn, my[0], my[1])?;
    let (ax, ay) = joint_rotary_attention(cx, cfg, &format!("{pre}.attn"), xn, yn, hs, ws, text_out)?;

    let x = gated(cx, &format!("{pre}.x"), x, mx[2], ax)?;
    let h = cx.rms_norm(x, &format!("{pre}.norm_x2.weight"))?;
    let h = cx.modulate(h, mx[3], mx[4])?;
    let f = cx.swiglu(h, &format!("{pre}.mlp_x"))?;
    let x = gated(cx, &format!("{pre}.x"), x, mx[5], f)?;

    let Some(ay) = ay else { return Ok((x, None)) };
    let y = gated(cx, &format!("{pre}.y"), y, my[2], ay)?;
    let h = cx.rms_norm(y, &format!("{pre}.norm_y2.weight"))?;
    let h = cx.modulate(h, my[3], my[4])?;
    let f = cx.swiglu(h, &format!("{pre}.mlp_y"))?;
    let y = gated(cx, &format!("{pre}.y"), y, my[5], f)?;
    Ok((x, Some(y)))
}

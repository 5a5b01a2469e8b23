//! `pixel_blocks.{i}`: the PiT block (pixel-wise AdaLN, token compaction, attention, GELU MLP),
//! spec 2.3 step 10.

use crate::nn::{AdaLn, Ctx, Grid};
use crate::Result;
use pixeldit_graph::{Dim, Value};
use pixeldit_spec::ModelConfig;

/// One PiT block: pixels `x [B*L, p*p, 16]`, `s_cond [B*L, D]` -> `[B*L, p*p, 16]`.
pub fn pixel_block(
    cx: &mut Ctx,
    cfg: &ModelConfig,
    i: usize,
    x: Value,
    s_cond: Value,
    grid: Grid,
) -> Result<Value> {
    let pre = format!("pixel_blocks.{i}");
    let p2 = cfg.patch_pixels();
    let dp = cfg.pixel_hidden_size;
    let a = cfg.pixel_attn_hidden_size;
    let l = grid.tokens();
    let rows = cx.g.shape(x)[0];
    let batch = rows.divided_by(l).unwrap_or(rows);
    let pix = [rows, Dim::Fixed(p2), Dim::Fixed(dp)];

    // Pixel-wise AdaLN: rows are laid out [pixel][6][D_pix].
    let m = cx.linear(s_cond, &format!("{pre}.adaLN_modulation.0"), 6 * dp * p2, true)?;
    let chunks = cx.g.scoped(&format!("{pre}.adaLN_modulation"), |g| {
        let m = g.reshape(m, &[rows, Dim::Fixed(p2), Dim::Fixed(6), Dim::Fixed(dp)])?;
        let parts = g.split(m, 2, &[1; 6])?;
        parts
            .into_iter()
            .map(|v| g.reshape(v, &pix))
            .collect::<pixeldit_graph::Result<Vec<_>>>()
    })?;
    let AdaLn {
        shift_msa,
        scale_msa,
        gate_msa,
        shift_mlp,
        scale_mlp,
        gate_mlp,
    } = AdaLn::from_chunks(&chunks);

    let xn = cx.rms_norm(x, &format!("{pre}.norm1.weight"))?;
    let xn = cx.modulate(xn, shift_msa, scale_msa)?;
    // Token compaction: one token per patch.
    let flat =
        cx.g.scoped(&pre, |g| g.reshape(xn, &[rows, Dim::Fixed(p2 * dp)]))?;
    let tok = cx.linear(flat, &format!("{pre}.compress_to_attn"), a, true)?;
    let tok =
        cx.g.scoped(&pre, |g| g.reshape(tok, &[batch, l, Dim::Fixed(a)]))?;
    let att = cx.rotary_attention(
        tok,
        &format!("{pre}.attn"),
        cfg.pixel_num_heads,
        grid,
        cfg.rope_theta,
    )?;
    let att = cx.g.scoped(&pre, |g| g.reshape(att, &[rows, Dim::Fixed(a)]))?;
    let exp = cx.linear(att, &format!("{pre}.expand_from_attn"), p2 * dp, true)?;
    let x = cx.g.scoped(&pre, |g| {
        let e = g.reshape(exp, &pix)?;
        let ge = g.mul(gate_msa, e)?;
        g.add(x, ge)
    })?;

    let h = cx.rms_norm(x, &format!("{pre}.norm2.weight"))?;
    let h = cx.modulate(h, shift_mlp, scale_mlp)?;
    let h = cx.linear(h, &format!("{pre}.mlp.fc1"), dp * cfg.pixel_mlp_ratio, true)?;
    let h = cx.gelu(h, &format!("{pre}.mlp.act"))?;
    let h = cx.linear(h, &format!("{pre}.mlp.fc2"), dp, true)?;
    Ok(cx.g.scoped(&pre, |g| {
        let gh = g.mul(gate_mlp, h)?;
        g.add(x, gh)
    })?)
}

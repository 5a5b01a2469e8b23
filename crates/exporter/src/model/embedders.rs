//! `t_embedder`, `y_embedder`, `s_embedder` and `pixel_embedder` (spec 2.1, 2.2 step 5-6, 2.3 step 9).

use crate::nn::{arange_f64, const_f64, Ctx, Grid};
use crate::Result;
use pixeldit_graph::{DType, Dim, Value};
use pixeldit_spec::ModelConfig;

/// Sinusoidal timestep embedding (max_period from the config, cos first) then `t_embedder.mlp`:
/// `[B] -> [B, D]`. The phases `t * freq` reach 1000 rad, where one f32 ulp is 6e-5: they and their cos/sin are
/// computed in f64 (a [B, freq_dim] table) and cast to f32, which takes the f32 model from ~2e-6 to ~2e-7 relative
/// error against the float64 reference.
pub fn timestep_embedder(cx: &mut Ctx, cfg: &ModelConfig, t: Value) -> Result<Value> {
    let half = cfg.timestep_freq_dim / 2;
    let freqs: Vec<f64> = (0..half)
        .map(|k| (-(cfg.timestep_max_period.ln()) * k as f64 / half as f64).exp())
        .collect();
    let emb = cx.g.scoped("t_embedder", |g| {
        let f = const_f64(g, &[1, half], &freqs)?;
        let t64 = g.cast(t, DType::F64)?;
        let t2 = g.unsqueeze(t64, &[1])?;
        let args = g.mul(t2, f)?;
        let c = g.cos(args)?;
        let s = g.sin(args)?;
        let emb = g.concat(&[c, s], -1)?;
        g.cast(emb, DType::F32)
    })?;
    let h = cx.linear(emb, "t_embedder.mlp.0", cfg.hidden_size, true)?;
    let h = cx.g.scoped("t_embedder.mlp.1", |g| g.silu(h))?;
    cx.linear(h, "t_embedder.mlp.2", cfg.hidden_size, true)
}

/// Class embedding table lookup: `[B] int64 -> [B, D]` (row `num_classes` is the null class).
pub fn label_embedder(cx: &mut Ctx, cfg: &ModelConfig, y: Value) -> Result<Value> {
    let table = cx.weight(
        "y_embedder.embedding_table.weight",
        &[cfg.num_classes + 1, cfg.hidden_size],
        DType::F32,
    )?;
    Ok(cx.g.scoped("y_embedder", |g| g.gather(table, y, 0))?)
}

/// Patchify (unfold order channel, row, col) and `s_embedder.proj`: `[B,3,H,W] -> [B, L, D]`.
pub fn patch_embedder(cx: &mut Ctx, cfg: &ModelConfig, x: Value, grid: Grid) -> Result<Value> {
    let p = cfg.patch_size;
    let c = cfg.in_channels;
    let b = cx.g.shape(x)[0];
    let tokens = cx.g.scoped("s_embedder", |g| {
        let r = g.reshape(
            x,
            &[
                b,
                Dim::Fixed(c),
                grid.rows,
                Dim::Fixed(p),
                grid.cols,
                Dim::Fixed(p),
            ],
        )?;
        let t = g.transpose(r, &[0, 2, 4, 1, 3, 5])?;
        g.reshape(t, &[b, grid.tokens(), Dim::Fixed(c * p * p)])
    })?;
    cx.linear(tokens, "s_embedder.proj", cfg.hidden_size, true)
}

/// The fixed 2D sin-cos pixel positional embedding `[H, W, 16]` (spec 2.3 step 9): per pixel
/// `[sin(w*om), cos(w*om), sin(h*om), cos(h*om)]`, `om_k = 10000^(-k/4)`, computed in f64.
pub fn pixel_pos_embed(h: usize, w: usize, dim: usize) -> Vec<f32> {
    let quarter = dim / 4;
    let om: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = Vec::with_capacity(h * w * dim);
    for row in 0..h {
        for col in 0..w {
            let (r, c) = (row as f64, col as f64);
            out.extend(om.iter().map(|o| (c * o).sin() as f32));
            out.extend(om.iter().map(|o| (c * o).cos() as f32));
            out.extend(om.iter().map(|o| (r * o).sin() as f32));
            out.extend(om.iter().map(|o| (r * o).cos() as f32));
        }
    }
    out
}

/// The pixel positional embedding `[H, W, dim]` of an image of `h x w` pixels: the named constant
/// [`pixel_pos_embed`] for a fixed size; for a dynamic one computed in the graph in f64 the same way, then cast to
/// f32.
fn pixel_pos_table(cx: &mut Ctx, h: Dim, w: Dim, dim: usize) -> Result<Value> {
    if let (Some(h), Some(w)) = (h.fixed(), w.fixed()) {
        return cx.table(
            &format!("pixeldit.pixel_pos_embed.{h}x{w}"),
            vec![h, w, dim],
            &pixel_pos_embed(h, w, dim),
        );
    }
    let quarter = dim / 4;
    let om: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    Ok(cx.g.scoped("pixeldit.pixel_pos_embed", |g| {
        let om = const_f64(g, &[quarter], &om)?;
        // [n, 2q]: sin(i om), cos(i om) of the raw pixel indices of one axis.
        let axis = |g: &mut pixeldit_graph::Graph, n: Dim| {
            let i = arange_f64(g, n)?;
            let i = g.unsqueeze(i, &[1])?;
            let a = g.mul(i, om)?;
            let s = g.sin(a)?;
            let c = g.cos(a)?;
            g.concat(&[s, c], -1)
        };
        let cols = axis(g, w)?;
        let rows = axis(g, h)?;
        let half = Dim::Fixed(2 * quarter);
        let cols = g.unsqueeze(cols, &[0])?;
        let rows = g.unsqueeze(rows, &[1])?;
        let full = [h, w, half];
        let target = g.shape_value(&full, None)?;
        let cols = g.expand(cols, target, full.to_vec())?;
        let rows = g.expand(rows, target, full.to_vec())?;
        let pe = g.concat(&[cols, rows], -1)?;
        g.cast(pe, DType::F32)
    })?)
}

/// Pixel embedding `Linear(3 -> 16)` plus the fixed positional embedding, regrouped per patch:
/// `[B,3,H,W] -> [B*L, p*p, 16]`.
pub fn pixel_embedder(cx: &mut Ctx, cfg: &ModelConfig, x: Value, grid: Grid) -> Result<Value> {
    let p = cfg.patch_size;
    let (h, w) = (grid.rows.times(Dim::Fixed(p)), grid.cols.times(Dim::Fixed(p)));
    let dp = cfg.pixel_hidden_size;
    let b = cx.g.shape(x)[0];
    let pixels = cx.g.scoped("pixel_embedder", |g| g.transpose(x, &[0, 2, 3, 1]))?;
    let e = cx.linear(pixels, "pixel_embedder.proj", cfg.pixel_hidden_size, true)?;
    let pe = pixel_pos_table(cx, h, w, dp)?;
    Ok(cx.g.scoped("pixel_embedder", |g| {
        let e = g.add(e, pe)?;
        let r = g.reshape(
            e,
            &[
                b,
                grid.rows,
                Dim::Fixed(p),
                grid.cols,
                Dim::Fixed(p),
                Dim::Fixed(dp),
            ],
        )?;
        let t = g.transpose(r, &[0, 1, 3, 2, 4, 5])?;
        let rows = b.times(grid.tokens());
        g.reshape(t, &[rows, Dim::Fixed(p * p), Dim::Fixed(dp)])
    })?)
}

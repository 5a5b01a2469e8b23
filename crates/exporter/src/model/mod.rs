//! The class-conditional PixelDiT (`PixDiT` in the official `pixdit_core/pixeldit_c2i.py`, pinned upstream
//! commit `07015dd233bab8a057ac6edc7b67711da5ba896e`; paper arXiv 2511.20645), one file per checkpoint
//! subtree. See `shared/docs/pixeldit-architecture.md` section 2.

mod embedders;
mod final_layer;
mod patch_block;
mod pixel_block;
pub mod t2i;

pub use embedders::pixel_pos_embed;

use crate::nn::Ctx;
use crate::Result;
use pixeldit_graph::{DType, Dim, Graph, Value};
use pixeldit_spec::{io, ModelConfig, ModelKind};

/// Builds the forward graph `v = model(x, t, y)` at a fixed `height x width` into `cx.g` (text-to-image configs:
/// `v = model(x, t, text)`, see [`t2i`]).
pub fn build(cx: &mut Ctx, cfg: &ModelConfig, height: usize, width: usize) -> Result<()> {
    if cfg.kind == ModelKind::T2i {
        return t2i::build(cx, cfg, height, width);
    }
    cfg.check_size(height, width)?;
    let (hs, ws) = (height / cfg.patch_size, width / cfg.patch_size);
    let (inputs, outputs) = io::c2i_io(cfg.in_channels, height, width);
    let x = graph_input(cx, &inputs[0])?;
    let t = graph_input(cx, &inputs[1])?;
    let y = graph_input(cx, &inputs[2])?;

    // Conditioning c = SiLU(t_emb + y_emb).
    let t_emb = embedders::timestep_embedder(cx, cfg, t)?;
    let y_emb = embedders::label_embedder(cx, y)?;
    let c = cx.g.scoped("c", |g| {
        let s = g.add(t_emb, y_emb)?;
        g.silu(s)
    })?;

    // Patch level.
    let mut s = embedders::patch_embedder(cx, cfg, x, hs, ws)?;
    for i in 0..cfg.patch_depth {
        s = patch_block::patch_block(cx, cfg, i, s, c, hs, ws)?;
    }
    pixel_level(cx, cfg, x, t_emb, s, hs, ws, outputs[0].name)
}

/// Declares a graph input from the shared I/O description (`-1` is the batch axis).
pub(crate) fn graph_input(cx: &mut Ctx, t: &io::IoTensor) -> Result<Value> {
    let dims = t
        .dims
        .iter()
        .map(|d| {
            if *d < 0 {
                Dim::Batch(1)
            } else {
                Dim::Fixed(*d as usize)
            }
        })
        .collect();
    let dtype = match t.dtype {
        io::IoType::F32 => DType::F32,
        io::IoType::I64 => DType::I64,
    };
    Ok(cx.g.input(t.name, dtype, dims)?)
}

/// The pixel level shared by the C2I and T2I models: `s_cond = SiLU(t_emb + s)` from the patch tokens
/// `s [B, L, D]`, the pixel embedder, the PiT blocks and the final layer, declared as output `output`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pixel_level(
    cx: &mut Ctx,
    cfg: &ModelConfig,
    x: Value,
    t_emb: Value,
    s: Value,
    hs: usize,
    ws: usize,
    output: &str,
) -> Result<()> {
    let (batch, d, l) = (Dim::Batch(1), cfg.hidden_size, hs * ws);
    let s_cond = cx.g.scoped("s_cond", |g| {
        let te = g.reshape(t_emb, &[batch, Dim::Fixed(1), Dim::Fixed(d)])?;
        let sc = g.add(te, s)?;
        let sc = g.silu(sc)?;
        g.reshape(sc, &[Dim::Batch(l), Dim::Fixed(d)])
    })?;
    let mut px = embedders::pixel_embedder(cx, cfg, x, hs, ws)?;
    for i in 0..cfg.pixel_depth {
        px = pixel_block::pixel_block(cx, cfg, i, px, s_cond, hs, ws)?;
    }
    let v = final_layer::final_layer(cx, cfg, px, batch, hs, ws)?;
    cx.g.output(output, v)?;
    Ok(())
}

/// The graph alone (for dumps and tests), without writing anything.
pub fn build_graph(cx: Ctx, cfg: &ModelConfig, height: usize, width: usize) -> Result<Graph> {
    let mut cx = cx;
    build(&mut cx, cfg, height, width)?;
    Ok(cx.g)
}

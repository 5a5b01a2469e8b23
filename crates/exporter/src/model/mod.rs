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
use pixeldit_graph::{DType, Dim, Graph};
use pixeldit_spec::{io, ModelConfig, ModelKind};

/// Builds the forward graph `v = model(x, t, y)` at a fixed `height x width` into `cx.g` (text-to-image configs:
/// `v = model(x, t, text)`, see [`t2i`]).
pub fn build(cx: &mut Ctx, cfg: &ModelConfig, height: usize, width: usize) -> Result<()> {
    if cfg.kind == ModelKind::T2i {
        return t2i::build(cx, cfg, height, width);
    }
    cfg.check_size(height, width)?;
    let (hs, ws) = (height / cfg.patch_size, width / cfg.patch_size);
    let l = hs * ws;
    let d = cfg.hidden_size;
    let (inputs, outputs) = io::c2i_io(cfg.in_channels, height, width);
    let dims = |t: &io::IoTensor| -> Vec<Dim> {
        t.dims
            .iter()
            .map(|d| {
                if *d < 0 {
                    Dim::Batch(1)
                } else {
                    Dim::Fixed(*d as usize)
                }
            })
            .collect()
    };
    let dtype = |t: &io::IoTensor| match t.dtype {
        io::IoType::F32 => DType::F32,
        io::IoType::I64 => DType::I64,
    };
    let x = cx.g.input(inputs[0].name, dtype(&inputs[0]), dims(&inputs[0]))?;
    let t = cx.g.input(inputs[1].name, dtype(&inputs[1]), dims(&inputs[1]))?;
    let y = cx.g.input(inputs[2].name, dtype(&inputs[2]), dims(&inputs[2]))?;
    let batch = Dim::Batch(1);

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
    let s_cond = cx.g.scoped("s_cond", |g| {
        let te = g.reshape(t_emb, &[batch, Dim::Fixed(1), Dim::Fixed(d)])?;
        let sc = g.add(te, s)?;
        let sc = g.silu(sc)?;
        g.reshape(sc, &[Dim::Batch(l), Dim::Fixed(d)])
    })?;

    // Pixel level.
    let mut px = embedders::pixel_embedder(cx, cfg, x, hs, ws)?;
    for i in 0..cfg.pixel_depth {
        px = pixel_block::pixel_block(cx, cfg, i, px, s_cond, hs, ws)?;
    }
    let v = final_layer::final_layer(cx, cfg, px, batch, hs, ws)?;
    cx.g.output(outputs[0].name, v)?;
    Ok(())
}

/// The graph alone (for dumps and tests), without writing anything.
pub fn build_graph(cx: Ctx, cfg: &ModelConfig, height: usize, width: usize) -> Result<Graph> {
    let mut cx = cx;
    build(&mut cx, cfg, height, width)?;
    Ok(cx.g)
}

//! The text-to-image PixelDiT (`PixDiT_T2I` in the official `pixdit_core/pixeldit_t2i.py`, pinned upstream commit
//! `07015dd233bab8a057ac6edc7b67711da5ba896e`), one file per checkpoint subtree. See
//! `shared/docs/pixeldit-architecture.md` sections 3.3, 4.2 and 5.
//!
//! * Inputs `x [B,3,H,W]` (noisy image), `t [B]` (sigma * 1000, 1000 = noise), `text [B, L, E]` (the text-encoder
//!   hidden states, L = `text.max_length`, E = `text.embed_dim`); output `v [B,3,H,W]` = noise - x0.
//! * Conditioning `c = SiLU(t_emb)`; text enters only through the joint attention of the MM-DiT blocks
//!   ([`mmdit_block`]), whose image stream then conditions the unchanged PiT blocks through
//!   `s_cond = SiLU(t_emb + s)`.
//! * The text stream of the last MM-DiT block is discarded by the official model: its output projection, second
//!   norm and MLP (`proj_y`, `norm_y2`, `mlp_y`: 21.2M parameters at hidden 1536) are dead compute and are not
//!   exported.

mod joint_attention;
mod mmdit_block;
mod text_embedder;

use super::{dynamic_image_input, embedders, graph_input, pixel_level};
use crate::nn::{Ctx, Grid};
use crate::{ExportError, Result};
use pixeldit_graph::Symbol;
use pixeldit_spec::{io, ModelConfig};

/// Builds `v = model(x, t, text)` at a fixed `height x width` into `cx.g`.
pub fn build(cx: &mut Ctx, cfg: &ModelConfig, height: usize, width: usize) -> Result<()> {
    cfg.check_size(height, width)?;
    let text_cfg = cfg
        .text
        .as_ref()
        .ok_or_else(|| ExportError::Unsupported(format!("config '{}' has no text section", cfg.name)))?;
    let (inputs, outputs) = io::t2i_io(
        cfg.in_channels,
        height,
        width,
        text_cfg.max_length,
        text_cfg.embed_dim,
    );
    let (x, grid) = if cx.dynamic_size {
        let (x, grid) = dynamic_image_input(cx, cfg, &inputs[0])?;
        // The joint sequence [text; image] has rows * cols + max_length tokens.
        let st = text_cfg.max_length;
        cx.g.scoped("pixeldit.image_size", |g| {
            let l = g.dim_value(grid.tokens())?;
            let st = g.const_i64(&[st as i64])?;
            let joint = g.add(l, st)?;
            g.bind_symbol(Symbol::Joint, joint);
            Ok(())
        })?;
        (x, grid)
    } else {
        let (hs, ws) = (height / cfg.patch_size, width / cfg.patch_size);
        (graph_input(cx, &inputs[0])?, Grid::fixed(hs, ws))
    };
    let t = graph_input(cx, &inputs[1])?;
    let text = graph_input(cx, &inputs[2])?;

    // Conditioning c = SiLU(t_emb), no pooled text.
    let t_emb = embedders::timestep_embedder(cx, cfg, t)?;
    let c = cx.g.scoped("c", |g| g.silu(t_emb))?;
    let mut y = text_embedder::text_embedder(cx, cfg, text)?;

    // Patch level: MM-DiT blocks over [text; image].
    let mut s = embedders::patch_embedder(cx, cfg, x, grid)?;
    for i in 0..cfg.patch_depth {
        let last = i + 1 == cfg.patch_depth;
        let (s2, y2) = mmdit_block::mmdit_block(cx, cfg, i, s, y, c, grid, !last)?;
        s = s2;
        if let Some(y2) = y2 {
            y = y2;
        }
    }
    // Pixel level: unchanged PiT blocks (attention width and heads from the config).
    pixel_level(cx, cfg, x, t_emb, s, grid, outputs[0].name)
}

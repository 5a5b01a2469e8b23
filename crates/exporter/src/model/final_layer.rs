//! `final_layer`: RMSNorm and Linear(16 -> 3), no adaLN (spec 2.3 step 11), then unpatchify (step 12).

use crate::nn::{Ctx, Grid};
use crate::Result;
use pixeldit_graph::{Dim, Value};
use pixeldit_spec::ModelConfig;

/// `[B*L, p*p, 16] -> [B, 3, H, W]`.
pub fn final_layer(cx: &mut Ctx, cfg: &ModelConfig, x: Value, batch: Dim, grid: Grid) -> Result<Value> {
    let p = cfg.patch_size;
    let c = cfg.in_channels;
    let h = cx.rms_norm(x, "final_layer.norm.weight")?;
    let o = cx.linear(h, "final_layer.linear", cfg.in_channels, true)?;
    Ok(cx.g.scoped("final_layer", |g| {
        let r = g.reshape(
            o,
            &[
                batch,
                grid.rows,
                grid.cols,
                Dim::Fixed(p),
                Dim::Fixed(p),
                Dim::Fixed(c),
            ],
        )?;
        let t = g.transpose(r, &[0, 5, 1, 3, 2, 4])?;
        g.reshape(
            t,
            &[
                batch,
                Dim::Fixed(c),
                grid.rows.times(Dim::Fixed(p)),
                grid.cols.times(Dim::Fixed(p)),
            ],
        )
    })?)
}

//! FLOPs of one forward, by the convention of `shared/docs/pixeldit-architecture.md` section 6 (the official
//! `tools/compute_flops.py`): a Linear is `2 * tokens * in * out`, the attention core `4 * S^2 * width`; norms,
//! RoPE, softmax and element-wise ops are not counted. Batch 1, one CFG branch.

use crate::{ModelConfig, ModelKind};

/// FLOPs of one forward of one image, split the way the patch-level step cache splits the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardFlops {
    /// The patch blocks (MM-DiT blocks for text-to-image models).
    pub patch_blocks: f64,
    /// The patch embedding and the class or text embedder: the rest of what a cached forward skips.
    pub patch_embedders: f64,
    /// The PiT blocks.
    pub pixel_blocks: f64,
    /// Of `pixel_blocks`, the pixel-wise adaLN projections (skipped by the step cache's modulation cut).
    pub pixel_adaln: f64,
    /// The timestep MLP, the pixel embedding and the final layer: the rest of what every forward runs.
    pub pixel_rest: f64,
}

impl ForwardFlops {
    /// FLOPs of `cfg` at `height x width`.
    pub fn of(cfg: &ModelConfig, height: usize, width: usize) -> Self {
        let f = |n: usize| n as f64;
        let p = f(cfg.patch_size);
        let hw = f(height * width);
        let l = hw / (p * p);
        let (d, ff) = (f(cfg.hidden_size), f(cfg.mlp_hidden()));
        let (p2, dp, a) = (p * p, f(cfg.pixel_hidden_size), f(cfg.pixel_attn_hidden_size));
        let text_len = cfg.text.as_ref().map(|t| f(t.max_length));
        let patch_block = match (cfg.kind, text_len) {
            (ModelKind::T2i, Some(lt)) => {
                let s = l + lt;
                2.0 * s * (4.0 * d * d + 3.0 * d * ff) + 4.0 * s * s * d + 2.0 * 2.0 * 6.0 * d * d
            }
            _ => 2.0 * l * (4.0 * d * d + 3.0 * d * ff) + 4.0 * l * l * d + 2.0 * 6.0 * d * d,
        };
        let adaln = 2.0 * l * d * (f(cfg.pit_modulation_chunks()) * p2 * dp);
        let pit_block = adaln
            + 2.0 * 2.0 * l * (p2 * dp) * a
            + 2.0 * l * 4.0 * a * a
            + 4.0 * l * l * a
            + 2.0 * hw * 2.0 * (dp * f(cfg.pixel_mlp_ratio) * dp);
        let channels = f(cfg.in_channels);
        let patch_embed = 2.0 * l * (channels * p2) * d;
        let text_embed = match &cfg.text {
            Some(t) => 2.0 * f(t.max_length) * f(t.embed_dim) * d,
            None => 0.0,
        };
        let t_mlp = 2.0 * f(cfg.timestep_freq_dim) * d + 2.0 * d * d;
        let pixel_embed = 2.0 * hw * channels * dp;
        let final_layer = 2.0 * hw * dp * channels;
        ForwardFlops {
            patch_blocks: f(cfg.patch_depth) * patch_block,
            patch_embedders: patch_embed + text_embed,
            pixel_blocks: f(cfg.pixel_depth) * pit_block,
            pixel_adaln: f(cfg.pixel_depth) * adaln,
            pixel_rest: t_mlp + pixel_embed + final_layer,
        }
    }

    /// The whole forward.
    pub fn whole(&self) -> f64 {
        self.patch_blocks + self.patch_embedders + self.pixel_blocks + self.pixel_rest
    }

    /// A forward of the pixel level alone (the patch tokens given).
    pub fn pixel_level(&self) -> f64 {
        self.pixel_blocks + self.pixel_rest
    }

    /// FLOPs of `whole` whole forwards and `pixel_only` pixel-level forwards (split at `cut`) relative to the same
    /// number of whole forwards: what the step cache costs against the uncached run.
    pub fn cached_relative(&self, whole: usize, pixel_only: usize, cut: crate::PatchCut) -> f64 {
        let total = (whole + pixel_only).max(1) as f64 * self.whole();
        (whole as f64 * self.whole() + pixel_only as f64 * self.pixel_level_at(cut)) / total
    }

    /// A forward of the pixel-level graph of a split at `cut` (the modulation cut also skips the adaLN
    /// projections).
    pub fn pixel_level_at(&self, cut: crate::PatchCut) -> f64 {
        match cut {
            crate::PatchCut::Modulation => self.pixel_level() - self.pixel_adaln,
            _ => self.pixel_level(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within 0.1 GFLOPs of the table (its rounded parts do not always add up: 376.3 vs 376.4).
    fn near(x: f64, table_gflops: f64) -> bool {
        (x / 1e9 - table_gflops).abs() <= 0.1 + 1e-9
    }

    #[test]
    fn matches_the_table_of_the_architecture_notes() {
        // Section 6: XL @256 patch 220.3, pixel 90.5, total 311.2 GFLOPs; XL @512 974.0 / 376.4;
        // T2I @1024 5147.9 / 1023.3 / 6183.1; B @256 46.0 / 29.1.
        let at = |name: &str, h: usize| ForwardFlops::of(&ModelConfig::preset(name).unwrap(), h, h);
        let cases = [
            ("XL", 256, [220.3, 90.5, 311.2]),
            ("XL", 512, [974.0, 376.4, 1352.2]),
            ("t2i", 1024, [5147.9, 1023.3, 6183.1]),
            ("B", 256, [46.0, 29.1, 75.4]),
        ];
        for (name, size, [patch, pixel, total]) in cases {
            let f = at(name, size);
            assert!(
                near(f.patch_blocks, patch),
                "{name}@{size} patch {}",
                f.patch_blocks / 1e9
            );
            assert!(
                near(f.pixel_blocks, pixel),
                "{name}@{size} pixel {}",
                f.pixel_blocks / 1e9
            );
            assert!(near(f.whole(), total), "{name}@{size} total {}", f.whole() / 1e9);
        }
    }
}

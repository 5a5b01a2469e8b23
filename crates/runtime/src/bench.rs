//! Per-forward latency measurement (the `BENCHMARKS.md` table is the CLI's).

use crate::denoiser::Denoiser;
use crate::error::Result;
use crate::io::seeded_noise;
use ndarray::Array1;
use pixeldit_spec::{ModelKind, ModelMetadata};
use std::time::Instant;

/// Latency statistics of one backend, in milliseconds.
#[derive(Debug, Clone)]
pub struct BenchStats {
    /// Timed runs.
    pub runs: usize,
    /// Median.
    pub median_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Slowest run.
    pub max_ms: f64,
}

/// One forward of a fixed input.
type OneForward = Box<dyn FnMut(&mut Denoiser) -> Result<()>>;

/// Times `runs` forwards of batch `batch` after `warmup` untimed ones. Inputs: x seeded noise; class-conditional
/// models t = 0.5 and classes 0, 1, ..; text-to-image models t = 500 (sigma 0.5 x 1000) and seeded noise as the
/// `[batch, max_length, embed_dim]` text embeddings.
pub fn bench_forward(
    denoiser: &mut Denoiser,
    meta: &ModelMetadata,
    batch: usize,
    warmup: usize,
    runs: usize,
) -> Result<BenchStats> {
    let c = meta.config.in_channels;
    let x = seeded_noise(0, [batch, c, meta.height, meta.width]);
    let mut forward: OneForward = match &meta.config.text {
        Some(text) if meta.config.kind == ModelKind::T2i => {
            let t = Array1::from_elem(batch, 500.0f32);
            let emb = seeded_noise(1, [batch, text.max_length, text.embed_dim, 1])
                .into_shape_with_order((batch, text.max_length, text.embed_dim))
                .expect("same element count");
            Box::new(move |d| d.text_velocity(x.view(), t.view(), emb.view()).map(drop))
        }
        _ => {
            let t = Array1::from_elem(batch, 0.5f32);
            let classes = meta.config.num_classes.max(1);
            let y: Array1<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
            Box::new(move |d| d.class_velocity(x.view(), t.view(), y.view()).map(drop))
        }
    };
    for _ in 0..warmup {
        forward(denoiser)?;
    }
    let mut ms = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        forward(denoiser)?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(stats(ms))
}

/// Median (mean of the two middle values for even counts), min and max.
pub fn stats(mut ms: Vec<f64>) -> BenchStats {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    BenchStats {
        runs: n,
        median_ms: median,
        min_ms: ms[0],
        max_ms: ms[n - 1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = stats(vec![5.0, 1.0, 3.0]);
        assert_eq!((s.median_ms, s.min_ms, s.max_ms), (3.0, 1.0, 5.0));
        assert_eq!(stats(vec![4.0, 1.0, 3.0, 2.0]).median_ms, 2.5);
    }
}

//! Per-forward latency measurement (the `BENCHMARKS.md` table is the CLI's).

use crate::backend::Backend;
use crate::denoiser::Denoiser;
use crate::error::Result;
use crate::io::seeded_noise;
use crate::tensor::TensorRef;
use ndarray::{Array1, Array2};
use pixeldit_spec::text_encoder::{TextEncoderMetadata, ATTENTION_MASK, INPUT_IDS, LAST_HIDDEN_STATE};
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
            Box::new(move |d| d.forward(x.view(), t.view(), emb.view().into()).map(drop))
        }
        _ => {
            let t = Array1::from_elem(batch, 0.5f32);
            let classes = meta.config.num_classes.max(1);
            let y: Array1<i64> = (0..batch).map(|i| (i % classes) as i64).collect();
            Box::new(move |d| d.forward(x.view(), t.view(), y.view().into()).map(drop))
        }
    };
    time_runs(warmup, runs, || forward(denoiser))
}

/// Times `runs` forwards of a text encoder with batch `batch` after `warmup` untimed ones: `sequence_length` tokens
/// spread over the vocabulary, every position valid (the attention mask is all ones).
pub fn bench_text_encoder(
    encoder: &mut dyn Backend,
    meta: &TextEncoderMetadata,
    batch: usize,
    warmup: usize,
    runs: usize,
) -> Result<BenchStats> {
    let s = meta.sequence_length;
    let vocab = meta.vocab_size.max(1);
    let ids = Array2::from_shape_fn((batch, s), |(b, i)| ((b * s + i) * 7919 % vocab) as i64);
    let mask = Array2::<i64>::ones((batch, s));
    time_runs(warmup, runs, || {
        encoder
            .run(
                &[
                    (INPUT_IDS, TensorRef::from(ids.view())),
                    (ATTENTION_MASK, TensorRef::from(mask.view())),
                ],
                &[LAST_HIDDEN_STATE],
            )
            .map(drop)
    })
}

/// `warmup` untimed calls of `f`, then the statistics of `runs` (at least one) timed ones.
fn time_runs(warmup: usize, runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<BenchStats> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ms = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        f()?;
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

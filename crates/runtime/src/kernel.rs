//! The f32 kernel of the custom op `pixeldit.RotaryAttention` (semantics: [`pixeldit_spec::custom_op`]), shared by
//! the ONNX Runtime and tract backends.
//!
//! Per `(batch, head)` the kernel gathers q, k and v into contiguous `[S, Dh]` buffers (normalising and rotating q
//! and k on the way) and a transposed copy of k, then for each block of query rows computes the `S` logits as axpys
//! over the transposed k (vectorisable, compiled for AVX2 + FMA when the CPU has them), a stable softmax, and
//! accumulates the weighted v rows. Work is split over `(batch, head)` pairs on scoped threads when it
//! is large enough to pay for them.

use std::fmt;

/// Attributes of one `RotaryAttention` node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotaryAttentionParams {
    /// Number of heads H.
    pub num_heads: usize,
    /// RMSNorm epsilon.
    pub epsilon: f32,
    /// Softmax scale (usually `1/sqrt(Dh)`).
    pub scale: f32,
}

/// Operand sizes that do not match the op contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelShapeError(pub String);

impl fmt::Display for KernelShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pixeldit.RotaryAttention: {}", self.0)
    }
}

impl std::error::Error for KernelShapeError {}

/// The operands of one call, as flat row-major slices.
#[derive(Debug, Clone, Copy)]
pub struct RotaryAttentionInputs<'a> {
    /// `[B, S, 3*H*Dh]`.
    pub qkv: &'a [f32],
    /// Batch B.
    pub batch: usize,
    /// Tokens S.
    pub seq: usize,
    /// `[Dh]`.
    pub q_norm_weight: &'a [f32],
    /// `[Dh]`.
    pub k_norm_weight: &'a [f32],
    /// `[S, Dh/2]`.
    pub cos: &'a [f32],
    /// `[S, Dh/2]`.
    pub sin: &'a [f32],
}

impl RotaryAttentionInputs<'_> {
    /// Checks all sizes and returns the head dim Dh.
    pub fn validate(&self, p: &RotaryAttentionParams) -> Result<usize, KernelShapeError> {
        let err = |m: String| Err(KernelShapeError(m));
        let dh = self.q_norm_weight.len();
        if p.num_heads == 0 || dh == 0 || dh % 2 != 0 {
            return err(format!(
                "num_heads {} and head dim {dh} must be positive, Dh even",
                p.num_heads
            ));
        }
        if self.k_norm_weight.len() != dh {
            return err(format!(
                "k_norm_weight has {} elements, q_norm_weight {dh}",
                self.k_norm_weight.len()
            ));
        }
        let width = 3 * p.num_heads * dh;
        if self.qkv.len() != self.batch * self.seq * width {
            return err(format!(
                "qkv has {} elements, expected B*S*3*H*Dh = {}*{}*3*{}*{dh}",
                self.qkv.len(),
                self.batch,
                self.seq,
                p.num_heads
            ));
        }
        for (name, t) in [("cos", self.cos), ("sin", self.sin)] {
            if t.len() != self.seq * dh / 2 {
                return err(format!(
                    "{name} has {} elements, expected S*Dh/2 = {}*{}",
                    t.len(),
                    self.seq,
                    dh / 2
                ));
            }
        }
        Ok(dh)
    }

    /// Output length `B*S*H*Dh`.
    pub fn output_len(&self, p: &RotaryAttentionParams) -> usize {
        self.batch * self.seq * p.num_heads * self.q_norm_weight.len()
    }
}

/// Below this many multiply-adds (`B*H*S*S*Dh`) the kernel stays on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 22;

/// Computes `RotaryAttention` into `out` (`[B, S, H*Dh]`, length [`RotaryAttentionInputs::output_len`]).
pub fn rotary_attention(
    inp: &RotaryAttentionInputs<'_>,
    p: &RotaryAttentionParams,
    out: &mut [f32],
) -> Result<(), KernelShapeError> {
    let dh = inp.validate(p)?;
    if out.len() != inp.output_len(p) {
        return Err(KernelShapeError(format!(
            "output has {} elements, expected {}",
            out.len(),
            inp.output_len(p)
        )));
    }
    run_heads(
        inp.batch,
        p.num_heads,
        inp.seq,
        dh,
        inp.seq * inp.seq,
        out,
        |pair, sc| head(inp, p, dh, pair, sc),
    );
    Ok(())
}

/// Runs `head` for every `(batch, head)` pair of a `[B, S, H*Dh]` attention output and scatters each pair's
/// `[S, Dh]` result (`Scratch::o`) into `out`: on the calling thread below [`PARALLEL_THRESHOLD`], else on a scoped
/// pool where each worker takes a contiguous range of pairs with its own [`Scratch`] (`logits_len` logits).
pub(crate) fn run_heads(
    batch: usize,
    h: usize,
    s: usize,
    dh: usize,
    logits_len: usize,
    out: &mut [f32],
    head: impl Fn(usize, &mut Scratch) + Sync,
) {
    let pairs = batch * h;
    let work = pairs * s * s * dh;
    let threads = if work >= PARALLEL_THRESHOLD {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(pairs)
    } else {
        1
    };
    if threads <= 1 {
        let mut scratch = Scratch::new(s, dh, logits_len);
        for pair in 0..pairs {
            head(pair, &mut scratch);
            scatter(&scratch.o, pair, h, s, dh, out);
        }
        return;
    }
    // Each worker takes a contiguous range of (batch, head) pairs and returns their [S, Dh] results.
    let per = pairs.div_ceil(threads);
    let head = &head;
    let results: Vec<Vec<(usize, Vec<f32>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut scratch = Scratch::new(s, dh, logits_len);
                    (t * per..((t + 1) * per).min(pairs))
                        .map(|pair| {
                            head(pair, &mut scratch);
                            (pair, scratch.o.clone())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("attention worker panicked"))
            .collect()
    });
    for (pair, o) in results.iter().flatten() {
        scatter(o, *pair, h, s, dh, out);
    }
}

/// Per-worker buffers of one `(batch, head)` pair: `[S, Dh]` Q, K, V and O, and the logits.
pub(crate) struct Scratch {
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) o: Vec<f32>,
    pub(crate) logits: Vec<f32>,
}

impl Scratch {
    fn new(s: usize, dh: usize, logits_len: usize) -> Self {
        Scratch {
            q: vec![0.0; s * dh],
            k: vec![0.0; s * dh],
            v: vec![0.0; s * dh],
            o: vec![0.0; s * dh],
            logits: vec![0.0; logits_len],
        }
    }
}

fn scatter(o: &[f32], pair: usize, h: usize, s: usize, dh: usize, out: &mut [f32]) {
    let (b, hh) = (pair / h, pair % h);
    for tok in 0..s {
        let dst = (b * s + tok) * h * dh + hh * dh;
        out[dst..dst + dh].copy_from_slice(&o[tok * dh..(tok + 1) * dh]);
    }
}

/// RMSNorm over `x` with `weight`, then the adjacent-pair rotation with one row of the tables.
pub(crate) fn norm_rope(x: &mut [f32], weight: &[f32], eps: f32, cos: &[f32], sin: &[f32]) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v = *v * inv * w;
    }
    for (j, pair) in x.chunks_exact_mut(2).enumerate() {
        let (a, c) = (pair[0], pair[1]);
        pair[0] = a * cos[j] - c * sin[j];
        pair[1] = a * sin[j] + c * cos[j];
    }
}

/// One `(batch, head)` pair: gather + QK-RMSNorm + RoPE into `[S, Dh]` buffers, then `P = softmax(scale Q K^T)`
/// and `O = P V` as two GEMMs (ndarray / matrixmultiply, which picks AVX/FMA kernels at run time).
fn head(
    inp: &RotaryAttentionInputs<'_>,
    p: &RotaryAttentionParams,
    dh: usize,
    pair: usize,
    sc: &mut Scratch,
) {
    use ndarray::linalg::general_mat_mul;
    use ndarray::{ArrayView2, ArrayViewMut2};
    let (h, s) = (p.num_heads, inp.seq);
    let (b, hh) = (pair / h, pair % h);
    let width = 3 * h * dh;
    let half = dh / 2;
    for tok in 0..s {
        let row = &inp.qkv[(b * s + tok) * width..(b * s + tok + 1) * width];
        let (cos, sin) = (
            &inp.cos[tok * half..(tok + 1) * half],
            &inp.sin[tok * half..(tok + 1) * half],
        );
        let dst = tok * dh..(tok + 1) * dh;
        sc.q[dst.clone()].copy_from_slice(&row[hh * dh..(hh + 1) * dh]);
        norm_rope(&mut sc.q[dst.clone()], inp.q_norm_weight, p.epsilon, cos, sin);
        sc.k[dst.clone()].copy_from_slice(&row[(h + hh) * dh..(h + hh + 1) * dh]);
        norm_rope(&mut sc.k[dst.clone()], inp.k_norm_weight, p.epsilon, cos, sin);
        sc.v[dst].copy_from_slice(&row[(2 * h + hh) * dh..(2 * h + hh + 1) * dh]);
    }
    let q = ArrayView2::from_shape((s, dh), &sc.q).expect("q shape");
    let k = ArrayView2::from_shape((s, dh), &sc.k).expect("k shape");
    let v = ArrayView2::from_shape((s, dh), &sc.v).expect("v shape");
    let mut logits = ArrayViewMut2::from_shape((s, s), &mut sc.logits).expect("logits shape");
    general_mat_mul(p.scale, &q, &k.t(), 0.0, &mut logits);
    for mut row in logits.rows_mut() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut denom = 0.0f32;
        for l in row.iter_mut() {
            *l = (*l - max).exp();
            denom += *l;
        }
        let inv = 1.0 / denom;
        row.mapv_inplace(|l| l * inv);
    }
    let mut o = ArrayViewMut2::from_shape((s, dh), &mut sc.o).expect("o shape");
    general_mat_mul(1.0, &logits.view(), &v, 0.0, &mut o);
}

/// Straightforward f64 implementation of the op contract, for tests.
#[doc(hidden)]
pub fn rotary_attention_naive(inp: &RotaryAttentionInputs<'_>, p: &RotaryAttentionParams) -> Vec<f32> {
    let dh = inp.q_norm_weight.len();
    let (b_n, s, h) = (inp.batch, inp.seq, p.num_heads);
    let width = 3 * h * dh;
    let at = |b: usize, tok: usize, part: usize, hh: usize, d: usize| -> f64 {
        f64::from(inp.qkv[(b * s + tok) * width + part * h * dh + hh * dh + d])
    };
    let prep = |b: usize, tok: usize, part: usize, hh: usize, w: &[f32]| -> Vec<f64> {
        let x: Vec<f64> = (0..dh).map(|d| at(b, tok, part, hh, d)).collect();
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / dh as f64 + f64::from(p.epsilon)).sqrt();
        let x: Vec<f64> = x.iter().zip(w).map(|(v, w)| v / rms * f64::from(*w)).collect();
        let mut y = x.clone();
        for j in 0..dh / 2 {
            let (c, sn) = (
                f64::from(inp.cos[tok * dh / 2 + j]),
                f64::from(inp.sin[tok * dh / 2 + j]),
            );
            y[2 * j] = x[2 * j] * c - x[2 * j + 1] * sn;
            y[2 * j + 1] = x[2 * j] * sn + x[2 * j + 1] * c;
        }
        y
    };
    let mut out = vec![0f32; b_n * s * h * dh];
    for b in 0..b_n {
        for hh in 0..h {
            let q: Vec<Vec<f64>> = (0..s).map(|t| prep(b, t, 0, hh, inp.q_norm_weight)).collect();
            let k: Vec<Vec<f64>> = (0..s).map(|t| prep(b, t, 1, hh, inp.k_norm_weight)).collect();
            for i in 0..s {
                let logits: Vec<f64> = (0..s)
                    .map(|j| f64::from(p.scale) * q[i].iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f64>())
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dh {
                    let v: f64 = (0..s).map(|j| e[j] / z * at(b, j, 2, hh, d)).sum();
                    out[(b * s + i) * h * dh + hh * dh + d] = v as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    fn check(batch: usize, seq: usize, heads: usize, dh: usize, seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let qkv = random(batch * seq * 3 * heads * dh, &mut rng);
        let (qw, kw) = (random(dh, &mut rng), random(dh, &mut rng));
        let (cos, sin) = pixeldit_spec::custom_op::rope_2d_tables(1, seq, dh, 10000.0);
        let inp = RotaryAttentionInputs {
            qkv: &qkv,
            batch,
            seq,
            q_norm_weight: &qw,
            k_norm_weight: &kw,
            cos: &cos,
            sin: &sin,
        };
        let p = RotaryAttentionParams {
            num_heads: heads,
            epsilon: 1e-6,
            scale: 1.0 / (dh as f32).sqrt(),
        };
        let mut out = vec![0f32; inp.output_len(&p)];
        rotary_attention(&inp, &p, &mut out).unwrap();
        let naive = rotary_attention_naive(&inp, &p);
        let err = out
            .iter()
            .zip(&naive)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "B{batch} S{seq} H{heads} Dh{dh}: max abs err {err}");
    }

    #[test]
    fn matches_naive_small() {
        check(2, 6, 2, 8, 0);
        check(1, 1, 1, 4, 1);
        check(3, 17, 4, 12, 2);
    }

    #[test]
    fn matches_naive_threaded() {
        // 2*16*128*128*16 = 8.4M multiply-adds: above the threading threshold.
        check(2, 128, 16, 16, 3);
    }

    #[test]
    fn rejects_bad_shapes() {
        let qkv = vec![0f32; 2 * 3 * 2 * 4];
        let w = vec![1f32; 4];
        let t = vec![0f32; 2 * 2];
        let inp = RotaryAttentionInputs {
            qkv: &qkv,
            batch: 1,
            seq: 2,
            q_norm_weight: &w,
            k_norm_weight: &w,
            cos: &t,
            sin: &t,
        };
        let p = RotaryAttentionParams {
            num_heads: 2,
            epsilon: 1e-6,
            scale: 0.5,
        };
        let mut out = vec![0f32; 16];
        assert!(rotary_attention(&inp, &p, &mut out).is_ok());
        let p3 = RotaryAttentionParams { num_heads: 3, ..p };
        assert!(rotary_attention(&inp, &p3, &mut out)
            .unwrap_err()
            .0
            .contains("qkv has 48 elements"));
        let mut short = vec![0f32; 15];
        assert!(rotary_attention(&inp, &p, &mut short).is_err());
    }
}

//! The f32 kernel of the custom op `pixeldit.RotaryAttention` (semantics: [`pixeldit_spec::custom_op`]), shared by
//! the ONNX Runtime and tract backends.
//!
//! Per `(batch, head)` the kernel gathers q, k and v into contiguous `[S, Dh]` buffers (normalising and rotating q
//! and k on the way), then [`attend`]s: `P = softmax(scale Q K^T)` and `O = P V` as two GEMMs (ndarray /
//! matrixmultiply, which picks AVX/FMA kernels at run time) around a row softmax whose `exp` is a polynomial that
//! the compiler vectorises (AVX2 + FMA when the CPU has them). Work is split over `(batch, head)` pairs on scoped
//! threads when it is large enough to pay for them.

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

/// A host's parallel-for (ONNX Runtime's intra-op pool through `KernelContext_ParallelFor`): calls `task(i)` once
/// for every `i < n`, possibly on several threads, and returns when all calls are done. Calls it could not make
/// are made by the kernel on the calling thread.
pub trait ParallelFor {
    /// Runs `task(0..n)`.
    fn parallel_for(&self, n: usize, task: &(dyn Fn(usize) + Sync + Send));
}

/// Where a kernel runs its independent `(batch, head)` tasks.
#[derive(Clone, Copy)]
pub enum Threads<'a> {
    /// Scoped threads of its own, one per available core, when the work is large enough (tract, tests).
    Own,
    /// The host's thread pool, so that the kernel does not compete with it for the cores.
    Host(&'a dyn ParallelFor),
}

/// Computes `RotaryAttention` into `out` (`[B, S, H*Dh]`, length [`RotaryAttentionInputs::output_len`]).
pub fn rotary_attention(
    inp: &RotaryAttentionInputs<'_>,
    p: &RotaryAttentionParams,
    threads: Threads<'_>,
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
    let shape = HeadsShape {
        batch: inp.batch,
        heads: p.num_heads,
        seq: inp.seq,
        head_dim: dh,
    };
    run_heads(shape, threads, out, |pair, sc| head(inp, p, dh, pair, sc));
    Ok(())
}

/// Sizes of a `[B, S, H*Dh]` attention output.
#[derive(Clone, Copy)]
pub(crate) struct HeadsShape {
    pub(crate) batch: usize,
    pub(crate) heads: usize,
    pub(crate) seq: usize,
    pub(crate) head_dim: usize,
}

/// Tasks that a host pool did not run (made on the calling thread instead); read by tests.
static HOST_POOL_MISSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many `(batch, head)` tasks handed to a [`Threads::Host`] pool so far were not run by it (the kernel ran
/// them itself). For tests: 0 means the host's parallel-for works.
#[doc(hidden)]
pub fn host_pool_misses() -> usize {
    HOST_POOL_MISSES.load(std::sync::atomic::Ordering::Relaxed)
}

thread_local! {
    /// The [`Scratch`] of the current pool thread, kept between calls.
    static POOL_SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::new(0, 0));
}

/// Runs `head` for every `(batch, head)` pair of a `[B, S, H*Dh]` attention output and scatters each pair's
/// `[S, Dh]` result (`Scratch::o`) into `out`: on the calling thread below [`PARALLEL_THRESHOLD`]; else on the
/// host's pool (one task per pair, with a per-thread [`Scratch`]), or on scoped threads of its own where each
/// takes a contiguous range of pairs.
pub(crate) fn run_heads(
    shape: HeadsShape,
    threads: Threads<'_>,
    out: &mut [f32],
    head: impl Fn(usize, &mut Scratch) + Sync,
) {
    let HeadsShape {
        batch,
        heads: h,
        seq: s,
        head_dim: dh,
    } = shape;
    let pairs = batch * h;
    let work = pairs * s * s * dh;
    if work < PARALLEL_THRESHOLD {
        let mut scratch = Scratch::new(s, dh);
        for pair in 0..pairs {
            head(pair, &mut scratch);
            scatter(&scratch.o, pair, h, s, dh, out);
        }
        return;
    }
    if let Threads::Host(pool) = threads {
        let slots: Vec<std::sync::OnceLock<Vec<f32>>> = (0..pairs).map(|_| Default::default()).collect();
        let task = |pair: usize| {
            POOL_SCRATCH.with_borrow_mut(|scratch| {
                scratch.reserve(s, dh);
                head(pair, scratch);
                let _ = slots[pair].set(scratch.o[..s * dh].to_vec());
            })
        };
        pool.parallel_for(pairs, &task);
        for (pair, slot) in slots.iter().enumerate() {
            match slot.get() {
                Some(o) => scatter(o, pair, h, s, dh, out),
                None => {
                    HOST_POOL_MISSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let mut scratch = Scratch::new(s, dh);
                    head(pair, &mut scratch);
                    scatter(&scratch.o, pair, h, s, dh, out);
                }
            }
        }
        return;
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(pairs);
    // Each worker takes a contiguous range of (batch, head) pairs and returns their [S, Dh] results.
    let per = pairs.div_ceil(threads);
    let head = &head;
    let results: Vec<Vec<(usize, Vec<f32>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    let mut scratch = Scratch::new(s, dh);
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

/// Per-worker buffers of one `(batch, head)` pair: `[S, Dh]` Q, K, V and O, and one block of logits.
pub(crate) struct Scratch {
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) o: Vec<f32>,
    pub(crate) logits: Vec<f32>,
}

impl Scratch {
    fn new(s: usize, dh: usize) -> Self {
        Scratch {
            q: vec![0.0; s * dh],
            k: vec![0.0; s * dh],
            v: vec![0.0; s * dh],
            o: vec![0.0; s * dh],
            logits: vec![0.0; logits_len(s)],
        }
    }

    /// Grows the buffers to hold `s` tokens of `dh` (kept when already large enough).
    fn reserve(&mut self, s: usize, dh: usize) {
        for buf in [&mut self.q, &mut self.k, &mut self.v, &mut self.o] {
            if buf.len() < s * dh {
                buf.resize(s * dh, 0.0);
            }
        }
        if self.logits.len() < logits_len(s) {
            self.logits.resize(logits_len(s), 0.0);
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

/// One `(batch, head)` pair of `RotaryAttention`.
fn head(
    inp: &RotaryAttentionInputs<'_>,
    p: &RotaryAttentionParams,
    dh: usize,
    pair: usize,
    sc: &mut Scratch,
) {
    let (s, width) = (inp.seq, 3 * p.num_heads * dh);
    let b = pair / p.num_heads;
    gather_and_attend(sc, p, dh, pair % p.num_heads, s, (inp.cos, inp.sin), |tok| {
        let r = (b * s + tok) * width;
        (&inp.qkv[r..r + width], inp.q_norm_weight, inp.k_norm_weight)
    });
}

/// Head `hh` of a sequence of `s` tokens: gathers q, k, v from each token's `[3*H*Dh]` qkv row (`row_of(tok)` gives
/// the row and the token's q and k RMSNorm weights) into `[S, Dh]` buffers with QK-RMSNorm and RoPE (rows of the
/// `[S, Dh/2]` `tables` (cos, sin)), then [`attend`]s.
pub(crate) fn gather_and_attend<'a>(
    sc: &mut Scratch,
    p: &RotaryAttentionParams,
    dh: usize,
    hh: usize,
    s: usize,
    tables: (&[f32], &[f32]),
    row_of: impl Fn(usize) -> (&'a [f32], &'a [f32], &'a [f32]),
) {
    let h = p.num_heads;
    let half = dh / 2;
    for tok in 0..s {
        let (row, q_weight, k_weight) = row_of(tok);
        let (cos, sin) = (
            &tables.0[tok * half..(tok + 1) * half],
            &tables.1[tok * half..(tok + 1) * half],
        );
        let dst = tok * dh..(tok + 1) * dh;
        sc.q[dst.clone()].copy_from_slice(&row[hh * dh..(hh + 1) * dh]);
        norm_rope(&mut sc.q[dst.clone()], q_weight, p.epsilon, cos, sin);
        sc.k[dst.clone()].copy_from_slice(&row[(h + hh) * dh..(h + hh + 1) * dh]);
        norm_rope(&mut sc.k[dst.clone()], k_weight, p.epsilon, cos, sin);
        sc.v[dst].copy_from_slice(&row[(2 * h + hh) * dh..(2 * h + hh + 1) * dh]);
    }
    attend(sc, s, dh, p.scale);
}

/// Query rows per block in [`attend`]: the logits buffer is `[min(S, QUERY_BLOCK), S]`, so a worker holds 4.5 MB of
/// logits at the 4396 tokens of text-to-image 1024 instead of 77 MB for the full `[S, S]`.
pub(crate) const QUERY_BLOCK: usize = 256;

/// Logits a [`Scratch`] needs for `s` tokens (one block of query rows).
pub(crate) fn logits_len(s: usize) -> usize {
    s.min(QUERY_BLOCK) * s
}

/// Scaled dot-product attention of one head on the gathered `[S, Dh]` buffers of `sc`:
/// `sc.o = softmax(scale * q k^T) v`, per block of [`QUERY_BLOCK`] query rows as two GEMMs around
/// [`softmax_in_place`] per row.
pub(crate) fn attend(sc: &mut Scratch, s: usize, dh: usize, scale: f32) {
    use ndarray::linalg::general_mat_mul;
    use ndarray::{ArrayView2, ArrayViewMut2};
    let k = ArrayView2::from_shape((s, dh), &sc.k[..s * dh]).expect("k shape");
    let v = ArrayView2::from_shape((s, dh), &sc.v[..s * dh]).expect("v shape");
    for start in (0..s).step_by(QUERY_BLOCK) {
        let rows = QUERY_BLOCK.min(s - start);
        let q = ArrayView2::from_shape((rows, dh), &sc.q[start * dh..(start + rows) * dh]).expect("q shape");
        let logits = &mut sc.logits[..rows * s];
        general_mat_mul(
            scale,
            &q,
            &k.t(),
            0.0,
            &mut ArrayViewMut2::from_shape((rows, s), &mut *logits).expect("logits shape"),
        );
        for row in logits.chunks_exact_mut(s) {
            softmax_in_place(row);
        }
        let p = ArrayView2::from_shape((rows, s), &*logits).expect("logits shape");
        let mut o = ArrayViewMut2::from_shape((rows, dh), &mut sc.o[start * dh..(start + rows) * dh])
            .expect("o shape");
        general_mat_mul(1.0, &p, &v, 0.0, &mut o);
    }
}

/// `row = softmax(row)`, stable (the row maximum is subtracted first). Uses AVX2 + FMA code when the CPU has them
/// (checked at run time), else the same code for the build's baseline.
pub fn softmax_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { softmax_avx2_fma(row) };
        return;
    }
    softmax_lanes(row);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2_fma(row: &mut [f32]) {
    softmax_lanes(row);
}

/// Lanes of the hand-split reductions: wide enough for one AVX register, so the compiler keeps them in vectors.
const LANES: usize = 8;

/// The softmax body: max and sum as 8 independent lanes so that they vectorise without reassociation.
#[inline(always)]
fn softmax_lanes(row: &mut [f32]) {
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            max[i] = if c[i] > max[i] { c[i] } else { max[i] };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .chain(&max)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    // A plain loop for exp (the loop vectoriser handles it; exp and sum in one 8-lane loop did not vectorise).
    for x in row.iter_mut() {
        *x = exp_poly(*x - max);
    }
    let mut sum = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            sum[i] += c[i];
        }
    }
    let total: f32 = chunks.remainder().iter().sum();
    let inv = 1.0 / (total + sum.iter().sum::<f32>());
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// `exp(x)` in f32 from branch-free arithmetic (Cephes' `expf` scheme: `x = n ln2 + r` with `|r| <= ln2/2`, a
/// degree-7 polynomial in `r`, `2^n` built in the exponent bits), so that loops over it vectorise. Relative error
/// below 3e-7 for `x` in [-87, 88]; inputs below -87 give 0 (more precisely: a value below `f32::MIN_POSITIVE`
/// flushed to 0), which is what a softmax over `x - max <= 0` needs; NaN gives NaN.
#[inline(always)]
pub fn exp_poly(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a part exact in f32 and the rest (Cody-Waite).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let below = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // n + 127 in the exponent field: t's bits are 0x4B40_0000 + n.
    let scale = f32::from_bits((t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127)) << 23);
    if below {
        0.0
    } else {
        y * scale
    }
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
        rotary_attention(&inp, &p, Threads::Own, &mut out).unwrap();
        let naive = rotary_attention_naive(&inp, &p);
        let err = out
            .iter()
            .zip(&naive)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err < 1e-5, "B{batch} S{seq} H{heads} Dh{dh}: max abs err {err}");
    }

    #[test]
    fn exp_poly_is_within_3e7_relative_of_exp() {
        let mut worst = 0f64;
        let n = 200_000;
        for i in 0..=n {
            let x = -87.0 + 175.0 * i as f64 / n as f64;
            let got = f64::from(exp_poly(x as f32));
            let want = (x as f32 as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        eprintln!("exp_poly: max relative error {worst:e}");
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp_poly(0.0), 1.0);
        assert_eq!(exp_poly(-100.0), 0.0);
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        assert!(exp_poly(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_matches_f64_for_every_length_and_lane_split() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for len in [1, 2, 7, 8, 9, 16, 31, 256, 1000] {
            let x = random(len, &mut rng).iter().map(|v| v * 20.0).collect::<Vec<_>>();
            // The dispatched path (AVX2 + FMA here when the CPU has them) and the baseline one.
            let (mut dispatched, mut baseline) = (x.clone(), x.clone());
            softmax_in_place(&mut dispatched);
            softmax_lanes(&mut baseline);
            let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let z: f64 = x.iter().map(|&v| (f64::from(v) - m).exp()).sum();
            for got in [&dispatched, &baseline] {
                for (g, &v) in got.iter().zip(&x) {
                    let want = (f64::from(v) - m).exp() / z;
                    assert!(
                        (f64::from(*g) - want).abs() <= 1e-6 * want + 1e-12,
                        "len {len}: {g} vs {want}"
                    );
                }
            }
        }
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
    fn matches_naive_over_several_query_blocks() {
        // 300 tokens = one full block of QUERY_BLOCK query rows and a partial one.
        const { assert!(300 > QUERY_BLOCK && 300 % QUERY_BLOCK != 0) };
        check(1, 300, 2, 8, 4);
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
        assert!(rotary_attention(&inp, &p, Threads::Own, &mut out).is_ok());
        let p3 = RotaryAttentionParams { num_heads: 3, ..p };
        assert!(rotary_attention(&inp, &p3, Threads::Own, &mut out)
            .unwrap_err()
            .0
            .contains("qkv has 48 elements"));
        let mut short = vec![0f32; 15];
        assert!(rotary_attention(&inp, &p, Threads::Own, &mut short).is_err());
    }
}

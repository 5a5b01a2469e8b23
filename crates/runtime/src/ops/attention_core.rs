//! What both attention kernels share: the `(batch, head)` work split ([`run_heads`], on the host's pool or scoped
//! threads), per-worker buffers ([`Scratch`]), the gather with QK-RMSNorm and RoPE ([`gather_and_attend`]) and the
//! two-GEMM softmax attention ([`attend`]) with a vectorised row softmax ([`softmax_in_place`], [`exp_poly`]).

use super::{AttentionParams, MatmulPrecision, OutPtr, Threads};

/// Below this many multiply-adds (`B*H*S*S*Dh`) the kernel stays on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 22;

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
        assert!(out.len() >= pairs * s * dh, "attention output too short");
        let done: Vec<std::sync::atomic::AtomicBool> = (0..pairs).map(|_| Default::default()).collect();
        let dst = OutPtr(out.as_mut_ptr());
        let task = |pair: usize| {
            POOL_SCRATCH.with_borrow_mut(|scratch| {
                scratch.reserve(s, dh);
                head(pair, scratch);
                // SAFETY: pair (b, hh) writes only its own Dh-wide column of every token row of `out` (disjoint
                // between pairs, inside `out`: asserted above), which outlives the parallel-for.
                unsafe { scatter_raw(&scratch.o, pair, h, s, dh, dst.get()) };
                done[pair].store(true, std::sync::atomic::Ordering::Release);
            })
        };
        pool.parallel_for(pairs, &task);
        for (pair, d) in done.iter().enumerate() {
            if !d.load(std::sync::atomic::Ordering::Acquire) {
                HOST_POOL_MISSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut scratch = Scratch::new(s, dh);
                head(pair, &mut scratch);
                scatter(&scratch.o, pair, h, s, dh, out);
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
    /// K transposed, `[Dh, S]` (the AVX-512 path of [`attend`]).
    kt: Vec<f32>,
    /// Pairs of bf16 (the AVX512-BF16 path of [`attend`]): Q, K, K transposed and V, then one block of
    /// probabilities; grown on first use.
    words: Vec<u32>,
}

impl Scratch {
    fn new(s: usize, dh: usize) -> Self {
        Scratch {
            q: vec![0.0; s * dh],
            k: vec![0.0; s * dh],
            v: vec![0.0; s * dh],
            o: vec![0.0; s * dh],
            logits: vec![0.0; logits_len(s)],
            kt: vec![0.0; s * dh],
            words: Vec::new(),
        }
    }

    /// Grows the buffers to hold `s` tokens of `dh` (kept when already large enough).
    fn reserve(&mut self, s: usize, dh: usize) {
        for buf in [&mut self.q, &mut self.k, &mut self.v, &mut self.o, &mut self.kt] {
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

/// [`scatter`] through a raw pointer, for pool tasks that write disjoint columns of one output at once.
///
/// # Safety
/// `out` points at the `[B, S, H*Dh]` output with room for `pair`'s rows; no one else writes `pair`'s column
/// during the call.
unsafe fn scatter_raw(o: &[f32], pair: usize, h: usize, s: usize, dh: usize, out: *mut f32) {
    let (b, hh) = (pair / h, pair % h);
    for tok in 0..s {
        let dst = (b * s + tok) * h * dh + hh * dh;
        std::ptr::copy_nonoverlapping(o.as_ptr().add(tok * dh), out.add(dst), dh);
    }
}

/// RMSNorm over `x` with `weight`, then the adjacent-pair rotation with one row of the tables (the sum of squares
/// in [`LANES`] independent lanes and zipped loops, so that it vectorises).
#[inline(always)]
pub(crate) fn norm_rope(x: &mut [f32], weight: &[f32], eps: f32, cos: &[f32], sin: &[f32]) {
    let mut lanes = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            lanes[i] += c[i] * c[i];
        }
    }
    let ms =
        (chunks.remainder().iter().map(|v| v * v).sum::<f32>() + lanes.iter().sum::<f32>()) / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (v, w) in x.iter_mut().zip(weight) {
        *v = *v * inv * w;
    }
    for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
        let (a, b) = (pair[0], pair[1]);
        pair[0] = a * c - b * s;
        pair[1] = a * s + b * c;
    }
}

multiversion! {
    /// Head `hh` of a sequence of `s` tokens: gathers q, k, v from each token's `[3*H*Dh]` qkv row (`row_of(tok)`
    /// gives the row and the token's q and k RMSNorm weights) into `[S, Dh]` buffers with QK-RMSNorm and RoPE (rows
    /// of the `[S, Dh/2]` `tables` (cos, sin)), then [`attend`]s.
    pub(crate) fn gather_and_attend<'a>(
        sc: &mut Scratch,
        p: &AttentionParams,
        dh: usize,
        hh: usize,
        s: usize,
        tables: (&[f32], &[f32]),
        row_of: impl Fn(usize) -> (&'a [f32], &'a [f32], &'a [f32]),
    ) => gather_body
}

#[inline(always)]
fn gather_body<'a>(
    sc: &mut Scratch,
    p: &AttentionParams,
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
    attend(sc, s, dh, p.scale, p.matmul);
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
/// [`softmax_in_place`] per row. With [`MatmulPrecision::Bf16`], q, k, v and the probabilities are rounded to bf16
/// first: AVX512-BF16 dot products where the CPU has them (and S, Dh are multiples of 32), else the f32 GEMMs on
/// the rounded values.
pub(crate) fn attend(sc: &mut Scratch, s: usize, dh: usize, scale: f32, matmul: MatmulPrecision) {
    let round_probs = matmul == MatmulPrecision::Bf16;
    if round_probs {
        #[cfg(target_arch = "x86_64")]
        if bf16_kernel_applies(s, dh) {
            // SAFETY: the CPU has AVX-512F and AVX512-BF16 (checked by `bf16_kernel_applies`).
            unsafe { avx512_bf16::attend(sc, s, dh, scale) };
            return;
        }
        for buf in [&mut sc.q, &mut sc.k, &mut sc.v] {
            round_to_bf16(&mut buf[..s * dh]);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if s.is_multiple_of(16) && dh.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        unsafe { avx512::attend(sc, s, dh, scale, round_probs) };
        return;
    }
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
            if round_probs {
                round_to_bf16(row);
            }
        }
        let p = ArrayView2::from_shape((rows, s), &*logits).expect("logits shape");
        let mut o = ArrayViewMut2::from_shape((rows, dh), &mut sc.o[start * dh..(start + rows) * dh])
            .expect("o shape");
        general_mat_mul(1.0, &p, &v, 0.0, &mut o);
    }
}

/// Whether [`attend`] takes its AVX512-BF16 kernel for `s` tokens of `dh` (the CPU has AVX-512F and AVX512-BF16,
/// and both sizes are multiples of 32: pairs of bf16 in 16-lane tiles).
#[cfg(target_arch = "x86_64")]
pub(crate) fn bf16_kernel_applies(s: usize, dh: usize) -> bool {
    s.is_multiple_of(32)
        && dh.is_multiple_of(32)
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// `x` rounded to bf16 (to nearest, ties to even) and back to f32; NaN stays NaN.
pub(crate) fn round_to_bf16(x: &mut [f32]) {
    for v in x.iter_mut() {
        let b = v.to_bits();
        if !v.is_nan() {
            *v = f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000);
        }
    }
}

/// [`attend`] with bf16 operands: q and k rows as pairs of bf16 (`[S, Dh/2]` words, k transposed to `[Dh/2, S]`),
/// v as pairs of rows (`[S/2, Dh]` words: word `(j, d)` holds `v[2j][d]` and `v[2j+1][d]`), each block of
/// probabilities as pairs along its row; both products as `vdpbf16ps` (two bf16 products and an f32 sum per lane,
/// twice the multiply-adds of an f32 FMA), in the 6 x 64 blocks of the f32 kernel.
#[cfg(target_arch = "x86_64")]
mod avx512_bf16 {
    use super::{Scratch, QUERY_BLOCK};
    use std::arch::x86_64::*;

    /// `sc.o = softmax(scale q k^T) v` on bf16 operands, for `S` and `Dh` multiples of 32.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) fn attend(sc: &mut Scratch, s: usize, dh: usize, scale: f32) {
        assert!(s.is_multiple_of(32) && dh.is_multiple_of(32) && sc.logits.len() >= s.min(QUERY_BLOCK) * s);
        let half = dh / 2;
        let need = 4 * s * half + s.min(QUERY_BLOCK) * s / 2;
        if sc.words.len() < need {
            sc.words.resize(need, 0);
        }
        let (qb, rest) = sc.words.split_at_mut(s * half);
        let (kb, rest) = rest.split_at_mut(s * half);
        let (ktb, rest) = rest.split_at_mut(s * half);
        let (vb, pb) = rest.split_at_mut(s * half);
        to_pairs(&sc.q[..s * dh], 1.0, qb);
        to_pairs(&sc.k[..s * dh], 1.0, kb);
        for j0 in (0..s).step_by(16) {
            for w0 in (0..half).step_by(16) {
                // SAFETY: rows j0..j0+16 <= s of the [S, Dh/2] kb and rows w0..w0+16 <= Dh/2 of the [Dh/2, S] ktb,
                // both inside their slices (sizes above).
                unsafe {
                    super::avx512::transpose_16x16(
                        kb.as_ptr().add(j0 * half + w0).cast(),
                        half,
                        ktb.as_mut_ptr().add(w0 * s + j0).cast(),
                        s,
                    )
                };
            }
        }
        for j in 0..s / 2 {
            for d0 in (0..dh).step_by(16) {
                // SAFETY: rows 2j, 2j+1 < s of the [S, Dh] v and word row j < S/2 of vb, columns d0..d0+16 <= dh.
                unsafe {
                    let lo = _mm512_cvtneps_pbh(_mm512_loadu_ps(sc.v.as_ptr().add(2 * j * dh + d0)));
                    let hi = _mm512_cvtneps_pbh(_mm512_loadu_ps(sc.v.as_ptr().add((2 * j + 1) * dh + d0)));
                    let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(lo));
                    let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(hi));
                    let w = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                    _mm512_storeu_si512(vb.as_mut_ptr().add(j * dh + d0).cast(), w);
                }
            }
        }
        for start in (0..s).step_by(QUERY_BLOCK) {
            let rows = QUERY_BLOCK.min(s - start);
            let logits = &mut sc.logits[..rows * s];
            gemm(
                &qb[start * half..(start + rows) * half],
                ktb,
                logits,
                rows,
                half,
                s,
                scale,
            );
            for (row, pairs) in logits.chunks_exact_mut(s).zip(pb.chunks_exact_mut(s / 2)) {
                // The softmax's normalisation applied on the way to bf16.
                let sum = super::avx512::exp_minus_max(row);
                to_pairs(row, 1.0 / sum, pairs);
            }
            let o = &mut sc.o[start * dh..(start + rows) * dh];
            gemm(&pb[..rows * s / 2], vb, o, rows, s / 2, dh, 1.0);
        }
    }

    /// `scale * x` (a multiple of 32 floats) as bf16, two per word in order (the first in the low half).
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn to_pairs(x: &[f32], scale: f32, words: &mut [u32]) {
        assert!(x.len().is_multiple_of(32) && words.len() * 2 >= x.len());
        let scale = _mm512_set1_ps(scale);
        for (i, c) in x.chunks_exact(32).enumerate() {
            // SAFETY: 32 floats at c, 16 words at words[16 i..] (asserted above).
            unsafe {
                let lo = _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), scale);
                let hi = _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr().add(16)), scale);
                let b = _mm512_cvtne2ps_pbh(hi, lo);
                _mm512_storeu_si512(
                    words.as_mut_ptr().add(16 * i).cast(),
                    std::mem::transmute::<__m512bh, __m512i>(b),
                );
            }
        }
    }

    /// `c [m, n] = alpha * a [m, k] b [k, n]` where `a` and `b` hold pairs of bf16 along k (`kw = k/2` words per
    /// row of `a`, `kw` rows of `b`): the block layout of the f32 kernel's `gemm`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    fn gemm(a: &[u32], b: &[u32], c: &mut [f32], m: usize, kw: usize, n: usize, alpha: f32) {
        assert!(n.is_multiple_of(16) && a.len() >= m * kw && b.len() >= kw * n && c.len() >= m * n);
        let mut r = 0;
        while r < m {
            let rows = match m - r {
                6.. => 6,
                4..=5 => 4,
                _ => 1,
            };
            let mut col = 0;
            while col < n {
                let width = if n - col >= 64 { 64 } else { 16 };
                // SAFETY: rows r..r+rows <= m, columns col..col+width <= n, and the slices hold m*kw, kw*n and m*n
                // elements (asserted above).
                unsafe {
                    match (rows, width) {
                        (6, 64) => block::<6, 4>(a, b, c, r, col, kw, n, alpha),
                        (6, _) => block::<6, 1>(a, b, c, r, col, kw, n, alpha),
                        (4, 64) => block::<4, 4>(a, b, c, r, col, kw, n, alpha),
                        (4, _) => block::<4, 1>(a, b, c, r, col, kw, n, alpha),
                        (_, 64) => block::<1, 4>(a, b, c, r, col, kw, n, alpha),
                        _ => block::<1, 1>(a, b, c, r, col, kw, n, alpha),
                    }
                }
                col += width;
            }
            r += rows;
        }
    }

    /// One `R x 16*V` block of [`gemm`] at row `r`, column `col`.
    ///
    /// # Safety
    /// The block and its operands lie inside the slices (see [`gemm`]).
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const V: usize>(
        a: &[u32],
        b: &[u32],
        c: &mut [f32],
        r: usize,
        col: usize,
        kw: usize,
        n: usize,
        alpha: f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for kk in 0..kw {
            let mut bv = [std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    bp.add(kk * n + col + 16 * v).cast(),
                ));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                    *ap.add((r + i) * kw + kk) as i32,
                ));
                for (x, bx) in row.iter_mut().zip(&bv) {
                    *x = _mm512_dpbf16_ps(*x, av, *bx);
                }
            }
        }
        let alpha = _mm512_set1_ps(alpha);
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(
                    c.as_mut_ptr().add((r + i) * n + col + 16 * v),
                    _mm512_mul_ps(*x, alpha),
                );
            }
        }
    }
}

/// [`attend`] with AVX-512 register-blocked GEMMs (matrixmultiply, behind ndarray, has no AVX-512 kernels; ONNX
/// Runtime's MLAS has, so without this the fused op lost to ORT's own decomposed attention on AVX-512 machines).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{logits_len, Scratch, QUERY_BLOCK};
    use std::arch::x86_64::*;

    /// `sc.o = softmax(scale q k^T) v` for `S` and `Dh` multiples of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) fn attend(sc: &mut Scratch, s: usize, dh: usize, scale: f32, round_probs: bool) {
        assert!(
            s.is_multiple_of(16)
                && dh.is_multiple_of(16)
                && sc.kt.len() >= s * dh
                && sc.logits.len() >= logits_len(s)
        );
        for j0 in (0..s).step_by(16) {
            for d0 in (0..dh).step_by(16) {
                // SAFETY: rows j0..j0+16 <= s of the [S, Dh] k and rows d0..d0+16 <= dh of the [Dh, S] kt, both
                // inside their buffers (asserted above).
                unsafe {
                    transpose_16x16(
                        sc.k.as_ptr().add(j0 * dh + d0),
                        dh,
                        sc.kt.as_mut_ptr().add(d0 * s + j0),
                        s,
                    )
                };
            }
        }
        for start in (0..s).step_by(QUERY_BLOCK) {
            let rows = QUERY_BLOCK.min(s - start);
            let logits = &mut sc.logits[..rows * s];
            gemm(
                &sc.q[start * dh..(start + rows) * dh],
                &sc.kt[..dh * s],
                logits,
                rows,
                dh,
                s,
                scale,
            );
            for row in logits.chunks_exact_mut(s) {
                softmax_16(row);
                if round_probs {
                    super::round_to_bf16(row);
                }
            }
            let o = &mut sc.o[start * dh..(start + rows) * dh];
            gemm(&sc.logits[..rows * s], &sc.v[..s * dh], o, rows, s, dh, 1.0);
        }
    }

    /// `row = softmax(row)` for a multiple of 16 floats, the maximum subtracted first, in three passes: the maximum,
    /// exp and sum ([`exp_minus_max`]), the normalisation (the portable [`super::softmax_in_place`] takes four).
    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax_16(row: &mut [f32]) {
        let inv = _mm512_set1_ps(1.0 / exp_minus_max(row));
        for c in row.chunks_exact_mut(16) {
            // SAFETY: 16 floats at c.
            unsafe { _mm512_storeu_ps(c.as_mut_ptr(), _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), inv)) };
        }
    }

    /// `row = exp(row - max(row))` for a multiple of 16 floats, in two passes; returns the sum of the exps (the
    /// softmax's denominator, shared by [`softmax_16`] and the bf16 kernel).
    #[target_feature(enable = "avx512f")]
    pub(super) fn exp_minus_max(row: &mut [f32]) -> f32 {
        assert!(row.len().is_multiple_of(16));
        let n = row.len();
        let p = row.as_mut_ptr();
        // SAFETY: every access is 16 floats at i + 16 <= n (asserted above).
        unsafe {
            let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
            for i in (0..n).step_by(16) {
                max = _mm512_max_ps(max, _mm512_loadu_ps(p.add(i)));
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
            let mut sum = _mm512_setzero_ps();
            for i in (0..n).step_by(16) {
                let e = crate::ops::simd::exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(p.add(i)), max));
                _mm512_storeu_ps(p.add(i), e);
                sum = _mm512_add_ps(sum, e);
            }
            _mm512_reduce_add_ps(sum)
        }
    }

    /// Writes the transpose of the 16 x 16 block at `src` (rows `src_stride` floats apart) to `dst` (rows
    /// `dst_stride` apart), in registers ([`crate::ops::simd::transpose16`]). This replaced a scalar strided loop
    /// that took about a quarter of the attention op's time on B@256.
    ///
    /// # Safety
    /// `src` and `dst` point at 16 rows of 16 readable / writable floats at their strides.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_16x16(
        src: *const f32,
        src_stride: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        let mut r = [_mm512_setzero_ps(); 16];
        for (i, x) in r.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(src.add(i * src_stride));
        }
        for (i, x) in crate::ops::simd::transpose16(r).iter().enumerate() {
            _mm512_storeu_ps(dst.add(i * dst_stride), *x);
        }
    }

    /// `c [m, n] = alpha * a [m, k] b [k, n]`, all row-major and dense, `n` a multiple of 16: blocks of 6 rows x 64
    /// columns (24 accumulators: 4 loads and 6 broadcasts per 24 FMAs, and each pass over `b` serves 6 rows; 4- and
    /// 1-row, 16-column blocks at the edges). Every element is the same sequence of FMAs whatever its block.
    #[target_feature(enable = "avx512f")]
    fn gemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize, alpha: f32) {
        assert!(n.is_multiple_of(16) && a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
        let mut r = 0;
        while r < m {
            let rows = match m - r {
                6.. => 6,
                4..=5 => 4,
                _ => 1,
            };
            let mut col = 0;
            while col < n {
                let width = if n - col >= 64 { 64 } else { 16 };
                // SAFETY: rows r..r+rows <= m, columns col..col+width <= n, and the slices hold m*k, k*n and m*n
                // floats (asserted above).
                unsafe {
                    match (rows, width) {
                        (6, 64) => block::<6, 4>(a, b, c, r, col, k, n, alpha),
                        (6, _) => block::<6, 1>(a, b, c, r, col, k, n, alpha),
                        (4, 64) => block::<4, 4>(a, b, c, r, col, k, n, alpha),
                        (4, _) => block::<4, 1>(a, b, c, r, col, k, n, alpha),
                        (_, 64) => block::<1, 4>(a, b, c, r, col, k, n, alpha),
                        _ => block::<1, 1>(a, b, c, r, col, k, n, alpha),
                    }
                }
                col += width;
            }
            r += rows;
        }
    }

    /// One `R x 16*V` block of [`gemm`] at row `r`, column `col`.
    ///
    /// # Safety
    /// The block and its operands lie inside the slices (see [`gemm`]).
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block<const R: usize, const V: usize>(
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        r: usize,
        col: usize,
        k: usize,
        n: usize,
        alpha: f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        let (ap, bp) = (a.as_ptr(), b.as_ptr());
        for kk in 0..k {
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(bp.add(kk * n + col + 16 * v));
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add((r + i) * k + kk));
                for (x, bx) in row.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(av, *bx, *x);
                }
            }
        }
        let alpha = _mm512_set1_ps(alpha);
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                _mm512_storeu_ps(
                    c.as_mut_ptr().add((r + i) * n + col + 16 * v),
                    _mm512_mul_ps(*x, alpha),
                );
            }
        }
    }
}

multiversion! {
    /// `row = softmax(row)`, stable (the row maximum is subtracted first), compiled for AVX-512 or AVX2 + FMA when
    /// the CPU has them (checked at run time).
    pub fn softmax_in_place(row: &mut [f32]) => softmax_lanes
}

/// Lanes of the hand-split reductions: wide enough for one AVX register, so the compiler keeps them in vectors.
const LANES: usize = 8;

/// The softmax body: max and sum as 8 independent lanes so that they vectorise without reassociation.
#[inline(always)]
pub(crate) fn softmax_lanes(row: &mut [f32]) {
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    #[test]
    fn avx512_transpose_matches_the_scalar_one() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: no AVX-512F on this CPU");
            return;
        }
        // A [48, 32] matrix (distinct values) into its [32, 48] transpose, tile by tile, at non-square strides.
        let (rows, cols) = (48, 32);
        let src: Vec<f32> = (0..rows * cols).map(|i| i as f32 * 0.5 - 7.0).collect();
        let mut dst = vec![f32::NAN; rows * cols];
        for r0 in (0..rows).step_by(16) {
            for c0 in (0..cols).step_by(16) {
                // SAFETY: AVX-512F checked; every tile lies inside both buffers.
                unsafe {
                    super::avx512::transpose_16x16(
                        src.as_ptr().add(r0 * cols + c0),
                        cols,
                        dst.as_mut_ptr().add(c0 * rows + r0),
                        rows,
                    )
                };
            }
        }
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(dst[c * rows + r], src[r * cols + c], "element ({r}, {c})");
            }
        }
    }
}

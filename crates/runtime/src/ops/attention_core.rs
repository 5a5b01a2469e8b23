//! What both attention kernels share: the `(batch, head)` work split ([`run_heads`], on the host's pool or scoped
//! threads), per-worker buffers ([`Scratch`]), the gather with QK-RMSNorm and RoPE ([`gather_and_attend`]) and the
//! two-GEMM softmax attention ([`attend`]) with a vectorised row softmax ([`softmax_in_place`], [`exp_poly`]).

use super::{AttentionParams, Threads};

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
    /// K transposed, `[Dh, S]` (the AVX-512 path of [`attend`]).
    kt: Vec<f32>,
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
    #[cfg(target_arch = "x86_64")]
    if s.is_multiple_of(16) && dh.is_multiple_of(16) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        unsafe { avx512::attend(sc, s, dh, scale) };
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
        }
        let p = ArrayView2::from_shape((rows, s), &*logits).expect("logits shape");
        let mut o = ArrayViewMut2::from_shape((rows, dh), &mut sc.o[start * dh..(start + rows) * dh])
            .expect("o shape");
        general_mat_mul(1.0, &p, &v, 0.0, &mut o);
    }
}

/// [`attend`] with AVX-512 register-blocked GEMMs (matrixmultiply, behind ndarray, has no AVX-512 kernels; ONNX
/// Runtime's MLAS has, so without this the fused op lost to ORT's own decomposed attention on AVX-512 machines).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{logits_len, softmax_in_place, Scratch, QUERY_BLOCK};
    use std::arch::x86_64::*;

    /// `sc.o = softmax(scale q k^T) v` for `S` and `Dh` multiples of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) fn attend(sc: &mut Scratch, s: usize, dh: usize, scale: f32) {
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
                softmax_in_place(row);
            }
            let o = &mut sc.o[start * dh..(start + rows) * dh];
            gemm(&sc.logits[..rows * s], &sc.v[..s * dh], o, rows, s, dh, 1.0);
        }
    }

    /// Writes the transpose of the 16 x 16 block at `src` (rows `src_stride` floats apart) to `dst` (rows
    /// `dst_stride` apart), in registers: unpack 32-bit, unpack 64-bit, then two 128-bit lane shuffles. This
    /// replaced a scalar strided loop that took about a quarter of the attention op's time on B@256.
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
        // Pairs of rows interleaved per 128-bit lane: t[2i] = (r[2i][0], r[2i+1][0], r[2i][1], r[2i+1][1]) per lane.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        // Four rows per lane: u[4g + c] holds rows 4g..4g+4 of columns c, c+4, c+8, c+12 (one per lane).
        let mut u = [_mm512_setzero_ps(); 16];
        for g in 0..4 {
            let b = 4 * g;
            let pd = |x: __m512| _mm512_castps_pd(x);
            u[b] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[b]), pd(t[b + 2])));
            u[b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[b]), pd(t[b + 2])));
            u[b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[b + 1]), pd(t[b + 3])));
            u[b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[b + 1]), pd(t[b + 3])));
        }
        // Eight rows: v[8h + 2c] holds rows 8h..8h+8 of columns c and c+8, v[8h + 2c + 1] of c+4 and c+12.
        let mut v = [_mm512_setzero_ps(); 16];
        for h in 0..2 {
            for c in 0..4 {
                let (a, b) = (u[8 * h + c], u[8 * h + 4 + c]);
                v[8 * h + 2 * c] = _mm512_shuffle_f32x4::<0x88>(a, b);
                v[8 * h + 2 * c + 1] = _mm512_shuffle_f32x4::<0xdd>(a, b);
            }
        }
        // All sixteen rows of one column each.
        for c in 0..4 {
            for half in 0..2 {
                let (a, b) = (v[2 * c + half], v[8 + 2 * c + half]);
                let col = c + 4 * half;
                _mm512_storeu_ps(dst.add(col * dst_stride), _mm512_shuffle_f32x4::<0x88>(a, b));
                _mm512_storeu_ps(
                    dst.add((col + 8) * dst_stride),
                    _mm512_shuffle_f32x4::<0xdd>(a, b),
                );
            }
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

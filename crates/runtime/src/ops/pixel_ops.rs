//! `pixeldit.PixelModulate` and `pixeldit.PixelGatedMlp` (semantics: [`pixeldit_spec::custom_op`]): the f32 kernels
//! of the fused pixel level, shared by the ONNX Runtime and tract adapters.
//!
//! Both walk the `N*P` pixels once: the six modulation chunks are read in place from the adaLN output (plus its
//! bias), and `PixelGatedMlp` keeps the MLP's hidden vector of each pixel in registers. Rows of patches are split
//! among the host's pool or scoped threads; the per-pixel code is compiled for AVX-512 and AVX2 + FMA and picked at
//! run time (the shapes of every preset, `C = 16` and a hidden width of 64, get loops of fixed length).

use super::attention_core::exp_poly;
use super::{KernelShapeError, OutPtr, Threads};
use pixeldit_spec::custom_op::PIXEL_MODULATION_CHUNKS as CHUNKS;
use std::ops::Range;

/// Below this many output elements a kernel stays on the calling thread.
const PARALLEL_THRESHOLD: usize = 1 << 16;
/// Output elements per task handed to a pool.
const TASK_ELEMENTS: usize = 1 << 14;

/// The operands both ops share, as flat row-major slices.
#[derive(Debug, Clone, Copy)]
pub struct PixelModulation<'a> {
    /// Patch rows N.
    pub rows: usize,
    /// Pixels per patch P.
    pub pixels: usize,
    /// Channels per pixel C.
    pub channels: usize,
    /// The adaLN Linear's output without its bias, `[N, P*6*C]`.
    pub modulation: &'a [f32],
    /// The adaLN Linear's bias, `[P*6*C]`.
    pub bias: &'a [f32],
    /// The RMSNorm weight `[C]`.
    pub norm_weight: &'a [f32],
    /// RMSNorm epsilon.
    pub epsilon: f32,
}

impl PixelModulation<'_> {
    fn validate(&self, op: &str, x_len: usize) -> Result<(), KernelShapeError> {
        let (n, p, c) = (self.rows, self.pixels, self.channels);
        let err = |m: String| Err(KernelShapeError(format!("{op}: {m}")));
        if c == 0 || p == 0 {
            return err(format!("x must be [N, P, C] with P, C > 0, got [{n}, {p}, {c}]"));
        }
        if x_len != n * p * c {
            return err(format!("x has {x_len} elements, expected N*P*C = {n}*{p}*{c}"));
        }
        if self.modulation.len() != n * p * CHUNKS * c {
            return err(format!(
                "mod has {} elements, expected N*P*{CHUNKS}*C = {n}*{p}*{CHUNKS}*{c}",
                self.modulation.len()
            ));
        }
        if self.bias.len() != p * CHUNKS * c {
            return err(format!(
                "bias has {} elements, expected P*{CHUNKS}*C = {p}*{CHUNKS}*{c}",
                self.bias.len()
            ));
        }
        if self.norm_weight.len() != c {
            return err(format!(
                "norm_weight has {} elements, expected C = {c}",
                self.norm_weight.len()
            ));
        }
        Ok(())
    }

    /// Chunk `k` of pixel `i` of row `n` (modulation plus bias) into `dst` `[C]`.
    #[inline(always)]
    fn chunk(&self, n: usize, i: usize, k: usize, c: usize, dst: &mut [f32]) {
        let w = CHUNKS * c;
        let m = &self.modulation[(n * self.pixels + i) * w + k * c..][..c];
        let b = &self.bias[i * w + k * c..][..c];
        for ((d, m), b) in dst.iter_mut().zip(m).zip(b) {
            *d = m + b;
        }
    }
}

/// `pixeldit.PixelModulate`: `out [N, P, C]` from `x [N, P, C]`.
pub fn pixel_modulate(
    m: &PixelModulation<'_>,
    x: &[f32],
    threads: Threads<'_>,
    out: &mut [f32],
) -> Result<(), KernelShapeError> {
    m.validate("PixelModulate", x.len())?;
    check_out(out.len(), x.len())?;
    let c = m.channels;
    for_row_blocks(m.rows, m.pixels * c, threads, out, &|rows, out| {
        modulate_rows(m, x, rows, c, out)
    });
    Ok(())
}

/// The MLP operands of `pixeldit.PixelGatedMlp`.
#[derive(Debug, Clone, Copy)]
pub struct PixelMlp<'a> {
    /// `fc1.weight [H, C]`.
    pub fc1_weight: &'a [f32],
    /// `fc1.bias [H]`.
    pub fc1_bias: &'a [f32],
    /// `fc2.weight [C, H]`.
    pub fc2_weight: &'a [f32],
    /// `fc2.bias [C]`.
    pub fc2_bias: &'a [f32],
}

/// `pixeldit.PixelGatedMlp`: `out [N, P, C]` from the block input `x [N, P, C]` and the attention branch's output
/// `branch` (`N*P*C` elements).
pub fn pixel_gated_mlp(
    m: &PixelModulation<'_>,
    x: &[f32],
    branch: &[f32],
    mlp: &PixelMlp<'_>,
    threads: Threads<'_>,
    out: &mut [f32],
) -> Result<(), KernelShapeError> {
    m.validate("PixelGatedMlp", x.len())?;
    check_out(out.len(), x.len())?;
    let c = m.channels;
    let hidden = mlp.fc1_bias.len();
    let err = |s: String| Err(KernelShapeError(format!("PixelGatedMlp: {s}")));
    if branch.len() != x.len() {
        return err(format!("branch has {} elements, x {}", branch.len(), x.len()));
    }
    if hidden == 0 || mlp.fc1_weight.len() != hidden * c {
        return err(format!(
            "fc1_weight has {} elements, expected [H, C] = [{hidden}, {c}] (H from fc1_bias)",
            mlp.fc1_weight.len()
        ));
    }
    if mlp.fc2_weight.len() != c * hidden || mlp.fc2_bias.len() != c {
        return err(format!(
            "fc2_weight / fc2_bias have {} / {} elements, expected [C, H] = [{c}, {hidden}] / [C] = [{c}]",
            mlp.fc2_weight.len(),
            mlp.fc2_bias.len()
        ));
    }
    let (fc1_t, fc2_t) = input_major(mlp, c, hidden);
    let w = MlpWeights {
        fc1_t: &fc1_t,
        fc1_bias: mlp.fc1_bias,
        fc2_t: &fc2_t,
        fc2_bias: mlp.fc2_bias,
    };
    for_row_blocks(m.rows, m.pixels * c, threads, out, &|rows, out| {
        gated_mlp_rows(m, x, branch, &w, rows, (c, hidden), out)
    });
    Ok(())
}

fn check_out(out: usize, x: usize) -> Result<(), KernelShapeError> {
    if out == x {
        Ok(())
    } else {
        Err(KernelShapeError(format!("output has {out} elements, x {x}")))
    }
}

/// Input-major copies of the MLP weights (`fc1` as `[C, H]`, `fc2` as `[H, C]`), so that the per-pixel loops run
/// over contiguous output features.
fn input_major(mlp: &PixelMlp<'_>, c: usize, hidden: usize) -> (Vec<f32>, Vec<f32>) {
    let mut fc1_t = vec![0f32; c * hidden];
    let mut fc2_t = vec![0f32; hidden * c];
    for j in 0..hidden {
        for ch in 0..c {
            fc1_t[ch * hidden + j] = mlp.fc1_weight[j * c + ch];
            fc2_t[j * c + ch] = mlp.fc2_weight[ch * hidden + j];
        }
    }
    (fc1_t, fc2_t)
}

/// The MLP weights, input-major.
struct MlpWeights<'a> {
    /// `[C, H]`.
    fc1_t: &'a [f32],
    fc1_bias: &'a [f32],
    /// `[H, C]`.
    fc2_t: &'a [f32],
    fc2_bias: &'a [f32],
}

multiversion! {
    /// `xn = RMSNorm(x) * (1 + scale_msa) + shift_msa` for `rows`, into `out` (those rows only).
    fn modulate_rows(m: &PixelModulation<'_>, x: &[f32], rows: Range<usize>, c: usize, out: &mut [f32])
        => modulate_rows_fixed
}

/// [`modulate_rows_body`] with `C = 16` as a constant when it is 16 (the loops then have a fixed length).
#[inline(always)]
fn modulate_rows_fixed(m: &PixelModulation<'_>, x: &[f32], rows: Range<usize>, c: usize, out: &mut [f32]) {
    if c == 16 {
        modulate_rows_body(m, x, rows, 16, out)
    } else {
        modulate_rows_body(m, x, rows, c, out)
    }
}

#[inline(always)]
fn modulate_rows_body(m: &PixelModulation<'_>, x: &[f32], rows: Range<usize>, c: usize, out: &mut [f32]) {
    let p = m.pixels;
    let first = rows.start;
    let mut shift = vec![0f32; c];
    let mut scale = vec![0f32; c];
    for n in rows {
        for i in 0..p {
            let at = (n * p + i) * c;
            let xi = &x[at..at + c];
            let o = &mut out[at - first * p * c..][..c];
            m.chunk(n, i, 0, c, &mut shift);
            m.chunk(n, i, 1, c, &mut scale);
            let inv = inv_rms(xi, m.epsilon);
            for ((((d, x), w), sc), sh) in o.iter_mut().zip(xi).zip(m.norm_weight).zip(&scale).zip(&shift) {
                *d = x * inv * w * (1.0 + sc) + sh;
            }
        }
    }
}

/// The gated attention residual and the gated MLP branch for `rows`, into `out` (those rows only): the AVX-512
/// kernel for the presets' shape where the CPU has AVX-512, else the portable loops, compiled for AVX2 + FMA where
/// the CPU has them.
fn gated_mlp_rows(
    m: &PixelModulation<'_>,
    x: &[f32],
    branch: &[f32],
    w: &MlpWeights<'_>,
    rows: Range<usize>,
    dims: (usize, usize),
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if dims == (16, 64) && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { avx512::gated_mlp_rows_16x64(m, x, branch, w, rows, out) };
    }
    gated_mlp_rows_portable(m, x, branch, w, rows, dims, out)
}

multiversion! {
    /// [`gated_mlp_rows_body`] compiled for the CPU's instruction set.
    fn gated_mlp_rows_portable(
        m: &PixelModulation<'_>,
        x: &[f32],
        branch: &[f32],
        w: &MlpWeights<'_>,
        rows: Range<usize>,
        dims: (usize, usize),
        out: &mut [f32],
    ) => gated_mlp_rows_fixed
}

/// [`gated_mlp_rows_body`] with the presets' dims (16, 64) as constants when they match.
#[inline(always)]
fn gated_mlp_rows_fixed(
    m: &PixelModulation<'_>,
    x: &[f32],
    branch: &[f32],
    w: &MlpWeights<'_>,
    rows: Range<usize>,
    dims: (usize, usize),
    out: &mut [f32],
) {
    if dims == (16, 64) {
        gated_mlp_rows_body(m, x, branch, w, rows, (16, 64), out)
    } else {
        gated_mlp_rows_body(m, x, branch, w, rows, dims, out)
    }
}

/// The presets' shape (C = 16, hidden 64) in AVX-512 intrinsics: one register per pixel's channels, four for its
/// hidden vector.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MlpWeights, PixelModulation, CHUNKS};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// [`super::gated_mlp_rows_body`] for C = 16, hidden 64 (the caller has checked the sizes). Pixels go in pairs:
    /// one pixel is a long dependency chain (norm, fc1, GELU, fc2: ~270 cycles of latency for ~300 instructions), so
    /// two independent ones keep the FMA units busy.
    #[target_feature(enable = "avx512f")]
    pub(super) fn gated_mlp_rows_16x64(
        m: &PixelModulation<'_>,
        x: &[f32],
        branch: &[f32],
        w: &MlpWeights<'_>,
        rows: Range<usize>,
        out: &mut [f32],
    ) {
        let p = m.pixels;
        assert!(
            w.fc1_t.len() == C * H && w.fc2_t.len() == H * C && m.norm_weight.len() == C,
            "16x64 kernel called with other sizes"
        );
        assert!(x.len() == branch.len() && rows.end * p * C <= x.len() && out.len() >= rows.len() * p * C);
        let (first, last) = (rows.start * p, rows.end * p);
        let mut g = first;
        while g + 2 <= last {
            // SAFETY: pixels g, g+1 < last lie inside x, branch, mod and (from `first`) out (asserted above and in
            // `PixelModulation::validate`).
            unsafe { pixels::<2>(m, x, branch, w, [g, g + 1], first, out) };
            g += 2;
        }
        if g < last {
            // SAFETY: as above, for the last pixel.
            unsafe { pixels::<1>(m, x, branch, w, [g], first, out) };
        }
    }

    const C: usize = 16;
    const H: usize = 64;

    /// The gated residual and MLP of the flat pixels `at` (row * P + pixel), interleaved.
    ///
    /// # Safety
    /// Every pixel of `at` is below N*P of the operands, and at or after `first` (the first pixel of `out`).
    #[target_feature(enable = "avx512f")]
    #[inline]
    // Index loops: each walks several parallel register arrays (per pixel, per quarter of the hidden vector).
    #[allow(clippy::needless_range_loop)]
    unsafe fn pixels<const K: usize>(
        m: &PixelModulation<'_>,
        x: &[f32],
        branch: &[f32],
        w: &MlpWeights<'_>,
        at: [usize; K],
        first: usize,
        out: &mut [f32],
    ) {
        let load = |s: &[f32], i: usize| _mm512_loadu_ps(s.as_ptr().add(i));
        let chunk = |px: usize, k: usize| {
            let i = px % m.pixels;
            _mm512_add_ps(
                load(m.modulation, px * CHUNKS * C + k * C),
                load(m.bias, i * CHUNKS * C + k * C),
            )
        };
        let one = _mm512_set1_ps(1.0);
        let norm_w = load(m.norm_weight, 0);
        let mut x1 = [_mm512_setzero_ps(); K];
        let mut h = [[0f32; C]; K];
        for k in 0..K {
            x1[k] = _mm512_fmadd_ps(chunk(at[k], 2), load(branch, at[k] * C), load(x, at[k] * C));
            let ms = _mm512_reduce_add_ps(_mm512_mul_ps(x1[k], x1[k])) / C as f32;
            let inv = _mm512_set1_ps(1.0 / (ms + m.epsilon).sqrt());
            let xn = _mm512_mul_ps(_mm512_mul_ps(x1[k], inv), norm_w);
            let hv = _mm512_fmadd_ps(xn, _mm512_add_ps(one, chunk(at[k], 4)), chunk(at[k], 3));
            _mm512_storeu_ps(h[k].as_mut_ptr(), hv);
        }
        let mut acc = [[0, 16, 32, 48].map(|q| load(w.fc1_bias, q)); K];
        for ch in 0..C {
            let wv = [0, 16, 32, 48].map(|q| load(w.fc1_t, ch * H + q));
            for k in 0..K {
                let hb = _mm512_set1_ps(h[k][ch]);
                for q in 0..4 {
                    acc[k][q] = _mm512_fmadd_ps(hb, wv[q], acc[k][q]);
                }
            }
        }
        let mut hid = [[0f32; H]; K];
        for k in 0..K {
            for q in 0..4 {
                _mm512_storeu_ps(hid[k].as_mut_ptr().add(q * 16), gelu(acc[k][q]));
            }
        }
        // Two accumulators per pixel: one chain of 64 dependent FMAs would wait on their latency.
        let mut ys = [[load(w.fc2_bias, 0), _mm512_setzero_ps()]; K];
        for j in (0..H).step_by(2) {
            let wv = [load(w.fc2_t, j * C), load(w.fc2_t, (j + 1) * C)];
            for k in 0..K {
                for e in 0..2 {
                    ys[k][e] = _mm512_fmadd_ps(_mm512_set1_ps(hid[k][j + e]), wv[e], ys[k][e]);
                }
            }
        }
        for k in 0..K {
            let y = _mm512_add_ps(ys[k][0], ys[k][1]);
            let o = _mm512_fmadd_ps(chunk(at[k], 5), y, x1[k]);
            _mm512_storeu_ps(out.as_mut_ptr().add((at[k] - first) * C), o);
        }
    }

    /// [`super::gelu_erf`] on 16 lanes (the same formulas; `exp` as `2^n * p(r)` with `scalef`).
    #[target_feature(enable = "avx512f")]
    pub(super) fn gelu(x: __m512) -> __m512 {
        let set = _mm512_set1_ps;
        let z = _mm512_mul_ps(_mm512_abs_ps(x), set(std::f32::consts::FRAC_1_SQRT_2));
        // t = 1 / (1 + z/2) from the 14-bit reciprocal and one Newton step (a division would cost more than the
        // rest of the lane's work).
        let d = _mm512_fmadd_ps(set(0.5), z, set(1.0));
        let r = _mm512_rcp14_ps(d);
        let t = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, set(2.0)));
        let mut p = set(0.170_872_77);
        for c in [
            -0.822_152_23,
            1.488_515_9,
            -1.135_204,
            0.278_868_07,
            -0.186_288_06,
            0.096_784_18,
            0.374_091_96,
            1.000_023_7,
            -1.265_512_2,
        ] {
            p = _mm512_fmadd_ps(p, t, set(c));
        }
        let arg = _mm512_fnmadd_ps(z, z, p);
        let erfc = _mm512_mul_ps(t, crate::ops::simd::exp_nonpositive(arg));
        let half = _mm512_mul_ps(set(0.5), erfc);
        let positive = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_setzero_ps());
        let factor = _mm512_mask_blend_ps(positive, half, _mm512_sub_ps(set(1.0), half));
        _mm512_mul_ps(x, factor)
    }
}

#[inline(always)]
fn gated_mlp_rows_body(
    m: &PixelModulation<'_>,
    x: &[f32],
    branch: &[f32],
    w: &MlpWeights<'_>,
    rows: Range<usize>,
    (c, hidden): (usize, usize),
    out: &mut [f32],
) {
    let p = m.pixels;
    let first = rows.start;
    // [6][C] chunks of one pixel, x1, the modulated norm, the hidden vector and the MLP output.
    let mut chunks = vec![0f32; CHUNKS * c];
    let mut x1 = vec![0f32; c];
    let mut h = vec![0f32; c];
    let mut hid = vec![0f32; hidden];
    let mut y = vec![0f32; c];
    for n in rows {
        for i in 0..p {
            let at = (n * p + i) * c;
            for k in 2..CHUNKS {
                m.chunk(n, i, k, c, &mut chunks[k * c..(k + 1) * c]);
            }
            let (xi, bi) = (&x[at..at + c], &branch[at..at + c]);
            let (gate_msa, rest) = chunks[2 * c..].split_at(c);
            let (shift_mlp, rest) = rest.split_at(c);
            let (scale_mlp, gate_mlp) = rest.split_at(c);
            // Zipped iterators over slices of the (inlined, often constant) lengths: no bounds checks, so they
            // vectorise.
            for (((d, x), g), b) in x1.iter_mut().zip(xi).zip(gate_msa).zip(bi) {
                *d = x + g * b;
            }
            let inv = inv_rms(&x1, m.epsilon);
            for ((((d, x), w), sc), sh) in h
                .iter_mut()
                .zip(&x1)
                .zip(m.norm_weight)
                .zip(scale_mlp)
                .zip(shift_mlp)
            {
                *d = x * inv * w * (1.0 + sc) + sh;
            }
            hid.copy_from_slice(w.fc1_bias);
            for (hc, col) in h.iter().zip(w.fc1_t.chunks_exact(hidden)) {
                for (d, w) in hid.iter_mut().zip(col) {
                    *d += hc * w;
                }
            }
            for v in hid.iter_mut() {
                *v = gelu_erf(*v);
            }
            y.copy_from_slice(w.fc2_bias);
            for (hj, row) in hid.iter().zip(w.fc2_t.chunks_exact(c)) {
                for (d, w) in y.iter_mut().zip(row) {
                    *d += hj * w;
                }
            }
            let o = &mut out[at - first * p * c..][..c];
            for (((d, x), g), y) in o.iter_mut().zip(&x1).zip(gate_mlp).zip(&y) {
                *d = x + g * y;
            }
        }
    }
}

/// `1 / sqrt(mean(x^2) + eps)`.
#[inline(always)]
fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

/// The exact GELU `0.5 x (1 + erf(x / sqrt 2))` from branch-free arithmetic: `erfc(|z|)` by the Chebyshev fit of
/// Numerical Recipes (`erfcc`, fractional error below 1.2e-7 everywhere), so the negative tail keeps its relative
/// accuracy, with [`exp_poly`]; the loops over it vectorise.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77_f32;
    let p = p * t - 0.822_152_23;
    let p = p * t + 1.488_515_9;
    let p = p * t - 1.135_204;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_7;
    let p = p * t - 1.265_512_2;
    let erfc = t * exp_poly(p - z * z);
    // x >= 0: 0.5 x (2 - erfc); x < 0: 0.5 x erfc(|z|).
    let half = 0.5 * erfc;
    x * if x >= 0.0 { 1.0 - half } else { half }
}

/// Runs `work(rows, out_rows)` over blocks of `rows` (each `row_len` output elements): on the calling thread when
/// the output is small, else on the host's pool or on scoped threads, each block writing its own part of `out`.
pub(crate) fn for_row_blocks(
    rows: usize,
    row_len: usize,
    threads: Threads<'_>,
    out: &mut [f32],
    work: &(dyn Fn(Range<usize>, &mut [f32]) + Sync),
) {
    if rows * row_len < PARALLEL_THRESHOLD || rows < 2 {
        work(0..rows, out);
        return;
    }
    match threads {
        Threads::Host(pool) => {
            let per = (TASK_ELEMENTS / row_len.max(1)).max(1);
            let tasks = rows.div_ceil(per);
            let done: Vec<std::sync::atomic::AtomicBool> = (0..tasks).map(|_| Default::default()).collect();
            let ptr = OutPtr(out.as_mut_ptr());
            let task = |t: usize| {
                let r = t * per..((t + 1) * per).min(rows);
                // SAFETY: rows `r` of `out` belong to this task alone; `out` outlives the parallel-for.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(ptr.get().add(r.start * row_len), r.len() * row_len)
                };
                work(r, dst);
                done[t].store(true, std::sync::atomic::Ordering::Release);
            };
            pool.parallel_for(tasks, &task);
            // Blocks the pool did not run (see `ParallelFor`) are made here.
            for (t, d) in done.iter().enumerate() {
                if !d.load(std::sync::atomic::Ordering::Acquire) {
                    let r = t * per..((t + 1) * per).min(rows);
                    work(r.clone(), &mut out[r.start * row_len..r.end * row_len]);
                }
            }
        }
        Threads::Own => {
            let n = std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(rows);
            let per = rows.div_ceil(n);
            std::thread::scope(|scope| {
                for (t, dst) in out.chunks_mut(per * row_len).enumerate() {
                    let r = t * per..(t * per + dst.len() / row_len);
                    scope.spawn(move || work(r, dst));
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in f64 for the reference GELU: its Taylor series for |z| <= 2.5 (largest term ~e^6), else 1 - erfc from
    /// erfc's continued fraction (200 terms, evaluated backwards).
    fn erf_ref(z: f64) -> f64 {
        if z.abs() > 2.5 {
            let a = z.abs();
            let mut k = a;
            for n in (1..=200).rev() {
                k = a + (n as f64 / 2.0) / k;
            }
            let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / k;
            return z.signum() * (1.0 - erfc);
        }
        let (mut term, mut sum, mut k) = (z, z, 0.0);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) {
            k += 1.0;
            term *= -z * z / k;
            sum += term / (2.0 * k + 1.0);
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    }

    #[test]
    fn gelu_matches_the_erf_definition() {
        let mut worst = 0f64;
        // x in [-6, 6]: the negative tail down to gelu(-6) = -5.9e-9.
        for i in -6000..=6000 {
            let x = i as f64 / 1000.0;
            let want = 0.5 * x * (1.0 + erf_ref(x / std::f64::consts::SQRT_2));
            let got = gelu_erf(x as f32) as f64;
            worst = worst.max((got - want).abs() / want.abs().max(1e-6));
        }
        // The tail loses a little to the f32 rounding of z^2 inside the exp (|z|^2 ulp).
        assert!(worst < 5e-6, "worst relative error {worst}");
    }

    /// A deterministic pseudo-random fill.
    fn fill(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The unfused semantics in f64, straight from the op contract.
    fn reference(
        m: &PixelModulation<'_>,
        x: &[f32],
        branch: &[f32],
        mlp: &PixelMlp<'_>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (n, p, c) = (m.rows, m.pixels, m.channels);
        let hidden = mlp.fc1_bias.len();
        let chunk = |r: usize, i: usize, k: usize, ch: usize| {
            let w = CHUNKS * c;
            m.modulation[(r * p + i) * w + k * c + ch] as f64 + m.bias[i * w + k * c + ch] as f64
        };
        let norm = |v: &[f64]| {
            let ms = v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64;
            1.0 / (ms + m.epsilon as f64).sqrt()
        };
        let (mut xn, mut y) = (vec![0.0; n * p * c], vec![0.0; n * p * c]);
        for r in 0..n {
            for i in 0..p {
                let at = (r * p + i) * c;
                let xi: Vec<f64> = x[at..at + c].iter().map(|&v| v as f64).collect();
                let inv = norm(&xi);
                for ch in 0..c {
                    xn[at + ch] = xi[ch] * inv * m.norm_weight[ch] as f64 * (1.0 + chunk(r, i, 1, ch))
                        + chunk(r, i, 0, ch);
                }
                let x1: Vec<f64> = (0..c)
                    .map(|ch| xi[ch] + chunk(r, i, 2, ch) * branch[at + ch] as f64)
                    .collect();
                let inv = norm(&x1);
                let h: Vec<f64> = (0..c)
                    .map(|ch| {
                        x1[ch] * inv * m.norm_weight[ch] as f64 * (1.0 + chunk(r, i, 4, ch))
                            + chunk(r, i, 3, ch)
                    })
                    .collect();
                let hid: Vec<f64> = (0..hidden)
                    .map(|j| {
                        let a = mlp.fc1_bias[j] as f64
                            + (0..c)
                                .map(|ch| mlp.fc1_weight[j * c + ch] as f64 * h[ch])
                                .sum::<f64>();
                        0.5 * a * (1.0 + erf_ref(a / std::f64::consts::SQRT_2))
                    })
                    .collect();
                for ch in 0..c {
                    let f = mlp.fc2_bias[ch] as f64
                        + (0..hidden)
                            .map(|j| mlp.fc2_weight[ch * hidden + j] as f64 * hid[j])
                            .sum::<f64>();
                    y[at + ch] = x1[ch] + chunk(r, i, 5, ch) * f;
                }
            }
        }
        (xn, y)
    }

    fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
        let num: f64 = got.iter().zip(want).map(|(&g, w)| (g as f64 - w).powi(2)).sum();
        let den: f64 = want.iter().map(|w| w * w).sum();
        (num / den).sqrt()
    }

    /// Deterministic inputs of both kernels for `n` rows of `p` pixels of `c` channels and an MLP of `hidden`, from
    /// the seeds `seed..seed + 9`.
    struct Case {
        dims: (usize, usize, usize, usize),
        x: Vec<f32>,
        branch: Vec<f32>,
        modulation: Vec<f32>,
        bias: Vec<f32>,
        norm_weight: Vec<f32>,
        fc1: (Vec<f32>, Vec<f32>),
        fc2: (Vec<f32>, Vec<f32>),
    }

    impl Case {
        fn new((n, p, c, hidden): (usize, usize, usize, usize), seed: u32) -> Self {
            Case {
                dims: (n, p, c, hidden),
                x: fill(n * p * c, seed),
                branch: fill(n * p * c, seed + 1),
                modulation: fill(n * p * CHUNKS * c, seed + 2),
                bias: fill(p * CHUNKS * c, seed + 3),
                norm_weight: fill(c, seed + 4).iter().map(|v| 1.0 + 0.5 * v).collect(),
                fc1: (fill(hidden * c, seed + 5), fill(hidden, seed + 6)),
                fc2: (fill(c * hidden, seed + 7), fill(c, seed + 8)),
            }
        }

        fn modulation(&self) -> PixelModulation<'_> {
            let (rows, pixels, channels, _) = self.dims;
            PixelModulation {
                rows,
                pixels,
                channels,
                modulation: &self.modulation,
                bias: &self.bias,
                norm_weight: &self.norm_weight,
                epsilon: 1e-6,
            }
        }

        fn mlp(&self) -> PixelMlp<'_> {
            PixelMlp {
                fc1_weight: &self.fc1.0,
                fc1_bias: &self.fc1.1,
                fc2_weight: &self.fc2.0,
                fc2_bias: &self.fc2.1,
            }
        }
    }

    /// Both kernels against the f64 contract, at the presets' shape (C 16, hidden 64: the AVX-512 path where the
    /// CPU has it) and an odd one (the generic path), on one thread and on scoped threads.
    #[test]
    fn kernels_match_the_contract() {
        // (3, 5, 16, 64): an odd pixel count, so the AVX-512 kernel's last pixel goes alone.
        for &(n, p, c, hidden) in &[
            (40usize, 64usize, 16usize, 64usize),
            (3, 5, 16, 64),
            (3, 5, 6, 10),
        ] {
            let case = Case::new((n, p, c, hidden), 1);
            let (x, branch) = (&case.x, &case.branch);
            let (m, mlp) = (case.modulation(), case.mlp());
            let (want_xn, want_y) = reference(&m, x, branch, &mlp);
            let mut xn = vec![0f32; x.len()];
            pixel_modulate(&m, x, Threads::Own, &mut xn).unwrap();
            assert!(
                rel_l2(&xn, &want_xn) < 1e-6,
                "PixelModulate {n}x{p}x{c}: {}",
                rel_l2(&xn, &want_xn)
            );
            let mut y = vec![0f32; x.len()];
            pixel_gated_mlp(&m, x, branch, &mlp, Threads::Own, &mut y).unwrap();
            assert!(
                rel_l2(&y, &want_y) < 1e-6,
                "PixelGatedMlp {n}x{p}x{c}: {}",
                rel_l2(&y, &want_y)
            );
        }
    }

    /// The portable loops, which AVX2-only and other CPUs run, at the presets' shape (C = 16, H = 64), where this
    /// machine's dispatcher may pick the AVX-512 kernel instead: called directly, compiled for the baseline, for
    /// AVX2 + FMA (where the CPU has them) and as dispatched.
    #[test]
    fn portable_loops_match_the_contract_at_the_presets_shape() {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn gated_avx2(
            m: &PixelModulation<'_>,
            x: &[f32],
            branch: &[f32],
            w: &MlpWeights<'_>,
            out: &mut [f32],
        ) {
            gated_mlp_rows_fixed(m, x, branch, w, 0..m.rows, (16, 64), out)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn modulate_avx2(m: &PixelModulation<'_>, x: &[f32], out: &mut [f32]) {
            modulate_rows_fixed(m, x, 0..m.rows, 16, out)
        }

        let (n, c, hidden) = (3usize, 16usize, 64usize);
        let case = Case::new((n, 5, c, hidden), 11);
        let (x, branch) = (&case.x, &case.branch);
        let (m, mlp) = (case.modulation(), case.mlp());
        let (want_xn, want_y) = reference(&m, x, branch, &mlp);
        let (fc1_t, fc2_t) = input_major(&mlp, c, hidden);
        let w = MlpWeights {
            fc1_t: &fc1_t,
            fc1_bias: mlp.fc1_bias,
            fc2_t: &fc2_t,
            fc2_bias: mlp.fc2_bias,
        };
        let check = |what: &str, got: &[f32], want: &[f64]| {
            let err = rel_l2(got, want);
            assert!(err < 1e-6, "{what}: relative L2 {err}");
        };
        let mut y = vec![0f32; x.len()];
        gated_mlp_rows_fixed(&m, x, branch, &w, 0..n, (c, hidden), &mut y);
        check("gated MLP, baseline", &y, &want_y);
        gated_mlp_rows_portable(&m, x, branch, &w, 0..n, (c, hidden), &mut y);
        check("gated MLP, dispatched portable loops", &y, &want_y);
        let mut xn = vec![0f32; x.len()];
        modulate_rows_fixed(&m, x, 0..n, c, &mut xn);
        check("modulation, baseline", &xn, &want_xn);
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            unsafe { gated_avx2(&m, x, branch, &w, &mut y) };
            check("gated MLP, AVX2 + FMA", &y, &want_y);
            // SAFETY: as above.
            unsafe { modulate_avx2(&m, x, &mut xn) };
            check("modulation, AVX2 + FMA", &xn, &want_xn);
        }
    }

    /// The AVX-512 GELU against the scalar one (where the CPU has AVX-512).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_gelu_matches_the_scalar_one() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let xs: Vec<f32> = (-9600..9600).map(|i| i as f32 / 800.0).collect();
        for chunk in xs.chunks_exact(16) {
            let mut got = [0f32; 16];
            // SAFETY: the CPU has AVX-512F (checked above); 16 floats in and out.
            unsafe {
                use std::arch::x86_64::*;
                _mm512_storeu_ps(got.as_mut_ptr(), avx512::gelu(_mm512_loadu_ps(chunk.as_ptr())));
            }
            for (&x, &g) in chunk.iter().zip(&got) {
                let want = gelu_erf(x);
                assert!(
                    (g - want).abs() <= 1e-5 * want.abs() + 1e-30,
                    "gelu({x}): {g} vs {want}"
                );
            }
        }
    }

    #[test]
    fn bad_sizes_are_named() {
        let x = vec![0f32; 2 * 4 * 16];
        let modulation = vec![0f32; 2 * 4 * 6 * 16];
        let bias = vec![0f32; 4 * 6 * 16 - 1];
        let w = vec![1f32; 16];
        let m = PixelModulation {
            rows: 2,
            pixels: 4,
            channels: 16,
            modulation: &modulation,
            bias: &bias,
            norm_weight: &w,
            epsilon: 1e-6,
        };
        let mut out = vec![0f32; x.len()];
        let e = pixel_modulate(&m, &x, Threads::Own, &mut out).unwrap_err();
        assert!(e.0.contains("bias has 383 elements, expected P*6*C"), "{e}");
    }
}

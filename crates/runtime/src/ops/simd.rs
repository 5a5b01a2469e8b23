//! AVX-512 helpers the kernels share.

use std::arch::x86_64::*;

/// The transpose of 16 rows of 16 floats, in registers: unpack 32-bit, unpack 64-bit, then two 128-bit lane
/// shuffles (64 shuffles, no memory traffic).
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
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
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        for half in 0..2 {
            let (a, b) = (v[2 * c + half], v[8 + 2 * c + half]);
            let col = c + 4 * half;
            out[col] = _mm512_shuffle_f32x4::<0x88>(a, b);
            out[col + 8] = _mm512_shuffle_f32x4::<0xdd>(a, b);
        }
    }
    out
}

/// `exp(x)` on 16 lanes for `x <= 0` as in [`super::attention_core::exp_poly`] (Cody-Waite reduction, degree-7 polynomial);
/// `scalef` applies `2^n` and flushes what underflows to 0.
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn exp_nonpositive(x: __m512) -> __m512 {
    let set = _mm512_set1_ps;
    let x = _mm512_max_ps(x, set(-104.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        set(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, set(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, set(-2.121_944_4e-4), r);
    let mut p = set(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        p = _mm512_fmadd_ps(p, r, set(c));
    }
    let y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), set(1.0));
    _mm512_scalef_ps(y, n)
}

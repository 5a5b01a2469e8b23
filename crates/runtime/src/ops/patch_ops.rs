//! `pixeldit.RmsNormModulate` and `pixeldit.SwiGlu` (semantics: [`pixeldit_spec::custom_op`]): the patch level's
//! RMSNorm and adaLN modulation in one pass over each token, instead of the nine standard ops (square, mean, add,
//! sqrt, divide, weight, `1 + scale`, multiply, add) that each read and write the whole `[B, L, D]` tensor, and
//! its MLP's SiLU gate in one pass instead of three.

use super::attention_core::exp_poly;
use super::pixel_ops::for_row_blocks;
use super::{KernelShapeError, Threads};
use std::ops::Range;

/// The operands, as flat row-major slices.
#[derive(Debug, Clone, Copy)]
pub struct NormModulateInputs<'a> {
    /// `x [B, L, D]`.
    pub x: &'a [f32],
    /// B, L, D.
    pub dims: [usize; 3],
    /// `norm_weight [D]`.
    pub norm_weight: &'a [f32],
    /// `shift [B, 1, D]`.
    pub shift: &'a [f32],
    /// `scale [B, 1, D]`.
    pub scale: &'a [f32],
    /// RMSNorm epsilon.
    pub epsilon: f32,
}

/// `out [B, L, D] = x / sqrt(mean(x^2) + eps) * norm_weight * (1 + scale) + shift`, rows split among the host's
/// pool or scoped threads.
pub fn rms_norm_modulate(
    inp: &NormModulateInputs<'_>,
    threads: Threads<'_>,
    out: &mut [f32],
) -> Result<(), KernelShapeError> {
    let [b, l, d] = inp.dims;
    let err = |m: String| Err(KernelShapeError(format!("RmsNormModulate: {m}")));
    if d == 0 || inp.x.len() != b * l * d {
        return err(format!(
            "x has {} elements, expected [B, L, D] = [{b}, {l}, {d}], D > 0",
            inp.x.len()
        ));
    }
    if inp.norm_weight.len() != d {
        return err(format!(
            "norm_weight has {} elements, expected D = {d}",
            inp.norm_weight.len()
        ));
    }
    if inp.shift.len() != b * d || inp.scale.len() != b * d {
        return err(format!(
            "shift / scale have {} / {} elements, expected [B, 1, D] = {b}*{d}",
            inp.shift.len(),
            inp.scale.len()
        ));
    }
    if out.len() != inp.x.len() {
        return err(format!("output has {} elements, x {}", out.len(), inp.x.len()));
    }
    for_row_blocks(b * l, d, threads, out, &|rows, out| rows_of(inp, rows, out));
    Ok(())
}

multiversion! {
    /// The rows `rows` (of `B*L`) into `out` (those rows only).
    fn rows_of(inp: &NormModulateInputs<'_>, rows: Range<usize>, out: &mut [f32]) => rows_body
}

/// Lanes of the sum of squares: independent partial sums, so that the loop vectorises without reassociation.
const LANES: usize = 16;

#[inline(always)]
fn rows_body(inp: &NormModulateInputs<'_>, rows: Range<usize>, out: &mut [f32]) {
    let [_, l, d] = inp.dims;
    let first = rows.start;
    for r in rows {
        let x = &inp.x[r * d..(r + 1) * d];
        let b = r / l;
        let (shift, scale) = (&inp.shift[b * d..(b + 1) * d], &inp.scale[b * d..(b + 1) * d]);
        let mut lanes = [0f32; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for i in 0..LANES {
                lanes[i] += c[i] * c[i];
            }
        }
        let ss = chunks.remainder().iter().map(|v| v * v).sum::<f32>() + lanes.iter().sum::<f32>();
        let inv = 1.0 / (ss / d as f32 + inp.epsilon).sqrt();
        let o = &mut out[(r - first) * d..(r - first + 1) * d];
        for ((((o, x), w), sc), sh) in o.iter_mut().zip(x).zip(inp.norm_weight).zip(scale).zip(shift) {
            *o = x * inv * w * (1.0 + sc) + sh;
        }
    }
}

/// `out = a * sigmoid(a) * b` (`a`, `b` and `out` of equal length `rows * row_len`), rows split among the host's
/// pool or scoped threads.
pub fn swiglu(
    a: &[f32],
    b: &[f32],
    row_len: usize,
    threads: Threads<'_>,
    out: &mut [f32],
) -> Result<(), KernelShapeError> {
    if a.len() != b.len() || out.len() != a.len() || row_len == 0 || !a.len().is_multiple_of(row_len) {
        return Err(KernelShapeError(format!(
            "SwiGlu: a, b and the output must have the same [.., H] shape, got {}, {} and {} elements (H = {row_len})",
            a.len(),
            b.len(),
            out.len()
        )));
    }
    for_row_blocks(a.len() / row_len, row_len, threads, out, &|rows, out| {
        let span = rows.start * row_len..rows.end * row_len;
        swiglu_span(&a[span.clone()], &b[span], out)
    });
    Ok(())
}

multiversion! {
    /// [`swiglu`] on one span.
    fn swiglu_span(a: &[f32], b: &[f32], out: &mut [f32]) => swiglu_body
}

#[inline(always)]
fn swiglu_body(a: &[f32], b: &[f32], out: &mut [f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
        // exp_poly clamps its argument to [-87, 88]: 1 + exp(-a) stays finite, and a below -87 gives a / 6e37.
        *o = a / (1.0 + exp_poly(-a)) * b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    /// Against the f64 definition, with D not a multiple of the lanes, on one thread and on scoped threads.
    #[test]
    fn matches_the_definition() {
        for &[b, l, d] in &[[2usize, 3usize, 37usize], [2, 300, 256]] {
            let (x, w) = (values(b * l * d, 1), values(d, 2));
            let (shift, scale) = (values(b * d, 3), values(b * d, 4));
            let inp = NormModulateInputs {
                x: &x,
                dims: [b, l, d],
                norm_weight: &w,
                shift: &shift,
                scale: &scale,
                epsilon: 1e-6,
            };
            let mut out = vec![0f32; x.len()];
            rms_norm_modulate(&inp, Threads::Own, &mut out).unwrap();
            let mut worst = 0f64;
            for r in 0..b * l {
                let row = &x[r * d..(r + 1) * d];
                let ms = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + 1e-6).sqrt();
                let bi = r / l;
                for i in 0..d {
                    let want =
                        f64::from(row[i]) * inv * f64::from(w[i]) * (1.0 + f64::from(scale[bi * d + i]))
                            + f64::from(shift[bi * d + i]);
                    worst = worst.max((f64::from(out[r * d + i]) - want).abs() / (1.0 + want.abs()));
                }
            }
            assert!(worst < 1e-5, "[{b}, {l}, {d}]: worst error {worst:e}");
        }
    }

    #[test]
    fn swiglu_matches_the_definition() {
        let (rows, h) = (300, 40);
        let a: Vec<f32> = values(rows * h, 5).iter().map(|v| v * 50.0).collect();
        let b = values(rows * h, 6);
        let mut out = vec![0f32; a.len()];
        swiglu(&a, &b, h, Threads::Own, &mut out).unwrap();
        for ((&o, &a), &b) in out.iter().zip(&a).zip(&b) {
            let want = f64::from(a) / (1.0 + (-f64::from(a)).exp()) * f64::from(b);
            assert!(
                (f64::from(o) - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "silu({a}) * {b}: {o} vs {want}"
            );
        }
        let e = swiglu(&a, &b[1..], h, Threads::Own, &mut out).unwrap_err();
        assert!(e.0.contains("same [.., H] shape"), "{e}");
    }

    #[test]
    fn bad_sizes_are_named() {
        let x = vec![0f32; 2 * 3 * 4];
        let w = vec![1f32; 4];
        let inp = NormModulateInputs {
            x: &x,
            dims: [2, 3, 4],
            norm_weight: &w,
            shift: &w,
            scale: &w,
            epsilon: 1e-6,
        };
        let e = rms_norm_modulate(&inp, Threads::Own, &mut [0f32; 24]).unwrap_err();
        assert!(
            e.0.contains("shift / scale have 4 / 4 elements, expected [B, 1, D] = 2*4"),
            "{e}"
        );
    }
}

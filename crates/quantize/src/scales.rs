//! Scale arithmetic: per-channel weight scales, per-tensor activation scales, SmoothQuant factors.

use crate::calib::TensorStats;
use crate::config::CalibMethod;

/// One scale per output row of a row-major `[out, in]` weight: `max |w_row| / qmax` (1 for an all-zero row, so
/// that no scale is 0).
pub fn weight_scales(w: &[f32], out: usize, qmax: f32) -> Vec<f32> {
    let cols = w.len() / out.max(1);
    w.chunks(cols.max(1))
        .map(|row| nonzero(row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / qmax))
        .collect()
}

/// max |w_j| per input column of a row-major `[out, in]` weight.
pub fn column_amax(w: &[f32], cols: usize) -> Vec<f32> {
    let mut m = vec![0.0f32; cols];
    for row in w.chunks(cols.max(1)) {
        for (a, v) in m.iter_mut().zip(row) {
            *a = a.max(v.abs());
        }
    }
    m
}

/// The activation range a method picks from calibration statistics.
pub fn activation_range(stats: &TensorStats, method: CalibMethod) -> f32 {
    match method {
        CalibMethod::Max => stats.amax,
        CalibMethod::Percentile(_) => stats.pct,
    }
}

/// SmoothQuant factors `s_j = max|x_j|^alpha / max|w_j|^(1 - alpha)` (Xiao et al. 2022): the activation is
/// divided by `s`, the weight's input columns multiplied by it, so the product is unchanged while activation
/// outliers move into the (per-channel quantized) weights. Channels with a zero maximum keep `s_j = 1`; factors
/// are clamped to `[1e-4, 1e4]`.
pub fn smooth_factors(act_amax: &[f32], w_amax: &[f32], alpha: f32) -> Vec<f32> {
    act_amax
        .iter()
        .zip(w_amax)
        .map(|(&a, &w)| {
            if a > 0.0 && w > 0.0 {
                (a.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-4, 1e4)
            } else {
                1.0
            }
        })
        .collect()
}

/// A usable scale: `v` when finite and positive, else 1.
pub fn nonzero(v: f32) -> f32 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_row_scales() {
        let w = [1.0, -4.0, 0.5, 0.0, 0.0, 0.0];
        assert_eq!(weight_scales(&w, 3, 2.0), vec![2.0, 0.25, 1.0]);
        assert_eq!(column_amax(&w, 2), vec![1.0, 4.0]);
    }

    #[test]
    fn smoothing_balances_ranges() {
        let s = smooth_factors(&[16.0, 0.0], &[1.0, 2.0], 0.5);
        assert_eq!(s, vec![4.0, 1.0]);
        // After smoothing both sides have the same max: 16 / 4 = 1 * 4.
        assert_eq!(16.0 / s[0], 1.0 * s[0]);
    }
}

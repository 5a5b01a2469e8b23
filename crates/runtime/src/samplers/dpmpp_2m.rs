//! `dpmpp_2m` (architecture notes sections 4.2 and 5.1): the DPM-Solver++ 2M sampler of the official T2I pipeline
//! (SANA's `dpm_solver.py`).
//!
//! Its grid is on the noise level sigma = 1 - t, `x_sigma = (1 - sigma) * x0 + sigma * noise`; the official
//! text-to-image network gets `t = sigma * 1000` and predicts `noise - x0` ([`crate::Denoiser`] converts both).
//!
//! * Grid ([`flow_sigmas`], `skip_type="time_uniform_flow"`): `1 - linspace(1, 0.001, N+1)` (numpy/torch
//!   `linspace`), shifted by `s*sigma / (1 + (s-1)*sigma)` (flow shift s, 4.0 for the released model), flipped: it
//!   starts at sigma = 0.99975 and ends at exactly 0. Computed in f64; the network receives `t` as f32.
//! * Data prediction at each evaluation: `x0 = x - sigma * v` (`x + sigma * v` in the generation convention
//!   `v = x0 - noise`). The official code goes through the noise prediction
//!   `eps = (1 - sigma) v + x` and `x0 = (x - sigma eps) / (1 - sigma)`, which is the same value; the direct form
//!   avoids dividing by `1 - sigma = 2.5e-4` at the first step.
//! * CFG (applied by [`crate::generate`]): its guidance interval is on sigma (`lo < sigma < hi`, strict); `v = u +
//!   w (c - u)` is the official combination of the noise predictions, which is affine-equivalent.
//! * Updates, with `lambda = log(1 - sigma) - log(sigma)`, `h = lambda_t - lambda_s`, `phi = expm1(-h)`,
//!   `alpha = 1 - sigma`: step 1 is first order `x = (sigma_t/sigma_s) x - alpha_t phi m_s`; steps 2..N-1 are the
//!   multistep second order update (`solver_type="dpmsolver"`) `x = (sigma_t/sigma_s) x - alpha_t phi m_0 -
//!   0.5 alpha_t phi (m_0 - m_1) / r0` with `r0 = h_prev / h`; the final step onto sigma = 0 (`lower_order_final`)
//!   is first order with `lambda = +inf`, i.e. it returns the last data prediction: handled explicitly, no infinity
//!   is computed. N network evaluations for N steps (N >= 2, as the official solver asserts).

use super::{GuidedVelocity, Sampler, Step};
use crate::error::Result;
use crate::generate::{Time, TimeAxis};
use ndarray::{Array4, ArrayView4};

/// The `steps + 1` noise levels from ~1 down to exactly 0.
pub fn flow_sigmas(steps: usize, shift: f64) -> Vec<f64> {
    let n = steps.max(1);
    let (start, stop) = (1.0f64, 0.001f64);
    let step = (stop - start) / n as f64;
    let mut betas: Vec<f64> = (0..=n).map(|i| start + i as f64 * step).collect();
    betas[n] = stop;
    betas
        .iter()
        .rev()
        .map(|b| {
            let s = 1.0 - b;
            shift * s / (1.0 + (shift - 1.0) * s)
        })
        .collect()
}

/// Half log-SNR `log(1 - sigma) - log(sigma)` of the flow schedule.
pub fn flow_lambda(sigma: f64) -> f64 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// The data prediction `x0 = x + sigma * v` at `sigma` (`v = x0 - noise`).
fn data_prediction(model: &mut GuidedVelocity<'_>, x: ArrayView4<f32>, sigma: f64) -> Result<Array4<f32>> {
    let v = model(x, Time::from_sigma(sigma))?;
    let sf = sigma as f32;
    let mut x0 = x.to_owned();
    x0.zip_mut_with(&v, |x, &v| *x += sf * v);
    Ok(x0)
}

/// See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Dpmpp2m;

impl Sampler for Dpmpp2m {
    fn name(&self) -> &'static str {
        "dpmpp_2m"
    }
    fn time_axis(&self) -> TimeAxis {
        TimeAxis::NoiseLevel
    }
    fn min_steps(&self) -> usize {
        2
    }
    /// Samples from `noise` ([K,3,H,W] at sigma ~ 1) to sigma = 0; returns x0.
    fn sample(
        &self,
        model: &mut GuidedVelocity<'_>,
        noise: Array4<f32>,
        steps: usize,
        shift: f64,
        on_step: &mut dyn FnMut(Step),
    ) -> Result<Array4<f32>> {
        let sig = flow_sigmas(steps, shift);
        let lam: Vec<f64> = sig.iter().map(|&s| flow_lambda(s)).collect();
        let mut x = noise;
        let mut m0 = data_prediction(model, x.view(), sig[0])?;
        let mut m1: Option<Array4<f32>> = None;
        for step in 1..=steps {
            if step == steps {
                // First order onto sigma = 0: sigma_t / sigma_s = 0 and alpha_t * expm1(-inf) = -1, so x = x0.
                x = m0;
                on_step(Step {
                    step,
                    steps,
                    time: Time::from_sigma(sig[step - 1]),
                });
                break;
            }
            let (st, ss, at) = (sig[step], sig[step - 1], 1.0 - sig[step]);
            let h = lam[step] - lam[step - 1];
            let phi = (-h).exp_m1();
            let a = (st / ss) as f32;
            match &m1 {
                None => {
                    let b = (-at * phi) as f32;
                    ndarray::Zip::from(&mut x)
                        .and(&m0)
                        .for_each(|x, &m| *x = a * *x + b * m);
                }
                Some(prev) => {
                    let r0 = (lam[step - 1] - lam[step - 2]) / h;
                    let b = (-at * phi * (1.0 + 0.5 / r0)) as f32;
                    let c = (at * phi * 0.5 / r0) as f32;
                    ndarray::Zip::from(&mut x)
                        .and(&m0)
                        .and(prev)
                        .for_each(|x, &m, &p| *x = a * *x + b * m + c * p);
                }
            }
            on_step(Step {
                step,
                steps,
                time: Time::from_sigma(ss),
            });
            let next = data_prediction(model, x.view(), st)?;
            m1 = Some(std::mem::replace(&mut m0, next));
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::testing::run;
    use crate::samplers::SamplerKind;

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < tol, "{a:?} != {b:?}");
        }
    }

    #[test]
    fn sigma_grid_by_hand() {
        // linspace(1, 0.001, 3) = [1, 0.5005, 0.001] -> 1 - . = [0, 0.4995, 0.999] -> flipped
        close(&flow_sigmas(2, 1.0), &[0.999, 0.4995, 0.0], 1e-15);
        // shift 4: 4*0.999/(1+3*0.999) = 3.996/3.997, 4*0.4995/(1+3*0.4995) = 1.998/2.4985
        close(&flow_sigmas(2, 4.0), &[3.996 / 3.997, 1.998 / 2.4985, 0.0], 1e-15);
        let g = flow_sigmas(50, 4.0);
        assert_eq!(g.len(), 51);
        assert!((g[0] - 0.999_749_812_359_27).abs() < 1e-12);
        assert_eq!(g[50], 0.0);
        assert!(g.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(flow_lambda(0.5), 0.0);
    }

    /// A velocity that is exact for the data `c` (`v = (c - x) / sigma`): every data prediction is `c`, and
    /// DPM-Solver++ of any order returns `c` exactly, whatever the step count.
    #[test]
    fn exact_data_prediction_is_reproduced() {
        for steps in [2, 3, 7] {
            let (x, _) = run(SamplerKind::Dpmpp2m, steps, 4.0, &[1.5, 1.5], |x, t| {
                let s = t.sigma() as f32;
                x.mapv(|v| (0.25 - v) / s)
            });
            assert!(x.iter().all(|v| (v - 0.25).abs() < 1e-5), "{steps} steps: {x:?}");
        }
    }

    /// The official network predicts `noise - x0 = x`, i.e. `v = -x` in the generation convention, so the data
    /// prediction is m = (1 - sigma) x; 3 steps, shift 1, x = 1 at the start. By hand (sigma = 0.999, 0.666, 0.333,
    /// 0; lambda = ln((1-s)/s); phi = expm1(-h)): m0 = 0.001; step 1 (first order) x1 = (0.666/0.999) x - 0.334
    /// phi1 m0 = 0.667, m1 = 0.222778; step 2 (second order, r0 = h1/h2) x2 = (0.333/0.666) x1 - 0.667 phi2 m1 -
    /// 0.5*0.667 phi2 (m1 - m0)/r0 = 0.45723968, m2 = 0.30497887; step 3 (onto sigma = 0) returns m2. Checked with a
    /// pure-Python evaluation of the same formulas.
    #[test]
    fn dpmpp_2m_by_hand() {
        let (x, times) = run(SamplerKind::Dpmpp2m, 3, 1.0, &[1.0], |x, _| x.mapv(|v| -v));
        assert!(
            (x[[0, 0, 0, 0]] - 0.304_978_87).abs() < 1e-6,
            "{}",
            x[[0, 0, 0, 0]]
        );
        let sigmas: Vec<f64> = times.iter().map(|t| t.sigma()).collect();
        close(&sigmas, &[0.999, 0.666, 0.333], 1e-12);
        // 2 steps: m0 = 0.001, x1 = 0.4995/0.999 - 0.5005 expm1(-(l1 - l0)) m0, result m1 = 0.5005 x1.
        let l = |s: f64| ((1.0 - s) / s).ln();
        let x1 = 0.4995 / 0.999 - 0.5005 * (-(l(0.4995) - l(0.999))).exp_m1() * 0.001;
        let (x, _) = run(SamplerKind::Dpmpp2m, 2, 1.0, &[1.0], |x, _| x.mapv(|v| -v));
        assert!((f64::from(x[[0, 0, 0, 0]]) - 0.5005 * x1).abs() < 1e-6);
    }
}

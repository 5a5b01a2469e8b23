//! Text-to-image sampling (architecture notes sections 4.2 and 5.1): the DPM-Solver++ 2M sampler of the official
//! T2I pipeline (SANA's `dpm_solver.py`) as pure functions, and the text-embedding files it consumes.
//!
//! Convention, reversed relative to the class-conditional [`super::flow`]: sigma in [0, 1] is the noise level,
//! `x_sigma = (1 - sigma) * x0 + sigma * noise`, the network gets `t = sigma * 1000` and predicts the flow velocity
//! `v = noise - x0`.
//!
//! * Grid ([`flow_sigmas`], `skip_type="time_uniform_flow"`): `1 - linspace(1, 0.001, N+1)` (numpy/torch
//!   `linspace`), shifted by `s*sigma / (1 + (s-1)*sigma)` (flow shift s, 4.0 for the released model), flipped: it
//!   starts at sigma = 0.99975 and ends at exactly 0. Computed in f64; the network receives `t` as f32.
//! * Data prediction at each evaluation: `x0 = x - sigma * v`. The official code goes through the noise prediction
//!   `eps = (1 - sigma) v + x` and `x0 = (x - sigma eps) / (1 - sigma)`, which is the same value; the direct form
//!   avoids dividing by `1 - sigma = 2.5e-4` at the first step.
//! * CFG: inside the guidance interval (`lo < sigma < hi`, strict, on sigma) and with `w != 1`, one forward on
//!   `[negative x K, prompt x K]` and `v = u + w (c - u)` (the official combination of the noise predictions, which
//!   is affine-equivalent); outside it only the prompt branch runs (batch K).
//! * Updates, with `lambda = log(1 - sigma) - log(sigma)`, `h = lambda_t - lambda_s`, `phi = expm1(-h)`,
//!   `alpha = 1 - sigma`: step 1 is first order `x = (sigma_t/sigma_s) x - alpha_t phi m_s`; steps 2..N-1 are the
//!   multistep second order update (`solver_type="dpmsolver"`) `x = (sigma_t/sigma_s) x - alpha_t phi m_0 -
//!   0.5 alpha_t phi (m_0 - m_1) / r0` with `r0 = h_prev / h`; the final step onto sigma = 0 (`lower_order_final`)
//!   is first order with `lambda = +inf`, i.e. it returns the last data prediction: handled explicitly, no infinity
//!   is computed. N network evaluations for N steps (N >= 2, as the official solver asserts).
//!
//! Prompt embeddings come from [`crate::io::read_text_embeddings`].

use super::flow::{check_interval, widen};
use crate::error::{Result, RuntimeError};
use ndarray::{concatenate, s, Array1, Array4, ArrayView1, ArrayView3, ArrayView4, Axis};
use pixeldit_spec::SamplerDefaults;

/// Name of the sampler in model metadata and on the command line.
pub const SAMPLER_NAME: &str = "dpmpp_2m";

/// Settings of the text-to-image sampler.
#[derive(Debug, Clone, PartialEq)]
pub struct DpmSolverConfig {
    /// Steps N (network evaluations), at least 2.
    pub steps: usize,
    /// CFG weight w (1 disables guidance and the negative branch).
    pub cfg_scale: f32,
    /// Guidance interval `(lo, hi)` on sigma, strict.
    pub interval: (f64, f64),
    /// Flow shift s (> 0).
    pub shift: f64,
}

impl DpmSolverConfig {
    /// Settings from a model's metadata (its sampler must be `dpmpp_2m`).
    pub fn from_defaults(d: &SamplerDefaults) -> Result<Self> {
        if d.name != SAMPLER_NAME {
            return Err(RuntimeError::InvalidArgument(format!(
                "text-to-image models sample with {SAMPLER_NAME}, the metadata names '{}'",
                d.name
            )));
        }
        let c = DpmSolverConfig {
            steps: d.steps,
            cfg_scale: d.cfg_scale,
            interval: (widen(d.guidance_interval[0]), widen(d.guidance_interval[1])),
            shift: widen(d.time_shift),
        };
        c.validate()?;
        Ok(c)
    }

    /// Checks ranges: `steps >= 2`, finite `cfg_scale`, `shift > 0`, `lo <= hi`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(RuntimeError::InvalidArgument(m));
        if self.steps < 2 {
            return bad(format!(
                "{SAMPLER_NAME} needs at least 2 steps, got {}",
                self.steps
            ));
        }
        if !self.cfg_scale.is_finite() {
            return bad(format!("cfg scale {} is not finite", self.cfg_scale));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return bad(format!("flow shift {} must be positive", self.shift));
        }
        check_interval(self.interval)
    }
}

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

/// Whether CFG applies at `sigma`: `lo < sigma < hi`, strictly.
pub fn guidance_active(sigma: f64, interval: (f64, f64)) -> bool {
    interval.0 < sigma && sigma < interval.1
}

/// Progress of one finished step.
#[derive(Debug, Clone, Copy)]
pub struct DpmSolverStep {
    /// 1-based index of the finished step.
    pub step: usize,
    /// Total steps.
    pub steps: usize,
    /// Noise level the step started from.
    pub sigma: f64,
    /// Whether the network evaluation of this step was guided (the final step evaluates nothing new).
    pub guided: bool,
}

/// The data prediction `x0` at `sigma` (one forward of batch 2K when guided, else K) and whether it was guided.
fn data_prediction<M>(
    model: &mut M,
    x: ArrayView4<f32>,
    sigma: f64,
    cond: ArrayView3<f32>,
    uncond: Option<ArrayView3<f32>>,
    cfg: &DpmSolverConfig,
) -> Result<(Array4<f32>, bool)>
where
    M: FnMut(ArrayView4<f32>, ArrayView1<f32>, ArrayView3<f32>) -> Result<Array4<f32>>,
{
    let k = x.shape()[0];
    let t = (sigma * 1000.0) as f32;
    let check = |v: &Array4<f32>, n: usize| -> Result<()> {
        let want = [n, x.shape()[1], x.shape()[2], x.shape()[3]];
        if v.shape() != want {
            return Err(RuntimeError::Shape(format!(
                "model returned v of shape {:?}, expected {want:?}",
                v.shape()
            )));
        }
        Ok(())
    };
    let guided = cfg.cfg_scale != 1.0 && uncond.is_some() && guidance_active(sigma, cfg.interval);
    let v = match uncond.filter(|_| guided) {
        Some(u) => {
            let x2 = concatenate(Axis(0), &[x, x]).expect("same shapes");
            let text2 = concatenate(Axis(0), &[u.view(), cond.view()]).map_err(|source| {
                RuntimeError::ArrayShape {
                    what: "the negative and positive text embeddings do not stack".into(),
                    source,
                }
            })?;
            let v2 = model(x2.view(), Array1::from_elem(2 * k, t).view(), text2.view())?;
            check(&v2, 2 * k)?;
            let (vu, vc) = (v2.slice(s![..k, .., .., ..]), v2.slice(s![k.., .., .., ..]));
            let w = cfg.cfg_scale;
            let mut v = vc.to_owned();
            v.zip_mut_with(&vu, |c, &u| *c = u + w * (*c - u));
            v
        }
        None => {
            let v = model(x, Array1::from_elem(k, t).view(), cond)?;
            check(&v, k)?;
            v
        }
    };
    let sf = sigma as f32;
    let mut x0 = x.to_owned();
    x0.zip_mut_with(&v, |x, &v| *x -= sf * v);
    Ok((x0, guided))
}

/// Samples from `noise` ([K,3,H,W] at sigma ~ 1) to sigma = 0 with DPM-Solver++ 2M; returns x0 ([K,3,H,W], data
/// range [-1, 1]).
///
/// `model(x, t, text) -> v` is one network forward; `cond` holds the prompt embeddings `[K, L, E]`, `uncond` the
/// negative-prompt embeddings (same shape), required when guidance can apply. `on_step` runs after each step.
pub fn sample<M>(
    model: &mut M,
    noise: Array4<f32>,
    cond: ArrayView3<f32>,
    uncond: Option<ArrayView3<f32>>,
    cfg: &DpmSolverConfig,
    on_step: &mut dyn FnMut(DpmSolverStep),
) -> Result<Array4<f32>>
where
    M: FnMut(ArrayView4<f32>, ArrayView1<f32>, ArrayView3<f32>) -> Result<Array4<f32>>,
{
    cfg.validate()?;
    let k = noise.shape()[0];
    if cond.shape()[0] != k {
        return Err(RuntimeError::Shape(format!(
            "{k} noise images for {} prompt embeddings",
            cond.shape()[0]
        )));
    }
    if let Some(u) = uncond {
        if u.shape() != cond.shape() {
            return Err(RuntimeError::Shape(format!(
                "negative embeddings {:?} and prompt embeddings {:?} differ",
                u.shape(),
                cond.shape()
            )));
        }
    } else if cfg.cfg_scale != 1.0 {
        return Err(RuntimeError::InvalidArgument(
            "classifier-free guidance needs negative-prompt embeddings (or cfg 1)".into(),
        ));
    }
    let sig = flow_sigmas(cfg.steps, cfg.shift);
    let lam: Vec<f64> = sig.iter().map(|&s| flow_lambda(s)).collect();
    let mut x = noise;
    let (mut m0, mut guided) = data_prediction(model, x.view(), sig[0], cond, uncond, cfg)?;
    let mut m1: Option<Array4<f32>> = None;
    for step in 1..=cfg.steps {
        if step == cfg.steps {
            // First order onto sigma = 0: sigma_t / sigma_s = 0 and alpha_t * expm1(-inf) = -1, so x = x0.
            x = m0;
            on_step(DpmSolverStep {
                step,
                steps: cfg.steps,
                sigma: sig[step - 1],
                guided,
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
        on_step(DpmSolverStep {
            step,
            steps: cfg.steps,
            sigma: ss,
            guided,
        });
        let (next, g) = data_prediction(model, x.view(), st, cond, uncond, cfg)?;
        m1 = Some(std::mem::replace(&mut m0, next));
        guided = g;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;

    fn cfg(steps: usize, w: f32, interval: (f64, f64), shift: f64) -> DpmSolverConfig {
        DpmSolverConfig {
            steps,
            cfg_scale: w,
            interval,
            shift,
        }
    }

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

    /// A model whose velocity is exact for the data `c` (v = (x - c) / sigma): every data prediction is `c`, and
    /// DPM-Solver++ of any order returns `c` exactly, whatever the step count.
    #[test]
    fn exact_data_prediction_is_reproduced() {
        for steps in [2, 3, 7] {
            let mut model =
                |x: ArrayView4<f32>, t: ArrayView1<f32>, _: ArrayView3<f32>| -> Result<Array4<f32>> {
                    let s = t[0] / 1000.0;
                    Ok(x.mapv(|v| (v - 0.25) / s))
                };
            let noise = Array4::from_elem((1, 1, 1, 2), 1.5f32);
            let text = Array3::zeros((1, 1, 1));
            let x = sample(
                &mut model,
                noise,
                text.view(),
                None,
                &cfg(steps, 1.0, (0.0, 1.0), 4.0),
                &mut |_| {},
            )
            .unwrap();
            assert!(x.iter().all(|v| (v - 0.25).abs() < 1e-5), "{steps} steps: {x:?}");
        }
    }

    /// v = x, so the data prediction is m = (1 - sigma) x; 3 steps, shift 1, x = 1 at the start. By hand (sigma =
    /// 0.999, 0.666, 0.333, 0; lambda = ln((1-s)/s); phi = expm1(-h)): m0 = 0.001; step 1 (first order)
    /// x1 = (0.666/0.999) x - 0.334 phi1 m0 = 0.667, m1 = 0.222778; step 2 (second order, r0 = h1/h2)
    /// x2 = (0.333/0.666) x1 - 0.667 phi2 m1 - 0.5*0.667 phi2 (m1 - m0)/r0 = 0.45723968, m2 = 0.30497887; step 3
    /// (onto sigma = 0) returns m2. Checked with a pure-Python evaluation of the same formulas.
    #[test]
    fn dpmpp_2m_by_hand() {
        let mut model = |x: ArrayView4<f32>,
                         _t: ArrayView1<f32>,
                         _: ArrayView3<f32>|
         -> Result<Array4<f32>> { Ok(x.to_owned()) };
        let noise = Array4::from_elem((1, 1, 1, 1), 1.0f32);
        let text = Array3::zeros((1, 1, 1));
        let mut sigmas = Vec::new();
        let x = sample(
            &mut model,
            noise,
            text.view(),
            None,
            &cfg(3, 1.0, (0.0, 1.0), 1.0),
            &mut |s| sigmas.push(s.sigma),
        )
        .unwrap();
        assert!(
            (x[[0, 0, 0, 0]] - 0.304_978_87).abs() < 1e-6,
            "{}",
            x[[0, 0, 0, 0]]
        );
        close(&sigmas, &[0.999, 0.666, 0.333], 1e-12);
        // 2 steps: m0 = 0.001, x1 = 0.4995/0.999 - 0.5005 expm1(-(l1 - l0)) m0, result m1 = 0.5005 x1.
        let l = |s: f64| ((1.0 - s) / s).ln();
        let x1 = 0.4995 / 0.999 - 0.5005 * (-(l(0.4995) - l(0.999))).exp_m1() * 0.001;
        let noise = Array4::from_elem((1, 1, 1, 1), 1.0f32);
        let x = sample(
            &mut model,
            noise,
            text.view(),
            None,
            &cfg(2, 1.0, (0.0, 1.0), 1.0),
            &mut |_| {},
        )
        .unwrap();
        assert!((f64::from(x[[0, 0, 0, 0]]) - 0.5005 * x1).abs() < 1e-6);
    }

    /// v = the text value (prompt 3, negative 1): guided v = 1 + w(3 - 1); records batches and times.
    #[test]
    fn cfg_batches_negative_first_and_respects_the_interval() {
        let mut calls: Vec<(usize, f32, Vec<f32>)> = Vec::new();
        let mut model =
            |x: ArrayView4<f32>, t: ArrayView1<f32>, text: ArrayView3<f32>| -> Result<Array4<f32>> {
                calls.push((x.shape()[0], t[0], text.iter().copied().collect()));
                let mut v = Array4::zeros(x.raw_dim());
                for (b, mut img) in v.outer_iter_mut().enumerate() {
                    img.fill(text[[b, 0, 0]]);
                }
                Ok(v)
            };
        let noise = Array4::zeros((1, 1, 1, 1));
        let (cond, uncond) = (
            Array3::from_elem((1, 1, 1), 3.0f32),
            Array3::from_elem((1, 1, 1), 1.0f32),
        );
        // sigmas 0.99975, 0.8, 0.0: the first evaluation is outside (0, 0.99), the second inside.
        let mut guided = Vec::new();
        sample(
            &mut model,
            noise,
            cond.view(),
            Some(uncond.view()),
            &cfg(2, 2.0, (0.0, 0.99), 4.0),
            &mut |s| guided.push(s.guided),
        )
        .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!((calls[0].0, calls[0].2.clone()), (1, vec![3.0]));
        assert!((calls[0].1 - 999.7498).abs() < 1e-3);
        assert_eq!((calls[1].0, calls[1].2.clone()), (2, vec![1.0, 3.0]));
        assert!((calls[1].1 - 799.6798).abs() < 1e-2);
        assert_eq!(guided, vec![false, true]);
        // Missing negative embeddings with CFG on is an error; cfg 1 needs none.
        let mut m2 = |x: ArrayView4<f32>, _: ArrayView1<f32>, _: ArrayView3<f32>| Ok(x.to_owned());
        let n = Array4::zeros((1, 1, 1, 1));
        assert!(sample(
            &mut m2,
            n.clone(),
            cond.view(),
            None,
            &cfg(2, 2.0, (0.0, 1.0), 4.0),
            &mut |_| {}
        )
        .is_err());
        assert!(sample(
            &mut m2,
            n,
            cond.view(),
            None,
            &cfg(2, 1.0, (0.0, 1.0), 4.0),
            &mut |_| {}
        )
        .is_ok());
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(cfg(1, 1.0, (0.0, 1.0), 4.0).validate().is_err());
        assert!(cfg(2, 1.0, (0.9, 0.1), 4.0).validate().is_err());
        assert!(cfg(2, 1.0, (0.0, 1.0), 0.0).validate().is_err());
        let d = SamplerDefaults {
            name: "flow_dpm".into(),
            steps: 10,
            cfg_scale: 2.0,
            guidance_interval: [0.0, 1.0],
            time_shift: 4.0,
        };
        assert!(DpmSolverConfig::from_defaults(&d).is_err());
        let c = DpmSolverConfig::from_defaults(&SamplerDefaults {
            name: SAMPLER_NAME.into(),
            ..d
        })
        .unwrap();
        assert_eq!((c.steps, c.interval, c.shift), (10, (0.0, 1.0), 4.0));
    }
}

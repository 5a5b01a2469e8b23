//! Samplers of the class-conditional PixelDiT (architecture notes section 4.1), as pure functions.
//!
//! Convention: rectified flow with `x_t = t*x0 + (1-t)*noise`, `t = 0` is noise and `t = 1` is data, the network
//! predicts `v = x0 - noise`, and sampling integrates `dx/dt = v` from `t = 0` to `t = 1`.
//!
//! * Time grid ([`time_grid`]): `numpy.linspace(0, 1 - 1/N, N)` with `1.0` appended, each point then shifted by
//!   `t / (t + (1-t)*shift)`. Computed in f64 exactly as numpy does (`i * step`, last point set to the stop value);
//!   the network receives `t` as f32.
//! * `flow_dpm` (official, every reported FID): Euler for the first step, then 2-step Adams-Bashforth
//!   `x += dt*(1.5*v_i - 0.5*v_{i-1})` with no correction for unequal steps. One network call per step.
//! * `euler`: `x += dt*v_i`. One call per step.
//! * `heun`: Euler predictor to `t_next`, then `x += dt*(v(x,t) + v(x_pred,t_next))/2` on every step (the last
//!   step evaluates the network at `t = 1`). Two calls per step.
//! * CFG: each call runs one forward on the batch `[uncond (label = null class) x K, cond x K]` at the same `x` and
//!   `t`; the result is `u + w*(c - u)` iff `lo < t < hi` (strict, compared in f64), else `c`. With `w == 1` the
//!   uncond half is skipped (the result would be `c` anyway).

use crate::error::{Result, RuntimeError};
use ndarray::{concatenate, s, Array1, Array4, ArrayView1, ArrayView4, Axis};
use pixeldit_spec::SamplerDefaults;
use std::fmt;
use std::str::FromStr;

/// The update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// Euler first step, then 2-step Adams-Bashforth (the official `FlowDPMSolverSampler`).
    FlowDpm,
    /// Plain Euler.
    Euler,
    /// Heun (explicit trapezoid), two network calls per step.
    Heun,
}

impl SamplerKind {
    /// Canonical names.
    pub const NAMES: &'static [&'static str] = &["flow_dpm", "euler", "heun"];

    /// Canonical name.
    pub fn as_str(&self) -> &'static str {
        match self {
            SamplerKind::FlowDpm => "flow_dpm",
            SamplerKind::Euler => "euler",
            SamplerKind::Heun => "heun",
        }
    }

    /// Network evaluations per step.
    pub fn calls_per_step(&self) -> usize {
        if *self == SamplerKind::Heun {
            2
        } else {
            1
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SamplerKind {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "flow_dpm" | "flow-dpm" => Ok(SamplerKind::FlowDpm),
            "euler" => Ok(SamplerKind::Euler),
            "heun" => Ok(SamplerKind::Heun),
            _ => Err(RuntimeError::InvalidArgument(format!(
                "unknown sampler '{s}': expected one of {}",
                Self::NAMES.join(", ")
            ))),
        }
    }
}

/// Complete sampler settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSamplerConfig {
    /// Update rule.
    pub kind: SamplerKind,
    /// Number of steps N (>= 1).
    pub steps: usize,
    /// CFG weight w.
    pub cfg_scale: f32,
    /// Guidance interval `(lo, hi)`, strict, in data-time.
    pub interval: (f64, f64),
    /// Time shift s (> 0).
    pub shift: f64,
}

/// f32 -> f64 through the shortest decimal form, so that a metadata `0.1f32` compares as the `0.1` a user typed.
/// Shared with [`crate::t2i`].
pub(crate) fn widen(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// Checks a guidance interval `(lo, hi)`: no NaN and `lo <= hi`. Shared with [`crate::t2i`].
pub(crate) fn check_interval((lo, hi): (f64, f64)) -> Result<()> {
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(RuntimeError::InvalidArgument(format!(
            "guidance interval [{lo}, {hi}] must have lo <= hi"
        )));
    }
    Ok(())
}

impl FlowSamplerConfig {
    /// Settings from a model's metadata.
    pub fn from_defaults(d: &SamplerDefaults) -> Result<Self> {
        let cfg = FlowSamplerConfig {
            kind: d.name.parse()?,
            steps: d.steps,
            cfg_scale: d.cfg_scale,
            interval: (widen(d.guidance_interval[0]), widen(d.guidance_interval[1])),
            shift: widen(d.time_shift),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges: `steps >= 1`, finite `cfg_scale`, `shift > 0`, `lo <= hi`.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(RuntimeError::InvalidArgument(m));
        if self.steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if !self.cfg_scale.is_finite() {
            return bad(format!("cfg scale {} is not finite", self.cfg_scale));
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return bad(format!("time shift {} must be positive", self.shift));
        }
        check_interval(self.interval)
    }

    /// Total network calls of one sample.
    pub fn network_calls(&self) -> usize {
        self.steps * self.kind.calls_per_step()
    }
}

/// `t / (t + (1-t)*shift)`.
pub fn shift_time(t: f64, shift: f64) -> f64 {
    t / (t + (1.0 - t) * shift)
}

/// The `steps + 1` time points: `linspace(0, 1 - 1/N, N)` + `[1.0]`, shifted.
pub fn time_grid(steps: usize, shift: f64) -> Vec<f64> {
    let n = steps.max(1);
    let stop = 1.0 - 1.0 / n as f64;
    let mut g: Vec<f64> = if n == 1 {
        vec![0.0]
    } else {
        let step = stop / (n - 1) as f64;
        let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step).collect();
        v[n - 1] = stop;
        v
    };
    g.push(1.0);
    g.iter().map(|&t| shift_time(t, shift)).collect()
}

/// Whether CFG applies at `t`: `lo < t < hi`, strictly.
pub fn guidance_active(t: f64, interval: (f64, f64)) -> bool {
    interval.0 < t && t < interval.1
}

/// `u + w*(c - u)` element-wise.
pub fn cfg_combine(uncond: ArrayView4<f32>, cond: ArrayView4<f32>, w: f32) -> Array4<f32> {
    let mut out = cond.to_owned();
    out.zip_mut_with(&uncond, |c, &u| *c = u + w * (*c - u));
    out
}

/// Euler update `x += dt*v`.
pub fn euler_update(x: &mut Array4<f32>, v: ArrayView4<f32>, dt: f32) {
    x.zip_mut_with(&v, |x, &v| *x += dt * v);
}

/// 2-step Adams-Bashforth update `x += dt*(1.5*v - 0.5*v_prev)`.
pub fn ab2_update(x: &mut Array4<f32>, v: ArrayView4<f32>, v_prev: ArrayView4<f32>, dt: f32) {
    ndarray::Zip::from(x)
        .and(&v)
        .and(&v_prev)
        .for_each(|x, &v, &p| *x += dt * (1.5 * v - 0.5 * p));
}

/// Heun update `x += dt*(v1 + v2)/2`.
pub fn heun_update(x: &mut Array4<f32>, v1: ArrayView4<f32>, v2: ArrayView4<f32>, dt: f32) {
    ndarray::Zip::from(x)
        .and(&v1)
        .and(&v2)
        .for_each(|x, &a, &b| *x += dt * 0.5 * (a + b));
}

/// Progress of one finished step, passed to the callback of [`sample`].
#[derive(Debug, Clone, Copy)]
pub struct StepInfo {
    /// 1-based index of the finished step.
    pub step: usize,
    /// Total steps.
    pub steps: usize,
    /// Time at the start of the step.
    pub t: f64,
    /// Whether CFG was applied at the step's first evaluation.
    pub guided: bool,
}

/// Evaluates the guided velocity at `(x, t)`: one forward of batch 2K (or K when `w == 1`).
fn guided_velocity<M>(
    model: &mut M,
    x: ArrayView4<f32>,
    t: f64,
    labels: ArrayView1<i64>,
    null_class: i64,
    cfg: &FlowSamplerConfig,
) -> Result<(Array4<f32>, bool)>
where
    M: FnMut(ArrayView4<f32>, ArrayView1<f32>, ArrayView1<i64>) -> Result<Array4<f32>>,
{
    let k = x.shape()[0];
    let tf = t as f32;
    let check = |v: &Array4<f32>, n: usize| -> Result<()> {
        if v.shape() != [n, x.shape()[1], x.shape()[2], x.shape()[3]] {
            return Err(RuntimeError::Shape(format!(
                "model returned v of shape {:?} for x of shape {:?}",
                v.shape(),
                [n, x.shape()[1], x.shape()[2], x.shape()[3]]
            )));
        }
        Ok(())
    };
    if cfg.cfg_scale == 1.0 {
        let v = model(x, Array1::from_elem(k, tf).view(), labels)?;
        check(&v, k)?;
        return Ok((v, false));
    }
    let x2 = concatenate(Axis(0), &[x, x]).expect("same shapes");
    let t2 = Array1::from_elem(2 * k, tf);
    let y2: Array1<i64> = std::iter::repeat_n(null_class, k)
        .chain(labels.iter().copied())
        .collect();
    let v2 = model(x2.view(), t2.view(), y2.view())?;
    check(&v2, 2 * k)?;
    let (u, c) = (v2.slice(s![..k, .., .., ..]), v2.slice(s![k.., .., .., ..]));
    if guidance_active(t, cfg.interval) {
        Ok((cfg_combine(u, c, cfg.cfg_scale), true))
    } else {
        Ok((c.to_owned(), false))
    }
}

/// Runs the sampler from `noise` ([K,3,H,W]) for `labels` ([K]) and returns the final `x` (t = 1).
///
/// `model(x, t, y) -> v` is one network forward; `on_step` is called after each step.
pub fn sample<M>(
    model: &mut M,
    noise: Array4<f32>,
    labels: &[i64],
    null_class: i64,
    cfg: &FlowSamplerConfig,
    on_step: &mut dyn FnMut(StepInfo),
) -> Result<Array4<f32>>
where
    M: FnMut(ArrayView4<f32>, ArrayView1<f32>, ArrayView1<i64>) -> Result<Array4<f32>>,
{
    cfg.validate()?;
    if noise.shape()[0] != labels.len() {
        return Err(RuntimeError::Shape(format!(
            "{} noise images for {} labels",
            noise.shape()[0],
            labels.len()
        )));
    }
    let labels = ArrayView1::from(labels);
    let grid = time_grid(cfg.steps, cfg.shift);
    let mut x = noise;
    let mut v_prev: Option<Array4<f32>> = None;
    for i in 0..cfg.steps {
        let (t, t_next) = (grid[i], grid[i + 1]);
        let dt = (t_next - t) as f32;
        let (v, guided) = guided_velocity(model, x.view(), t, labels, null_class, cfg)?;
        match cfg.kind {
            SamplerKind::Euler => euler_update(&mut x, v.view(), dt),
            SamplerKind::FlowDpm => {
                match &v_prev {
                    None => euler_update(&mut x, v.view(), dt),
                    Some(p) => ab2_update(&mut x, v.view(), p.view(), dt),
                }
                v_prev = Some(v);
            }
            SamplerKind::Heun => {
                let mut pred = x.clone();
                euler_update(&mut pred, v.view(), dt);
                let (v2, _) = guided_velocity(model, pred.view(), t_next, labels, null_class, cfg)?;
                heun_update(&mut x, v.view(), v2.view(), dt);
            }
        }
        on_step(StepInfo {
            step: i + 1,
            steps: cfg.steps,
            t,
            guided,
        });
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array4;

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-12, "{a:?} != {b:?}");
        }
    }

    #[test]
    fn grid_shift_1() {
        close(&time_grid(4, 1.0), &[0.0, 0.25, 0.5, 0.75, 1.0]);
        close(&time_grid(1, 1.0), &[0.0, 1.0]);
        // numpy.linspace(0, 0.9, 10) hits 0.1 and 0.9 exactly (the guidance interval edges of the golden run).
        let g = time_grid(10, 1.0);
        assert_eq!(g.len(), 11);
        assert_eq!(g[1], 0.1);
        assert_eq!(g[9], 0.9);
        assert_eq!(g[10], 1.0);
    }

    #[test]
    fn grid_shift_2() {
        // t/(t + 2(1-t)): 0.25 -> 0.25/1.75 = 1/7, 0.5 -> 0.5/1.5 = 1/3, 0.75 -> 0.75/1.25 = 0.6
        close(&time_grid(4, 2.0), &[0.0, 1.0 / 7.0, 1.0 / 3.0, 0.6, 1.0]);
        assert_eq!(shift_time(0.0, 3.0), 0.0);
        assert_eq!(shift_time(1.0, 3.0), 1.0);
    }

    #[test]
    fn guidance_interval_is_strict() {
        let iv = (0.1, 0.9);
        assert!(!guidance_active(0.1, iv));
        assert!(!guidance_active(0.9, iv));
        assert!(guidance_active(0.1 + 1e-12, iv));
        assert!(guidance_active(0.9 - 1e-12, iv));
        assert!(guidance_active(0.5, iv));
        assert!(!guidance_active(0.0, iv));
        assert!(!guidance_active(1.0, (0.0, 1.0)));
        // metadata floats compare as their decimal spelling: 0.1f32 -> 0.1
        let cfg = FlowSamplerConfig::from_defaults(&SamplerDefaults {
            name: "flow_dpm".into(),
            steps: 10,
            cfg_scale: 2.0,
            guidance_interval: [0.1, 0.9],
            time_shift: 1.0,
        })
        .unwrap();
        assert_eq!(cfg.interval, (0.1, 0.9));
    }

    fn cfg(kind: SamplerKind, steps: usize, w: f32, interval: (f64, f64)) -> FlowSamplerConfig {
        FlowSamplerConfig {
            kind,
            steps,
            cfg_scale: w,
            interval,
            shift: 1.0,
        }
    }

    /// v = x + 1 for every class (so CFG is a no-op): hand-computed trajectories.
    fn affine(x: ArrayView4<f32>, _t: ArrayView1<f32>, _y: ArrayView1<i64>) -> Result<Array4<f32>> {
        Ok(x.mapv(|v| v + 1.0))
    }

    fn run(c: &FlowSamplerConfig, x0: f32) -> f32 {
        let noise = Array4::from_elem((1, 1, 1, 1), x0);
        sample(&mut affine, noise, &[0], 10, c, &mut |_| {}).unwrap()[[0, 0, 0, 0]]
    }

    #[test]
    fn ab2_update_by_hand() {
        // grid [0, .5, 1]; x0 = 0: v0 = 1, x1 = 0.5 (Euler); v1 = 1.5, x2 = 0.5 + 0.5*(1.5*1.5 - 0.5*1) = 1.375
        assert!((run(&cfg(SamplerKind::FlowDpm, 2, 1.0, (0.0, 1.0)), 0.0) - 1.375).abs() < 1e-6);
        // 3 steps, grid [0, 1/3, 2/3, 1]: x1 = 1/3; v1 = 4/3, x2 = 1/3 + (2 - 0.5)/3 = 5/6;
        // v2 = 11/6, x3 = 5/6 + (1.5*11/6 - 0.5*4/3)/3 = 5/6 + (11/4 - 2/3)/3 = 5/6 + 25/36 = 55/36
        assert!((run(&cfg(SamplerKind::FlowDpm, 3, 1.0, (0.0, 1.0)), 0.0) - 55.0 / 36.0).abs() < 1e-6);
        let mut x = Array4::from_elem((1, 1, 1, 2), 1.0f32);
        let v = Array4::from_elem((1, 1, 1, 2), 2.0f32);
        let p = Array4::from_elem((1, 1, 1, 2), 4.0f32);
        ab2_update(&mut x, v.view(), p.view(), 0.5);
        assert_eq!(x[[0, 0, 0, 1]], 1.0 + 0.5 * (3.0 - 2.0));
    }

    #[test]
    fn euler_and_heun_by_hand() {
        // Euler, 2 steps: x1 = 0.5, x2 = 0.5 + 0.5*1.5 = 1.25
        assert!((run(&cfg(SamplerKind::Euler, 2, 1.0, (0.0, 1.0)), 0.0) - 1.25).abs() < 1e-6);
        // Heun, 1 step dt=1: v1 = 1, pred = 1, v2 = 2, x = 0 + 1*(1+2)/2 = 1.5
        assert!((run(&cfg(SamplerKind::Heun, 1, 1.0, (0.0, 1.0)), 0.0) - 1.5).abs() < 1e-6);
    }

    /// v = label as float (null class 10 -> 10); records every t and batch seen.
    #[test]
    fn cfg_batches_uncond_first_and_respects_interval_edges() {
        let mut calls: Vec<(usize, f32, Vec<i64>)> = Vec::new();
        let mut model = |x: ArrayView4<f32>, t: ArrayView1<f32>, y: ArrayView1<i64>| -> Result<Array4<f32>> {
            calls.push((x.shape()[0], t[0], y.to_vec()));
            let mut v = Array4::zeros(x.raw_dim());
            for (b, mut img) in v.outer_iter_mut().enumerate() {
                img.fill(y[b] as f32);
            }
            Ok(v)
        };
        // 10 steps: t = 0, .1, ..., .9; guided only for .2 ..= .8 (7 steps) with interval [.1, .9].
        let c = cfg(SamplerKind::Euler, 10, 3.0, (0.1, 0.9));
        let noise = Array4::zeros((2, 1, 1, 1));
        let mut guided = Vec::new();
        let x = sample(&mut model, noise, &[1, 7], 10, &c, &mut |s| guided.push(s.guided)).unwrap();
        assert_eq!(calls.len(), 10);
        assert_eq!(calls[0].0, 4);
        assert_eq!(calls[0].2, vec![10, 10, 1, 7]);
        assert_eq!(
            guided,
            vec![false, false, true, true, true, true, true, true, true, false]
        );
        // guided v = u + 3(c - u) = 10 + 3(y - 10) = 3y - 20; unguided v = y; dt = 0.1 each
        for (k, y) in [1.0f32, 7.0].iter().enumerate() {
            let expect = 0.1 * (3.0 * y + 7.0 * (3.0 * y - 20.0));
            assert!(
                (x[[k, 0, 0, 0]] - expect).abs() < 1e-5,
                "{} vs {expect}",
                x[[k, 0, 0, 0]]
            );
        }
        let u = Array4::from_elem((1, 1, 1, 1), 2.0f32);
        let cnd = Array4::from_elem((1, 1, 1, 1), 5.0f32);
        assert_eq!(cfg_combine(u.view(), cnd.view(), 2.0)[[0, 0, 0, 0]], 8.0);
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(cfg(SamplerKind::Euler, 0, 1.0, (0.0, 1.0)).validate().is_err());
        assert!(cfg(SamplerKind::Euler, 1, 1.0, (0.9, 0.1)).validate().is_err());
        assert!(FlowSamplerConfig {
            shift: 0.0,
            ..cfg(SamplerKind::Euler, 1, 1.0, (0.0, 1.0))
        }
        .validate()
        .is_err());
        assert!("dpm++".parse::<SamplerKind>().is_err());
        assert_eq!("heun".parse::<SamplerKind>().unwrap(), SamplerKind::Heun);
    }
}

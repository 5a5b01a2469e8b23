//! The flow-time grid and update rules shared by the flow samplers ([`super::flow_dpm`], [`super::euler`],
//! [`super::heun`]; architecture notes section 4.1).
//!
//! Convention: rectified flow with `x_t = t*x0 + (1-t)*noise`, `t = 0` is noise and `t = 1` is data, the velocity
//! is `v = x0 - noise`, and sampling integrates `dx/dt = v` from `t = 0` to `t = 1`.
//!
//! Time grid ([`time_grid`]): `numpy.linspace(0, 1 - 1/N, N)` with `1.0` appended, each point then shifted by
//! `t / (t + (1-t)*shift)`. Computed in f64 exactly as numpy does (`i * step`, last point set to the stop value);
//! the network receives `t` as f32.

use super::Step;
use crate::error::Result;
use crate::generate::Time;
use ndarray::{Array4, ArrayView4};

/// One step of the flow grid: its start and end times and `dt = t_next - t` (as f32).
#[derive(Debug, Clone, Copy)]
pub struct GridStep {
    /// Time at the start of the step.
    pub time: Time,
    /// Time at its end.
    pub next: Time,
    /// `t_next - t`, rounded to f32 once.
    pub dt: f32,
}

/// Walks the `steps` intervals of [`time_grid`]`(steps, shift)` from `noise`: `update(x, step)` advances `x` over one
/// interval, then `on_step` reports it. The loop the flow samplers share; each brings its update rule.
pub fn integrate(
    noise: Array4<f32>,
    steps: usize,
    shift: f64,
    on_step: &mut dyn FnMut(Step),
    mut update: impl FnMut(&mut Array4<f32>, GridStep) -> Result<()>,
) -> Result<Array4<f32>> {
    let grid = time_grid(steps, shift);
    let mut x = noise;
    for i in 0..steps {
        let step = GridStep {
            time: Time::from_t(grid[i]),
            next: Time::from_t(grid[i + 1]),
            dt: (grid[i + 1] - grid[i]) as f32,
        };
        update(&mut x, step)?;
        on_step(Step {
            step: i + 1,
            steps,
            time: step.time,
        });
    }
    Ok(x)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}

//! `flow_dpm`, the official class-conditional sampler (`FlowDPMSolverSampler`): Euler for the first step, then
//! 2-step Adams-Bashforth `x += dt*(1.5*v_i - 0.5*v_{i-1})` with no correction for unequal steps, on the flow grid
//! ([`super::flow::time_grid`]). One network call per step; every reported FID uses it.

use super::flow::{ab2_update, euler_update, integrate};
use super::{GuidedVelocity, Sampler, Step};
use crate::error::Result;
use crate::generate::TimeAxis;
use ndarray::Array4;

/// See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct FlowDpm;

impl Sampler for FlowDpm {
    fn name(&self) -> &'static str {
        "flow_dpm"
    }
    fn time_axis(&self) -> TimeAxis {
        TimeAxis::FlowTime
    }
    fn sample(
        &self,
        model: &mut GuidedVelocity<'_>,
        noise: Array4<f32>,
        steps: usize,
        shift: f64,
        on_step: &mut dyn FnMut(Step),
    ) -> Result<Array4<f32>> {
        let mut v_prev: Option<Array4<f32>> = None;
        integrate(noise, steps, shift, on_step, |x, s| {
            let v = model(x.view(), s.time)?;
            match &v_prev {
                None => euler_update(x, v.view(), s.dt),
                Some(p) => ab2_update(x, v.view(), p.view(), s.dt),
            }
            v_prev = Some(v);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::samplers::testing::run;
    use crate::samplers::SamplerKind;

    #[test]
    fn ab2_by_hand() {
        // v = x + 1. Grid [0, .5, 1]; x0 = 0: v0 = 1, x1 = 0.5 (Euler); v1 = 1.5, x2 = 0.5 + 0.5*(1.5*1.5 - 0.5*1)
        let (x, times) = run(SamplerKind::FlowDpm, 2, 1.0, &[0.0], |x, _| x.mapv(|v| v + 1.0));
        assert!((x[[0, 0, 0, 0]] - 1.375).abs() < 1e-6);
        assert_eq!(times.iter().map(|t| t.t()).collect::<Vec<_>>(), vec![0.0, 0.5]);
        // 3 steps, grid [0, 1/3, 2/3, 1]: x1 = 1/3; v1 = 4/3, x2 = 1/3 + (2 - 0.5)/3 = 5/6;
        // v2 = 11/6, x3 = 5/6 + (1.5*11/6 - 0.5*4/3)/3 = 5/6 + 25/36 = 55/36
        let (x, _) = run(SamplerKind::FlowDpm, 3, 1.0, &[0.0], |x, _| x.mapv(|v| v + 1.0));
        assert!((x[[0, 0, 0, 0]] - 55.0 / 36.0).abs() < 1e-6);
    }
}

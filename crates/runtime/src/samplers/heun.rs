//! `heun`: Euler predictor to `t_next`, then `x += dt*(v(x,t) + v(x_pred,t_next))/2` on every step (the last step
//! evaluates the network at `t = 1`), on the flow grid ([`super::flow::time_grid`]). Two network calls per step.

use super::flow::{euler_update, heun_update, integrate};
use super::{GuidedVelocity, Sampler, Step};
use crate::error::Result;
use crate::generate::TimeAxis;
use ndarray::Array4;

/// See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Heun;

impl Sampler for Heun {
    fn name(&self) -> &'static str {
        "heun"
    }
    fn time_axis(&self) -> TimeAxis {
        TimeAxis::FlowTime
    }
    fn calls_per_step(&self) -> usize {
        2
    }
    fn sample(
        &self,
        model: &mut GuidedVelocity<'_>,
        noise: Array4<f32>,
        steps: usize,
        shift: f64,
        on_step: &mut dyn FnMut(Step),
    ) -> Result<Array4<f32>> {
        integrate(noise, steps, shift, on_step, |x, s| {
            let v = model(x.view(), s.time)?;
            let mut pred = x.clone();
            euler_update(&mut pred, v.view(), s.dt);
            let v2 = model(pred.view(), s.next)?;
            heun_update(x, v.view(), v2.view(), s.dt);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::samplers::testing::run;
    use crate::samplers::SamplerKind;

    #[test]
    fn heun_by_hand() {
        // v = x + 1, 1 step dt=1: v1 = 1, pred = 1, v2 = 2, x = 0 + 1*(1+2)/2 = 1.5; evaluated at t = 0 and 1.
        let (x, times) = run(SamplerKind::Heun, 1, 1.0, &[0.0], |x, _| x.mapv(|v| v + 1.0));
        assert!((x[[0, 0, 0, 0]] - 1.5).abs() < 1e-6);
        assert_eq!(times.iter().map(|t| t.t()).collect::<Vec<_>>(), vec![0.0, 1.0]);
    }
}

//! `euler`: `x += dt*v` on the flow grid ([`super::flow::time_grid`]). One network call per step.

use super::flow::{euler_update, integrate};
use super::{GuidedVelocity, Sampler, Step};
use crate::error::Result;
use crate::generate::TimeAxis;
use ndarray::Array4;

/// See the module docs.
#[derive(Debug, Clone, Copy)]
pub struct Euler;

impl Sampler for Euler {
    fn name(&self) -> &'static str {
        "euler"
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
        integrate(noise, steps, shift, on_step, |x, s| {
            let v = model(x.view(), s.time)?;
            euler_update(x, v.view(), s.dt);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::samplers::testing::run;
    use crate::samplers::SamplerKind;

    #[test]
    fn euler_by_hand() {
        // v = x + 1, 2 steps: x1 = 0.5, x2 = 0.5 + 0.5*1.5 = 1.25
        let (x, _) = run(SamplerKind::Euler, 2, 1.0, &[0.0], |x, _| x.mapv(|v| v + 1.0));
        assert!((x[[0, 0, 0, 0]] - 1.25).abs() < 1e-6);
    }
}

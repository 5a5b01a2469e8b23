//! The samplers: one module each, every one implementing [`Sampler`] over a guided-velocity closure, so that each
//! works for every model kind (the conditioning and CFG are the caller's: [`crate::generate`]).
//!
//! * [`flow_dpm`]: Euler first step, then 2-step Adams-Bashforth (the official class-conditional sampler);
//! * [`euler`], [`heun`]: the plain flow updates (Heun: two network calls per step);
//! * [`dpmpp_2m`]: DPM-Solver++ 2M of the official text-to-image pipeline;
//! * [`flow`]: the flow-time grid and update rules the flow samplers share.
//!
//! Adding a sampler: a module with a unit struct implementing [`Sampler`], and one row in [`SamplerKind`]
//! (its variant and the `sampler` match arm); `--sampler`, the metadata name, the Triton pipeline and the
//! accuracy report then take it.

pub mod dpmpp_2m;
pub mod euler;
pub mod flow;
pub mod flow_dpm;
pub mod heun;

use crate::error::{Result, RuntimeError};
use crate::generate::{Time, TimeAxis};
use ndarray::{Array4, ArrayView4};
use std::fmt;
use std::str::FromStr;

/// The guided velocity `v = x0 - noise` at `(x, time)` for the whole batch (CFG already applied); what a
/// [`Sampler`] integrates.
pub type GuidedVelocity<'a> = dyn FnMut(ArrayView4<f32>, Time) -> Result<Array4<f32>> + 'a;

/// Progress of one finished step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// 1-based index of the finished step.
    pub step: usize,
    /// Total steps.
    pub steps: usize,
    /// Time at the start of the step.
    pub time: Time,
}

/// An update rule over a time grid: from noise to data with a guided-velocity model.
pub trait Sampler: Sync {
    /// Canonical name (metadata, `--sampler`, reports).
    fn name(&self) -> &'static str;
    /// The time variable of its grid, on which its guidance interval is defined.
    fn time_axis(&self) -> TimeAxis;
    /// Fewest steps it can take.
    fn min_steps(&self) -> usize {
        1
    }
    /// Network evaluations per step.
    fn calls_per_step(&self) -> usize {
        1
    }
    /// Integrates from `noise` (`[K,C,H,W]`, pure noise) to data in `steps` steps with time shift `shift`;
    /// `on_step` runs after each step.
    fn sample(
        &self,
        model: &mut GuidedVelocity<'_>,
        noise: Array4<f32>,
        steps: usize,
        shift: f64,
        on_step: &mut dyn FnMut(Step),
    ) -> Result<Array4<f32>>;
}

/// The samplers by name: one row per [`Sampler`] implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum SamplerKind {
    /// Euler first step, then 2-step Adams-Bashforth (official class-conditional sampler).
    #[cfg_attr(feature = "clap", value(name = "flow_dpm"))]
    FlowDpm,
    /// Plain Euler.
    #[cfg_attr(feature = "clap", value(name = "euler"))]
    Euler,
    /// Heun (explicit trapezoid), two network calls per step.
    #[cfg_attr(feature = "clap", value(name = "heun"))]
    Heun,
    /// DPM-Solver++ 2M (official text-to-image sampler, at least 2 steps).
    #[cfg_attr(feature = "clap", value(name = "dpmpp_2m"))]
    Dpmpp2m,
}

impl SamplerKind {
    /// Every sampler.
    pub const ALL: [SamplerKind; 4] = [
        SamplerKind::FlowDpm,
        SamplerKind::Euler,
        SamplerKind::Heun,
        SamplerKind::Dpmpp2m,
    ];

    /// The implementation.
    pub fn sampler(self) -> &'static dyn Sampler {
        match self {
            SamplerKind::FlowDpm => &flow_dpm::FlowDpm,
            SamplerKind::Euler => &euler::Euler,
            SamplerKind::Heun => &heun::Heun,
            SamplerKind::Dpmpp2m => &dpmpp_2m::Dpmpp2m,
        }
    }

    /// Canonical name.
    pub fn as_str(self) -> &'static str {
        self.sampler().name()
    }

    /// Every canonical name, comma-separated (for messages).
    pub fn names() -> String {
        Self::ALL.map(|k| k.as_str()).join(", ")
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
        let wanted = s.replace('-', "_");
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == wanted)
            .ok_or_else(|| {
                RuntimeError::InvalidArgument(format!(
                    "unknown sampler '{s}': expected one of {}",
                    Self::names()
                ))
            })
    }
}

/// Checks the shape of a velocity against `x`.
pub(crate) fn check_velocity(v: &Array4<f32>, x: ArrayView4<f32>) -> Result<()> {
    if v.shape() != x.shape() {
        return Err(RuntimeError::Shape(format!(
            "model returned v of shape {:?} for x of shape {:?}",
            v.shape(),
            x.shape()
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testing {
    //! Runs a sampler on a closure `v(x, time)` with a scalar start.
    use super::*;

    /// Samples the `[1,1,1,n]` start `x0` with `kind`; returns the final x and the times of every call.
    pub fn run(
        kind: SamplerKind,
        steps: usize,
        shift: f64,
        x0: &[f32],
        v: impl Fn(&Array4<f32>, Time) -> Array4<f32>,
    ) -> (Array4<f32>, Vec<Time>) {
        let mut times = Vec::new();
        let mut model = |x: ArrayView4<f32>, t: Time| -> Result<Array4<f32>> {
            times.push(t);
            Ok(v(&x.to_owned(), t))
        };
        let noise = Array4::from_shape_vec((1, 1, 1, x0.len()), x0.to_vec()).unwrap();
        let x = kind
            .sampler()
            .sample(&mut model, noise, steps, shift, &mut |_| {})
            .unwrap();
        (x, times)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in SamplerKind::ALL {
            assert_eq!(k.as_str().parse::<SamplerKind>().unwrap(), k);
        }
        assert_eq!("flow-dpm".parse::<SamplerKind>().unwrap(), SamplerKind::FlowDpm);
        let e = "dpm++".parse::<SamplerKind>().unwrap_err().to_string();
        assert!(e.contains("flow_dpm, euler, heun, dpmpp_2m"), "{e}");
    }
}

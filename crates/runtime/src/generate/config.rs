//! [`SamplerConfig`]: the sampler settings of a generation, from a model's metadata and a request's overrides, and
//! the one place where they are checked (the CLI and the Triton pipeline both go through
//! [`SamplerConfig::with_overrides`]).

use super::time::TimeAxis;
use crate::error::{Result, RuntimeError};
use crate::samplers::SamplerKind;
use pixeldit_spec::SamplerDefaults;

/// Most steps a request may ask for.
pub const MAX_STEPS: usize = 1000;
/// Largest CFG weight a request may ask for (weights are `0..=MAX_CFG_SCALE`; 1 disables guidance).
pub const MAX_CFG_SCALE: f32 = 100.0;
/// Largest time shift a request may ask for (shifts are `(0, MAX_TIME_SHIFT]`).
pub const MAX_TIME_SHIFT: f64 = 100.0;

/// Complete sampler settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// The update rule.
    pub kind: SamplerKind,
    /// Steps N.
    pub steps: usize,
    /// CFG weight w (1: no guidance, and no negative branch is run).
    pub cfg_scale: f32,
    /// Guidance interval `(lo, hi)`: CFG applies for `lo < tau < hi` (strict), `tau` the time variable of the
    /// sampler's grid ([`crate::samplers::Sampler::time_axis`]: the flow time `t` for the flow samplers, the noise
    /// level sigma for `dpmpp_2m`, as the official samplers define it). Clamped to `[0, 1]`.
    pub interval: (f64, f64),
    /// Time shift s (> 0) of the grid.
    pub shift: f64,
}

/// What a request may change in a model's [`SamplerConfig`] (`None`: the model's default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SamplerOverrides {
    /// The sampler.
    pub kind: Option<SamplerKind>,
    /// Steps.
    pub steps: Option<usize>,
    /// CFG weight.
    pub cfg_scale: Option<f32>,
    /// Guidance interval, on the chosen sampler's time variable.
    pub interval: Option<(f64, f64)>,
    /// Time shift.
    pub shift: Option<f64>,
}

/// f32 -> f64 through the shortest decimal form, so that a metadata `0.1f32` compares as the `0.1` a user typed.
fn widen(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

fn invalid(m: String) -> RuntimeError {
    RuntimeError::InvalidArgument(m)
}

impl SamplerConfig {
    /// The settings in a model's metadata, checked.
    pub fn from_metadata(d: &SamplerDefaults) -> Result<Self> {
        SamplerConfig {
            kind: d.name.parse()?,
            steps: d.steps,
            cfg_scale: d.cfg_scale,
            interval: (widen(d.guidance_interval[0]), widen(d.guidance_interval[1])),
            shift: widen(d.time_shift),
        }
        .checked()
    }

    /// These settings with `o` applied, checked. A sampler whose grid runs on the other time variable
    /// ([`TimeAxis`]) takes the default interval mirrored (`(1 - hi, 1 - lo)`), unless `o` gives one.
    pub fn with_overrides(mut self, o: &SamplerOverrides) -> Result<Self> {
        if let Some(kind) = o.kind {
            if kind.sampler().time_axis() != self.kind.sampler().time_axis() {
                self.interval = (1.0 - self.interval.1, 1.0 - self.interval.0);
            }
            self.kind = kind;
        }
        self.steps = o.steps.unwrap_or(self.steps);
        self.cfg_scale = o.cfg_scale.unwrap_or(self.cfg_scale);
        self.interval = o.interval.unwrap_or(self.interval);
        self.shift = o.shift.unwrap_or(self.shift);
        self.checked()
    }

    /// Checks every field (the message names the field) and clamps the interval to `[0, 1]` as the official
    /// samplers do.
    pub fn checked(mut self) -> Result<Self> {
        self.validate()?;
        self.interval = (self.interval.0.max(0.0), self.interval.1.min(1.0));
        Ok(self)
    }

    /// Checks every field: steps in `min..=MAX_STEPS` of the sampler, a finite CFG weight in
    /// `0..=MAX_CFG_SCALE`, a finite time shift in `(0, MAX_TIME_SHIFT]`, a finite guidance interval with
    /// `lo <= hi`.
    pub fn validate(&self) -> Result<()> {
        let sampler = self.kind.sampler();
        let min = sampler.min_steps();
        if !(min..=MAX_STEPS).contains(&self.steps) {
            return Err(invalid(format!(
                "steps {}: expected {min}..={MAX_STEPS} for {}",
                self.steps,
                sampler.name()
            )));
        }
        check_finite("cfg scale", f64::from(self.cfg_scale))?;
        if !(0.0..=MAX_CFG_SCALE).contains(&self.cfg_scale) {
            return Err(invalid(format!(
                "cfg scale {} is out of range 0..={MAX_CFG_SCALE}",
                self.cfg_scale
            )));
        }
        check_finite("time shift", self.shift)?;
        if !(self.shift > 0.0 && self.shift <= MAX_TIME_SHIFT) {
            return Err(invalid(format!(
                "time shift {} is out of range: it must be > 0 and <= {MAX_TIME_SHIFT}",
                self.shift
            )));
        }
        let (lo, hi) = self.interval;
        check_finite("guidance interval lo", lo)?;
        check_finite("guidance interval hi", hi)?;
        if lo > hi {
            return Err(invalid(format!(
                "guidance interval [{lo}, {hi}] must have lo <= hi"
            )));
        }
        Ok(())
    }

    /// The time variable of the guidance interval.
    pub fn interval_axis(&self) -> TimeAxis {
        self.kind.sampler().time_axis()
    }

    /// Network evaluations of one sample (each of batch K, or 2K when guided).
    pub fn network_calls(&self) -> usize {
        self.steps * self.kind.sampler().calls_per_step()
    }
}

/// `Ok` if `v` is finite, else an error naming `field` and saying "not finite".
fn check_finite(field: &str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(invalid(format!("{field} {v} is not finite")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(name: &str) -> SamplerDefaults {
        SamplerDefaults {
            name: name.into(),
            steps: 10,
            cfg_scale: 2.0,
            guidance_interval: [0.1, 0.9],
            time_shift: 1.0,
        }
    }

    #[test]
    fn metadata_floats_compare_as_their_decimal_spelling() {
        let c = SamplerConfig::from_metadata(&defaults("flow_dpm")).unwrap();
        assert_eq!(c.interval, (0.1, 0.9));
        assert_eq!(c.kind, SamplerKind::FlowDpm);
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let base = SamplerConfig::from_metadata(&defaults("flow_dpm")).unwrap();
        let c = base
            .clone()
            .with_overrides(&SamplerOverrides {
                kind: Some(SamplerKind::Heun),
                steps: Some(3),
                cfg_scale: Some(1.0),
                interval: Some((-1.0, 2.0)),
                shift: Some(2.0),
            })
            .unwrap();
        // The interval is clamped to [0, 1].
        assert_eq!(
            (c.kind, c.steps, c.cfg_scale, c.interval, c.shift),
            (SamplerKind::Heun, 3, 1.0, (0.0, 1.0), 2.0)
        );
        // Switching to a sampler on the other time variable mirrors the default interval.
        let d = base
            .clone()
            .with_overrides(&SamplerOverrides {
                kind: Some(SamplerKind::Dpmpp2m),
                ..Default::default()
            })
            .unwrap();
        assert!((d.interval.0 - 0.1).abs() < 1e-12 && (d.interval.1 - 0.9).abs() < 1e-12);
        let bad = |o: SamplerOverrides| base.clone().with_overrides(&o).unwrap_err().to_string();
        let e = bad(SamplerOverrides {
            cfg_scale: Some(f32::NAN),
            ..Default::default()
        });
        assert!(e.contains("cfg scale NaN is not finite"), "{e}");
        let e = bad(SamplerOverrides {
            cfg_scale: Some(1e30),
            ..Default::default()
        });
        assert!(e.contains("cfg scale") && e.contains("out of range"), "{e}");
        let e = bad(SamplerOverrides {
            shift: Some(f64::INFINITY),
            ..Default::default()
        });
        assert!(e.contains("time shift inf is not finite"), "{e}");
        let e = bad(SamplerOverrides {
            shift: Some(1e30),
            ..Default::default()
        });
        assert!(e.contains("time shift"), "{e}");
        let e = bad(SamplerOverrides {
            shift: Some(0.0),
            ..Default::default()
        });
        assert!(e.contains("time shift"), "{e}");
        let e = bad(SamplerOverrides {
            interval: Some((f64::NAN, 1.0)),
            ..Default::default()
        });
        assert!(e.contains("guidance interval lo NaN is not finite"), "{e}");
        let e = bad(SamplerOverrides {
            interval: Some((0.9, 0.1)),
            ..Default::default()
        });
        assert!(e.contains("lo <= hi"), "{e}");
        let e = bad(SamplerOverrides {
            steps: Some(0),
            ..Default::default()
        });
        assert!(e.contains("steps 0"), "{e}");
        let e = bad(SamplerOverrides {
            steps: Some(MAX_STEPS + 1),
            ..Default::default()
        });
        assert!(e.contains("steps 1001"), "{e}");
        let e = bad(SamplerOverrides {
            kind: Some(SamplerKind::Dpmpp2m),
            steps: Some(1),
            ..Default::default()
        });
        assert!(e.contains("steps 1: expected 2..=1000 for dpmpp_2m"), "{e}");
    }
}

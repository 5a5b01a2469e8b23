//! The generation API: one entry point, [`generate`], for every model kind and sampler.
//!
//! A [`Request`] holds the [`Conditions`] (class labels, or text embeddings with their negative), the
//! [`SamplerConfig`] (sampler, steps, CFG, interval, shift; from the model's metadata and
//! [`SamplerOverrides`], checked in one place), the image shape and the [`Noise`]. [`generate`] runs it on any
//! [`VelocityModel`] (a [`crate::Denoiser`], or a closure in tests and calibration): it applies classifier-free
//! guidance and hands a guided-velocity closure to the chosen [`crate::samplers::Sampler`].
//!
//! One time convention ([`Time`]): flow time `t` in `[0, 1]` (0 = noise, 1 = data), velocity `v = x0 - noise`.
//! The denoiser converts to what each exported graph takes.
//!
//! CFG: when `w != 1`, there is a negative (the null class; the negative prompt's embeddings) and the time is
//! inside the guidance interval (strict, on the sampler's time variable), one forward runs on the batch
//! `[negative x K, condition x K]` and `v = u + w (c - u)`; otherwise the condition branch alone gives `v`. As
//! in the official pipelines, class-conditional runs evaluate the batch of 2K at every forward when `w != 1` (the
//! combination still applies only inside the interval), text-to-image runs only inside the interval
//! ([`Conditions::negative_at_every_forward`]).

mod conditions;
mod config;
mod time;

pub use conditions::{ConditionRows, Conditions};
pub use config::{SamplerConfig, SamplerOverrides, MAX_CFG_SCALE, MAX_STEPS, MAX_TIME_SHIFT};
pub use time::{Time, TimeAxis};

use crate::denoiser::CondRows;
use crate::error::{Result, RuntimeError};
use crate::io;
use crate::samplers::{check_velocity, Step};
use ndarray::{concatenate, s, Array4, ArrayView4, Axis};

/// Largest position in a seed's noise stream a request may start at (the stream is drawn from its start).
pub const MAX_NOISE_INDEX: u64 = 1024;

/// A model the samplers can integrate: the velocity `v = x0 - noise` at `time` for a batch of condition rows.
pub trait VelocityModel {
    /// Called by [`generate`] before the first of the request's `forwards` forwards (a model with per-request
    /// state, such as [`crate::patch_cache::CachedDenoiser`], resets it here).
    fn begin(&mut self, _forwards: usize) {}
    /// One forward: `x [B,C,H,W]` at `time` with `cond` (B rows) -> `v [B,C,H,W]`.
    fn velocity(&mut self, x: ArrayView4<f32>, time: Time, cond: CondRows<'_>) -> Result<Array4<f32>>;
}

impl<F> VelocityModel for F
where
    F: FnMut(ArrayView4<f32>, Time, CondRows<'_>) -> Result<Array4<f32>>,
{
    fn velocity(&mut self, x: ArrayView4<f32>, time: Time, cond: CondRows<'_>) -> Result<Array4<f32>> {
        self(x, time, cond)
    }
}

/// `[C, H, W]` of the generated images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// Channels.
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
}

impl ImageShape {
    /// The exported size of a model.
    pub fn of(meta: &pixeldit_spec::ModelMetadata) -> Self {
        ImageShape {
            channels: meta.config.in_channels,
            height: meta.height,
            width: meta.width,
        }
    }

    /// `[k, C, H, W]`.
    pub fn batch(&self, k: usize) -> [usize; 4] {
        [k, self.channels, self.height, self.width]
    }
}

/// The initial noise of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Noise {
    /// Images `first_index..first_index + K` of the seed's stream ([`io::seeded_noise`]): `pixeldit-run --seed S`
    /// draws images 0..K; a Triton pipeline request draws its `index`.
    Seeded {
        /// The seed.
        seed: u64,
        /// Position of the first image in the stream (at most [`MAX_NOISE_INDEX`]).
        first_index: u64,
    },
    /// Given noise `[K, C, H, W]`.
    Given(Array4<f32>),
}

impl Noise {
    /// Images `0..K` of the stream of `seed`.
    pub fn seeded(seed: u64) -> Self {
        Noise::Seeded { seed, first_index: 0 }
    }

    /// Checks what can be checked before drawing: a seeded stream's first index is at most [`MAX_NOISE_INDEX`].
    pub fn check(&self) -> Result<()> {
        match self {
            Noise::Seeded { first_index, .. } if *first_index > MAX_NOISE_INDEX => {
                Err(RuntimeError::InvalidArgument(format!(
                    "noise index {first_index} is out of range 0..={MAX_NOISE_INDEX}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The `[K, C, H, W]` noise for `k` images of `shape`.
    pub fn draw(&self, k: usize, shape: ImageShape) -> Result<Array4<f32>> {
        self.check()?;
        let want = shape.batch(k);
        match self {
            Noise::Seeded { seed, first_index } => {
                let first = *first_index as usize;
                let mut stream_shape = want;
                stream_shape[0] += first;
                let stream = io::seeded_noise(*seed, stream_shape);
                Ok(if first == 0 {
                    stream
                } else {
                    stream.slice(s![first.., .., .., ..]).to_owned()
                })
            }
            Noise::Given(a) if a.shape() == want => Ok(a.clone()),
            Noise::Given(a) => Err(RuntimeError::Shape(format!(
                "noise of shape {:?} for {k} images of {:?}, expected {want:?}",
                a.shape(),
                [shape.channels, shape.height, shape.width]
            ))),
        }
    }
}

/// One generation: K images.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// What each image is conditioned on (K = its count).
    pub conditions: Conditions,
    /// The sampler settings.
    pub sampler: SamplerConfig,
    /// Image shape.
    pub image: ImageShape,
    /// Initial noise.
    pub noise: Noise,
}

/// What [`generate`] returns.
#[derive(Debug, Clone)]
pub struct Generated {
    /// `[K, C, H, W]` final samples (data range [-1, 1], not clipped).
    pub x: Array4<f32>,
    /// Network forwards run.
    pub forwards: usize,
    /// Forwards whose velocity was guided (CFG combination applied).
    pub guided_forwards: usize,
    /// Rows over all forwards (images x forwards, doubled where guided).
    pub rows: usize,
}

/// Runs `req` on `model`; `on_step` runs after each sampler step.
pub fn generate(
    model: &mut dyn VelocityModel,
    req: &Request,
    on_step: &mut dyn FnMut(Step),
) -> Result<Generated> {
    let cfg = &req.sampler;
    cfg.validate()?;
    let k = req.conditions.count();
    if k == 0 {
        return Err(RuntimeError::InvalidArgument("no images requested".into()));
    }
    let noise = req.noise.draw(k, req.image)?;
    model.begin(cfg.steps * cfg.kind.sampler().calls_per_step());
    let guidance = cfg.cfg_scale != 1.0;
    if guidance && !req.conditions.has_negative() {
        return Err(RuntimeError::InvalidArgument(format!(
            "classifier-free guidance (cfg scale {}) needs negative-prompt embeddings (or cfg 1)",
            cfg.cfg_scale
        )));
    }
    let rows = req.conditions.rows();
    let guided_rows = match guidance {
        true => req.conditions.guided_rows()?,
        false => None,
    };
    let axis = cfg.interval_axis();
    let (mut forwards, mut guided_forwards, mut total_rows) = (0, 0, 0);
    let negative_everywhere = req.conditions.negative_at_every_forward();
    let mut guided_velocity = |x: ArrayView4<f32>, time: Time| -> Result<Array4<f32>> {
        forwards += 1;
        let tau = time.on(axis);
        let active = cfg.interval.0 < tau && tau < cfg.interval.1;
        match guided_rows.as_ref().filter(|_| active || negative_everywhere) {
            Some(both) => {
                total_rows += 2 * k;
                let x2 = concatenate(Axis(0), &[x, x]).expect("same shapes");
                let v2 = model.velocity(x2.view(), time, both.view())?;
                check_velocity(&v2, x2.view())?;
                let (u, c) = (v2.slice(s![..k, .., .., ..]), v2.slice(s![k.., .., .., ..]));
                if !active {
                    return Ok(c.to_owned());
                }
                guided_forwards += 1;
                Ok(cfg_combine(u, c, cfg.cfg_scale))
            }
            None => {
                total_rows += k;
                let v = model.velocity(x, time, rows.view())?;
                check_velocity(&v, x)?;
                Ok(v)
            }
        }
    };
    let x = cfg
        .kind
        .sampler()
        .sample(&mut guided_velocity, noise, cfg.steps, cfg.shift, on_step)?;
    Ok(Generated {
        x,
        forwards,
        guided_forwards,
        rows: total_rows,
    })
}

/// `u + w*(c - u)` element-wise.
pub fn cfg_combine(uncond: ArrayView4<f32>, cond: ArrayView4<f32>, w: f32) -> Array4<f32> {
    let mut out = cond.to_owned();
    out.zip_mut_with(&uncond, |c, &u| *c = u + w * (*c - u));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samplers::SamplerKind;
    use ndarray::Array3;
    use std::cell::RefCell;

    fn config(kind: SamplerKind, steps: usize, w: f32, interval: (f64, f64), shift: f64) -> SamplerConfig {
        SamplerConfig {
            kind,
            steps,
            cfg_scale: w,
            interval,
            shift,
        }
    }

    fn request(conditions: Conditions, sampler: SamplerConfig) -> Request {
        Request {
            noise: Noise::Given(Array4::zeros((conditions.count(), 1, 1, 1))),
            conditions,
            sampler,
            image: ImageShape {
                channels: 1,
                height: 1,
                width: 1,
            },
        }
    }

    /// Counts the forwards `begin` announces and the forwards that run.
    struct Counting {
        announced: Option<usize>,
        ran: usize,
    }

    impl VelocityModel for Counting {
        fn begin(&mut self, forwards: usize) {
            self.announced = Some(forwards);
            self.ran = 0;
        }
        fn velocity(&mut self, x: ArrayView4<f32>, _: Time, _: CondRows<'_>) -> Result<Array4<f32>> {
            self.ran += 1;
            Ok(Array4::zeros(x.raw_dim()))
        }
    }

    /// The patch cache's front-loaded schedule is planned from the count `begin` announces.
    #[test]
    fn begin_announces_the_forwards_every_sampler_runs() {
        for kind in SamplerKind::ALL {
            for steps in [2, 3, 7] {
                let mut model = Counting {
                    announced: None,
                    ran: 0,
                };
                let req = request(
                    Conditions::classes(vec![1], 10),
                    config(kind, steps, 1.0, (0.0, 1.0), 1.0),
                );
                let out = generate(&mut model, &req, &mut |_| {}).unwrap();
                assert_eq!(model.announced, Some(model.ran), "{kind} {steps} steps");
                assert_eq!(out.forwards, model.ran);
            }
        }
    }

    /// v = label as float (null class 10 -> 10); records every batch and its labels.
    #[test]
    fn class_cfg_batches_uncond_first_and_respects_interval_edges() {
        let calls: RefCell<Vec<(usize, f64, Vec<i64>)>> = RefCell::new(Vec::new());
        let mut model = |x: ArrayView4<f32>, t: Time, c: CondRows<'_>| -> Result<Array4<f32>> {
            let CondRows::Class(y) = c else {
                panic!("class rows")
            };
            calls.borrow_mut().push((x.shape()[0], t.t(), y.to_vec()));
            let mut v = Array4::zeros(x.raw_dim());
            for (b, mut img) in v.outer_iter_mut().enumerate() {
                img.fill(y[b] as f32);
            }
            Ok(v)
        };
        // 10 steps: t = 0, .1, ..., .9; guided only for .2 ..= .8 (7 steps) with interval [.1, .9].
        let req = request(
            Conditions::classes(vec![1, 7], 10),
            config(SamplerKind::Euler, 10, 3.0, (0.1, 0.9), 1.0),
        );
        let out = generate(&mut model, &req, &mut |_| {}).unwrap();
        // Class-conditional: the uncond half runs at every forward (official), the combination only inside.
        assert_eq!((out.forwards, out.guided_forwards, out.rows), (10, 7, 40));
        assert!(calls
            .borrow()
            .iter()
            .all(|c| c.0 == 4 && c.2 == vec![10, 10, 1, 7]));
        // guided v = u + 3(c - u) = 10 + 3(y - 10) = 3y - 20; unguided v = y; dt = 0.1 each
        for (k, y) in [1.0f32, 7.0].iter().enumerate() {
            let expect = 0.1 * (3.0 * y + 7.0 * (3.0 * y - 20.0));
            assert!(
                (out.x[[k, 0, 0, 0]] - expect).abs() < 1e-5,
                "{} vs {expect}",
                out.x[[k, 0, 0, 0]]
            );
        }
        // cfg 1: never the negative branch.
        calls.borrow_mut().clear();
        let req = request(
            Conditions::classes(vec![1, 7], 10),
            config(SamplerKind::FlowDpm, 4, 1.0, (0.0, 1.0), 1.0),
        );
        let out = generate(&mut model, &req, &mut |_| {}).unwrap();
        assert_eq!((out.forwards, out.guided_forwards, out.rows), (4, 0, 8));
        assert!(calls.borrow().iter().all(|c| c.0 == 2));
    }

    /// v = the text value (prompt 3, negative 1): guided v = 1 + w(3 - 1); on sigma, the network sees 1000 sigma.
    #[test]
    fn text_cfg_batches_negative_first_and_respects_the_interval_on_sigma() {
        let calls: RefCell<Vec<(usize, f64, Vec<f32>)>> = RefCell::new(Vec::new());
        let mut model = |x: ArrayView4<f32>, t: Time, c: CondRows<'_>| -> Result<Array4<f32>> {
            let CondRows::Text(text) = c else {
                panic!("text rows")
            };
            calls
                .borrow_mut()
                .push((x.shape()[0], t.sigma(), text.iter().copied().collect()));
            let mut v = Array4::zeros(x.raw_dim());
            for (b, mut img) in v.outer_iter_mut().enumerate() {
                img.fill(text[[b, 0, 0]]);
            }
            Ok(v)
        };
        let (cond, uncond) = (
            Array3::from_elem((1, 1, 1), 3.0f32),
            Array3::from_elem((1, 1, 1), 1.0f32),
        );
        // sigmas 0.99975, 0.8, 0.0: the first evaluation is outside (0, 0.99), the second inside.
        let req = request(
            Conditions::text(cond.clone(), Some(uncond)),
            config(SamplerKind::Dpmpp2m, 2, 2.0, (0.0, 0.99), 4.0),
        );
        let out = generate(&mut model, &req, &mut |_| {}).unwrap();
        assert_eq!((out.forwards, out.guided_forwards, out.rows), (2, 1, 3));
        {
            let calls = calls.borrow();
            assert_eq!((calls[0].0, calls[0].2.clone()), (1, vec![3.0]));
            assert!((calls[0].1 - 0.9997498).abs() < 1e-6);
            assert_eq!((calls[1].0, calls[1].2.clone()), (2, vec![1.0, 3.0]));
            assert!((calls[1].1 - 0.7996798).abs() < 1e-5);
        }
        // Missing negative embeddings with CFG on is an error; cfg 1 needs none.
        let e = generate(
            &mut model,
            &request(
                Conditions::text(cond.clone(), None),
                config(SamplerKind::Dpmpp2m, 2, 2.0, (0.0, 1.0), 4.0),
            ),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("negative-prompt embeddings"), "{e}");
        let ok = generate(
            &mut model,
            &request(
                Conditions::text(cond, None),
                config(SamplerKind::Dpmpp2m, 2, 1.0, (0.0, 1.0), 4.0),
            ),
            &mut |_| {},
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn seeded_noise_at_an_index_is_that_image_of_the_stream() {
        let shape = ImageShape {
            channels: 3,
            height: 4,
            width: 2,
        };
        let all = Noise::seeded(5).draw(3, shape).unwrap();
        let third = Noise::Seeded {
            seed: 5,
            first_index: 2,
        }
        .draw(1, shape)
        .unwrap();
        assert_eq!(all.slice(s![2.., .., .., ..]), third);
        let e = Noise::Seeded {
            seed: 5,
            first_index: MAX_NOISE_INDEX + 1,
        }
        .draw(1, shape)
        .unwrap_err();
        assert!(e.to_string().contains("noise index 1025"), "{e}");
        assert!(Noise::Given(all).draw(2, shape).is_err());
    }

    #[test]
    fn cfg_combine_by_hand() {
        let u = Array4::from_elem((1, 1, 1, 1), 2.0f32);
        let c = Array4::from_elem((1, 1, 1, 1), 5.0f32);
        assert_eq!(cfg_combine(u.view(), c.view(), 2.0)[[0, 0, 0, 0]], 8.0);
    }
}

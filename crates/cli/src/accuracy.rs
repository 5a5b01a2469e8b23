//! `--accuracy-report`: a variant against the fp32 model of the same weights, both run by the runtime on the CPU:
//!
//! * **v error at fixed t**: for each t, the input is `x_t = t * x0 + (1 - t) * noise` with `x0` the fp32 model's
//!   own sample (clipped to [-1, 1]) and `noise` its starting noise; the error is `||v_q - v_32|| / ||v_32||`
//!   over all images (conditional forward, no CFG).
//! * **full samples**: both models run the sampler from the same noise; PSNR over the [-1, 1] data range
//!   (peak-to-peak 2) per image, `10 log10(4 / MSE)`, plus the relative L2 of the whole batch.
//!
//! Text-to-image models run DPM-Solver++ with CFG instead, on the text conditions of [`EvalConfig::text`] (synthetic
//! embeddings by default, drawn apart from the calibration's), and `t` maps to `sigma = 1 - t` (input 1000 sigma).
//!
//! Evaluation seeds default to 100, 101, apart from the calibration seeds (0, 1). The default times stop at 0.95:
//! the sampler never evaluates the network at t = 1 (its last step starts at 1 - 1/N), and there `v` is
//! ill-conditioned (even fp16 differs by ~1e-2 on the `digits` model).

use crate::calibrate::{class_run, text_run, TextCalibration, SYNTHETIC_EVAL_SEED};
use anyhow::{bail, Context, Result};
use ndarray::{Array1, Array3, Array4, ArrayView1, ArrayView3, ArrayView4};
use pixeldit_exporter::ExportOptions;
use pixeldit_runtime::samplers::dpm_solver::{self, DpmSolverConfig};
use pixeldit_runtime::samplers::flow;
use pixeldit_runtime::{backend, io, model, BackendKind, Denoiser, Device};
use pixeldit_spec::ModelKind;
use serde::Serialize;
use std::path::Path;

/// What to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalConfig {
    /// Classes (empty: up to 4 spread over the model's classes).
    pub classes: Vec<i64>,
    /// Noise seeds.
    pub seeds: Vec<u64>,
    /// Sampler steps (`None`: the model's default).
    pub steps: Option<usize>,
    /// Times at which `v` is compared.
    pub t_points: Vec<f32>,
    /// Backend for both models.
    pub backend: BackendKind,
    /// Text conditions of text-to-image models.
    pub text: TextCalibration,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            classes: Vec::new(),
            seeds: vec![100, 101],
            steps: None,
            t_points: vec![0.0, 0.25, 0.5, 0.75, 0.95],
            backend: BackendKind::Auto,
            text: TextCalibration::default(),
        }
    }
}

/// Relative error of `v` at one t.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimeError {
    /// Time (0 = noise, 1 = data).
    pub t: f32,
    /// `||v_q - v_32|| / ||v_32||`.
    pub rel_l2: f64,
    /// max |v_q - v_32|.
    pub max_abs: f32,
}

/// The accuracy of one variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracyReport {
    /// Precision of the variant (from its metadata).
    pub precision: String,
    /// The variant's file.
    pub model: String,
    /// The fp32 reference file.
    pub reference: String,
    /// Backend that ran the variant.
    pub backend: String,
    /// Classes (class-conditional models).
    pub classes: Vec<i64>,
    /// Text conditions (text-to-image models).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Sampler steps.
    pub steps: usize,
    /// CFG scale.
    pub cfg_scale: f32,
    /// Error of `v` per t.
    pub v_error: Vec<TimeError>,
    /// PSNR per image (dB, `null` when identical), seed-major then class.
    pub sample_psnr_db: Vec<f64>,
    /// PSNR of the pooled MSE of all images (dB).
    pub sample_psnr_pooled_db: f64,
    /// Lowest per-image PSNR (dB).
    pub sample_psnr_min_db: f64,
    /// Relative L2 of all final samples.
    pub sample_rel_l2: f64,
}

impl AccuracyReport {
    /// One line per report: precision, v errors per t, PSNR.
    pub fn line(&self) -> String {
        let v: Vec<String> = self
            .v_error
            .iter()
            .map(|e| format!("t={:.2}: {:.2e}", e.t, e.rel_l2))
            .collect();
        format!(
            "{}: v rel. error {} | samples: PSNR {:.1} dB (min {:.1}), rel. L2 {:.2e} ({} images, {} steps, {})",
            self.precision,
            v.join(", "),
            self.sample_psnr_pooled_db,
            self.sample_psnr_min_db,
            self.sample_rel_l2,
            self.sample_psnr_db.len(),
            self.steps,
            self.backend
        )
    }
}

/// `10 log10(4 / mse)` (data range [-1, 1]); infinite for identical images.
pub fn psnr(mse: f64) -> f64 {
    if mse <= 0.0 {
        f64::INFINITY
    } else {
        10.0 * (4.0 / mse).log10()
    }
}

/// The conditions of an evaluation: classes, or text embeddings with the negative for CFG.
enum Conditions {
    Class {
        classes: Vec<i64>,
        null: i64,
    },
    Text {
        cond: Array3<f32>,
        uncond: Option<Array3<f32>>,
    },
}

impl Conditions {
    fn count(&self) -> usize {
        match self {
            Conditions::Class { classes, .. } => classes.len(),
            Conditions::Text { cond, .. } => cond.shape()[0],
        }
    }

    /// The conditional velocity at flow time `t` (0 = noise, 1 = data).
    fn velocity(&self, d: &mut Denoiser, x: ArrayView4<f32>, t: f32) -> Result<Array4<f32>> {
        let k = self.count();
        Ok(match self {
            Conditions::Class { classes, .. } => {
                let y = Array1::from(classes.clone());
                d.class_velocity(x, Array1::from_elem(k, t).view(), y.view())?
            }
            Conditions::Text { cond, .. } => {
                d.text_velocity(x, Array1::from_elem(k, 1000.0 * (1.0 - t)).view(), cond.view())?
            }
        })
    }
}

/// The sampler of a model: flow for class-conditional, DPM-Solver++ for text-to-image.
enum Sampler {
    Flow(flow::FlowSamplerConfig),
    Dpm(DpmSolverConfig),
}

impl Sampler {
    fn run(&self, d: &mut Denoiser, noise: Array4<f32>, c: &Conditions) -> Result<Array4<f32>> {
        Ok(match (self, c) {
            (Sampler::Flow(s), Conditions::Class { classes, null }) => {
                let mut m =
                    |x: ArrayView4<f32>, t: ArrayView1<f32>, y: ArrayView1<i64>| d.class_velocity(x, t, y);
                flow::sample(&mut m, noise, classes, *null, s, &mut |_| {})?
            }
            (Sampler::Dpm(s), Conditions::Text { cond, uncond }) => {
                let mut m =
                    |x: ArrayView4<f32>, t: ArrayView1<f32>, txt: ArrayView3<f32>| d.text_velocity(x, t, txt);
                dpm_solver::sample(
                    &mut m,
                    noise,
                    cond.view(),
                    uncond.as_ref().map(|u| u.view()),
                    s,
                    &mut |_| {},
                )?
            }
            _ => unreachable!("sampler and conditions come from the same model kind"),
        })
    }
}

/// Compares `variant` with the fp32 `reference` (same model, same size).
pub fn evaluate(reference: &Path, variant: &Path, cfg: &EvalConfig) -> Result<AccuracyReport> {
    let meta = model::read_metadata(reference)?;
    let vmeta = model::read_metadata(variant)?;
    let opts = crate::load_options()
        .with_backend(cfg.backend)
        .with_device(Device::Cpu);
    let r = backend::load(reference, &opts)?;
    let q = backend::load(variant, &opts)?;
    let backend_name = q.candidate.to_string();
    let mut r = Denoiser::new(r.backend, &meta);
    let mut q = Denoiser::new(q.backend, &vmeta);
    let (sampler, conditions, prompts, steps, cfg_scale) = match meta.config.kind {
        ModelKind::C2i => {
            let (classes, scfg) = class_run(&meta, &cfg.classes, 4, cfg.steps, usize::MAX, None)?;
            let c = Conditions::Class {
                classes,
                null: meta.config.null_class(),
            };
            let (steps, w) = (scfg.steps, scfg.cfg_scale);
            (Sampler::Flow(scfg), c, Vec::new(), steps, w)
        }
        ModelKind::T2i => {
            if !cfg.classes.is_empty() {
                bail!(
                    "{} is a text-to-image model: evaluation classes do not apply",
                    meta.config.name
                );
            }
            let (tc, scfg) = text_run(&meta, &cfg.text, SYNTHETIC_EVAL_SEED, cfg.steps, usize::MAX, None)?;
            let c = Conditions::Text {
                cond: tc.cond,
                uncond: tc.uncond,
            };
            (
                Sampler::Dpm(scfg.clone()),
                c,
                tc.labels,
                scfg.steps,
                scfg.cfg_scale,
            )
        }
    };
    let shape = [conditions.count(), 3, meta.height, meta.width];

    let mut t_acc = vec![(0.0f64, 0.0f64, 0.0f32); cfg.t_points.len()];
    let mut psnrs = Vec::new();
    let (mut se_all, mut ref_all, mut n_all) = (0.0f64, 0.0f64, 0usize);
    for &seed in &cfg.seeds {
        let noise = io::seeded_noise(seed, shape);
        let xr = sampler
            .run(&mut r, noise.clone(), &conditions)?
            .mapv(|v| v.clamp(-1.0, 1.0));
        let xq = sampler
            .run(&mut q, noise.clone(), &conditions)?
            .mapv(|v| v.clamp(-1.0, 1.0));
        for k in 0..conditions.count() {
            let (a, b) = (
                xr.index_axis(ndarray::Axis(0), k),
                xq.index_axis(ndarray::Axis(0), k),
            );
            let se: f64 = a
                .iter()
                .zip(b.iter())
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            psnrs.push(psnr(se / a.len() as f64));
            se_all += se;
            ref_all += a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
            n_all += a.len();
        }
        for (i, &t) in cfg.t_points.iter().enumerate() {
            let xt = &xr * t + &noise * (1.0 - t);
            let vr = conditions.velocity(&mut r, xt.view(), t)?;
            let vq = conditions.velocity(&mut q, xt.view(), t)?;
            let acc = &mut t_acc[i];
            for (a, b) in vr.iter().zip(vq.iter()) {
                acc.0 += ((a - b) as f64).powi(2);
                acc.1 += (*a as f64).powi(2);
                acc.2 = acc.2.max((a - b).abs());
            }
        }
    }
    let pooled = psnr(se_all / n_all.max(1) as f64);
    let classes = match conditions {
        Conditions::Class { classes, .. } => classes,
        Conditions::Text { .. } => Vec::new(),
    };
    Ok(AccuracyReport {
        precision: vmeta.precision.to_string(),
        model: variant.display().to_string(),
        reference: reference.display().to_string(),
        backend: backend_name,
        classes,
        prompts,
        seeds: cfg.seeds.clone(),
        steps,
        cfg_scale,
        v_error: cfg
            .t_points
            .iter()
            .zip(&t_acc)
            .map(|(&t, &(se, rs, mx))| TimeError {
                t,
                rel_l2: (se / rs.max(f64::MIN_POSITIVE)).sqrt(),
                max_abs: mx,
            })
            .collect(),
        sample_psnr_min_db: psnrs.iter().copied().fold(f64::INFINITY, f64::min),
        sample_psnr_db: psnrs,
        sample_psnr_pooled_db: pooled,
        sample_rel_l2: (se_all / ref_all.max(f64::MIN_POSITIVE)).sqrt(),
    })
}

/// Compares the exported model at `variant` with an fp32 export of the same options (written to a temporary
/// directory) on the CPU.
pub fn accuracy_report(opts: &ExportOptions, variant: &Path, eval: &EvalConfig) -> Result<AccuracyReport> {
    let f = crate::variant::fp32(opts);
    let dir = tempfile::Builder::new()
        .prefix("pixeldit-accuracy.")
        .tempdir()
        .context("creating a temporary directory for the fp32 reference")?;
    let reference = dir.path().join("fp32.onnx");
    pixeldit_exporter::export_to_file(&f, &reference)?;
    let mut r = evaluate(&reference, variant, eval)?;
    r.reference = format!("fp32 export of the same weights ({})", f.config.name);
    Ok(r)
}

//! `--accuracy-report`: a variant against the fp32 model of the same weights, both run by the runtime on the CPU:
//!
//! * **v error at fixed t**: for each t, the input is `x_t = t * x0 + (1 - t) * noise` with `x0` the fp32 model's
//!   own sample (clipped to [-1, 1]) and `noise` its starting noise; the error is `||v_q - v_32|| / ||v_32||`
//!   over all images (conditional forward, no CFG).
//! * **full samples**: both models run the sampler from the same noise; PSNR over the [-1, 1] data range
//!   (peak-to-peak 2) per image, `10 log10(4 / MSE)`, plus the relative L2 of the whole batch.
//!
//! Both go through the runtime's generation API with the model's sampler; text-to-image models run on the text
//! conditions of [`EvalConfig::text`] (synthetic embeddings by default, drawn apart from the calibration's). `t` is
//! the flow time of the generation API (`sigma = 1 - t` for text-to-image models).
//!
//! Evaluation seeds default to 100, 101, apart from the calibration seeds (0, 1). The default times stop at 0.95:
//! the sampler never evaluates the network at t = 1 (its last step starts at 1 - 1/N), and there `v` is
//! ill-conditioned (even fp16 differs by ~1e-2 on the `digits` model).

use crate::calibrate::{sampling_run, TextCalibration, SYNTHETIC_EVAL_SEED};
use anyhow::{Context, Result};
use ndarray::Array4;
use pixeldit_exporter::ExportOptions;
use pixeldit_runtime::generate::{generate, ImageShape, Noise, Request, VelocityModel};
use pixeldit_runtime::{backend, io, model, BackendKind, Denoiser, Device, Time};
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
    /// Image sizes `(height, width)` evaluated, each with every seed (`--eval-sizes`; empty: the model's size).
    pub sizes: Vec<(usize, usize)>,
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
            sizes: Vec::new(),
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
    /// Image sizes `[H, W]` evaluated (`--eval-sizes`; absent: the model's size).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<[usize; 2]>,
    /// Sampler steps.
    pub steps: usize,
    /// CFG scale.
    pub cfg_scale: f32,
    /// Error of `v` per t.
    pub v_error: Vec<TimeError>,
    /// PSNR per image (dB, `null` when identical), size-major, then seed, then class.
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
    let run = sampling_run(
        &meta,
        &cfg.classes,
        4,
        &cfg.text,
        SYNTHETIC_EVAL_SEED,
        cfg.steps,
        usize::MAX,
        None,
    )?;
    let conditions = &run.conditions;
    let sizes = if cfg.sizes.is_empty() {
        vec![(meta.height, meta.width)]
    } else {
        cfg.sizes.clone()
    };
    for &(h, w) in &sizes {
        for m in [&meta, &vmeta] {
            m.check_size(h, w)
                .with_context(|| format!("--eval-sizes {h}x{w}"))?;
        }
    }
    let k = conditions.count();
    let request = |noise: &Array4<f32>| Request {
        conditions: conditions.clone(),
        sampler: run.sampler.clone(),
        image: ImageShape {
            height: noise.shape()[2],
            width: noise.shape()[3],
            ..ImageShape::of(&meta)
        },
        noise: Noise::Given(noise.clone()),
    };
    let cond_rows = conditions.rows();

    let mut t_acc = vec![(0.0f64, 0.0f64, 0.0f32); cfg.t_points.len()];
    let mut psnrs = Vec::new();
    let (mut se_all, mut ref_all, mut n_all) = (0.0f64, 0.0f64, 0usize);
    let runs = sizes
        .iter()
        .flat_map(|&(h, w)| cfg.seeds.iter().map(move |&s| (s, h, w)));
    for (seed, height, width) in runs {
        let image = ImageShape {
            height,
            width,
            ..ImageShape::of(&meta)
        };
        let noise = io::seeded_noise(seed, image.batch(k));
        let xr = generate(&mut r, &request(&noise), &mut |_| {})?
            .x
            .mapv(|v| v.clamp(-1.0, 1.0));
        let xq = generate(&mut q, &request(&noise), &mut |_| {})?
            .x
            .mapv(|v| v.clamp(-1.0, 1.0));
        for k in 0..k {
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
            let time = Time::from_t(f64::from(t));
            let vr = r.velocity(xt.view(), time, cond_rows.view())?;
            let vq = q.velocity(xt.view(), time, cond_rows.view())?;
            let acc = &mut t_acc[i];
            for (a, b) in vr.iter().zip(vq.iter()) {
                acc.0 += ((a - b) as f64).powi(2);
                acc.1 += (*a as f64).powi(2);
                acc.2 = acc.2.max((a - b).abs());
            }
        }
    }
    let pooled = psnr(se_all / n_all.max(1) as f64);
    Ok(AccuracyReport {
        precision: vmeta.precision.to_string(),
        model: variant.display().to_string(),
        reference: reference.display().to_string(),
        backend: backend_name,
        classes: conditions.labels().to_vec(),
        prompts: run.prompts.clone(),
        seeds: cfg.seeds.clone(),
        sizes: cfg.sizes.iter().map(|&(h, w)| [h, w]).collect(),
        steps: run.sampler.steps,
        cfg_scale: run.sampler.cfg_scale,
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

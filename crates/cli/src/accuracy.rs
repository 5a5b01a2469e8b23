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
//! * **patch cache** (variants exported with the patch-level split): the variant's own uncached samples against
//!   its samples with `--patch-cache 2` (front-loaded and uniform), `3` and a threshold, and against the uncached
//!   sampler with fewer steps of about the same FLOPs (the baseline a cache must beat): PSNR, FLOPs relative to the
//!   uncached run, ms per image.
//!
//! Evaluation seeds default to 100, 101, apart from the calibration seeds (0, 1). The default times stop at 0.95:
//! the sampler never evaluates the network at t = 1 (its last step starts at 1 - 1/N), and there `v` is
//! ill-conditioned (even fp16 differs by ~1e-2 on the `digits` model).

use crate::calibrate::{sampling_run, TextCalibration, SYNTHETIC_EVAL_SEED};
use anyhow::{Context, Result};
use ndarray::Array4;
use pixeldit_exporter::ExportOptions;
use pixeldit_runtime::generate::{generate, ImageShape, Noise, Request, VelocityModel};
use pixeldit_runtime::patch_cache::{find_pixel_level, CachePolicy, CachedDenoiser, Reuse};
use pixeldit_runtime::{backend, io, model, BackendKind, Denoiser, Device, Time};
use pixeldit_spec::flops::ForwardFlops;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

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
    /// ms per image of the variant's uncached samples (the time base of [`CacheRow::ms_per_image`]).
    pub uncached_ms_per_image: f64,
    /// Patch-cache settings against the variant's uncached samples (empty without the patch-level split).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub patch_cache: Vec<CacheRow>,
}

/// One patch-cache setting (or the fewer-steps baseline) against the uncached samples of the same variant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheRow {
    /// `1 in 2, front-loaded`, `threshold 0.3` (with the reuse rule), or `fewer steps` (uncached, about the FLOPs
    /// of the row before it).
    pub setting: String,
    /// Sampler steps.
    pub steps: usize,
    /// Whole-model forwards.
    pub whole_forwards: usize,
    /// Pixel-level-only forwards (patch-level forwards saved).
    pub pixel_level_forwards: usize,
    /// FLOPs relative to the uncached run (architecture-notes convention, `pixeldit_spec::flops`).
    pub relative_flops: f64,
    /// Wall time per image on the report's backend (noisy; compare with `uncached_ms_per_image`).
    pub ms_per_image: f64,
    /// PSNR of the pooled MSE against the uncached samples (dB).
    pub psnr_pooled_db: f64,
    /// Lowest per-image PSNR (dB).
    pub psnr_min_db: f64,
}

/// The settings of the report's cache rows: `--patch-cache 2` (front-loaded, the default schedule, and every 2nd
/// forward), `3` and the threshold.
pub const CACHE_SETTINGS: [CachePolicy; 4] = [
    CachePolicy::FrontLoaded(2),
    CachePolicy::Every(2),
    CachePolicy::FrontLoaded(3),
    CachePolicy::Threshold(0.25),
];

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
        ) + &self
            .patch_cache
            .iter()
            .map(|r| {
                format!(
                    "\n  {} ({} steps: {} whole + {} pixel-level forwards): {:.2}x FLOPs, {:.1} ms/image \
                     (uncached {:.1}), PSNR {:.1} dB (min {:.1}) vs uncached",
                    r.setting,
                    r.steps,
                    r.whole_forwards,
                    r.pixel_level_forwards,
                    r.relative_flops,
                    r.ms_per_image,
                    self.uncached_ms_per_image,
                    r.psnr_pooled_db,
                    r.psnr_min_db
                )
            })
            .collect::<String>()
    }
}

/// Pooled and lowest per-image PSNR of `x` against `reference` (both `[K, C, H, W]` lists, clipped already).
fn psnr_pair(x: &[Array4<f32>], reference: &[Array4<f32>]) -> (f64, f64) {
    let (mut se_all, mut n_all, mut min) = (0.0f64, 0usize, f64::INFINITY);
    for (a, b) in x.iter().zip(reference) {
        for (a, b) in a.outer_iter().zip(b.outer_iter()) {
            let se: f64 = a
                .iter()
                .zip(b.iter())
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            min = min.min(psnr(se / a.len() as f64));
            se_all += se;
            n_all += a.len();
        }
    }
    (psnr(se_all / n_all.max(1) as f64), min)
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
    let q_candidate = q.candidate;
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
    let (mut uncached, mut uncached_seconds) = (Vec::new(), 0.0);
    let runs: Vec<(u64, usize, usize)> = sizes
        .iter()
        .flat_map(|&(h, w)| cfg.seeds.iter().map(move |&s| (s, h, w)))
        .collect();
    // The noise of one run of `runs`.
    let noise_of = |&(seed, height, width): &(u64, usize, usize)| {
        let image = ImageShape {
            height,
            width,
            ..ImageShape::of(&meta)
        };
        io::seeded_noise(seed, image.batch(k))
    };
    for &(seed, height, width) in &runs {
        let image = ImageShape {
            height,
            width,
            ..ImageShape::of(&meta)
        };
        let noise = io::seeded_noise(seed, image.batch(k));
        let xr = generate(&mut r, &request(&noise), &mut |_| {})?
            .x
            .mapv(|v| v.clamp(-1.0, 1.0));
        let start = Instant::now();
        let xq = generate(&mut q, &request(&noise), &mut |_| {})?
            .x
            .mapv(|v| v.clamp(-1.0, 1.0));
        uncached_seconds += start.elapsed().as_secs_f64();
        uncached.push(xq.clone());
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
    let images = (runs.len() * k).max(1) as f64;
    let uncached_ms_per_image = uncached_seconds * 1e3 / images;
    let patch_cache = match &vmeta.patch_split {
        None => Vec::new(),
        Some(_) => {
            let (pixel, split) = find_pixel_level(variant, &vmeta)?;
            let pixel = backend::load_candidate(&pixel, q_candidate, &opts, false)?;
            let mut cached = CachedDenoiser::new(q, pixel, &split, CachePolicy::Every(1), Reuse::default())?;
            let flops = ForwardFlops::of(&vmeta.config, vmeta.height, vmeta.width);
            let mut rows = Vec::new();
            for policy in CACHE_SETTINGS {
                cached.set_policy(policy)?;
                let before = cached.stats();
                let (mut xs, mut seconds) = (Vec::new(), 0.0);
                for run in &runs {
                    let noise = noise_of(run);
                    let start = Instant::now();
                    xs.push(
                        generate(&mut cached, &request(&noise), &mut |_| {})?
                            .x
                            .mapv(|v| v.clamp(-1.0, 1.0)),
                    );
                    seconds += start.elapsed().as_secs_f64();
                }
                let after = cached.stats();
                let (whole, pixel) = (after.full - before.full, after.pixel_only - before.pixel_only);
                let relative = flops.cached_relative(whole, pixel, split.cut);
                let (pooled, min) = psnr_pair(&xs, &uncached);
                let n = runs.len().max(1);
                rows.push(CacheRow {
                    setting: format!("{policy} ({})", cached.reuse()),
                    steps: run.sampler.steps,
                    whole_forwards: whole / n,
                    pixel_level_forwards: pixel / n,
                    relative_flops: relative,
                    ms_per_image: seconds * 1e3 / images,
                    psnr_pooled_db: pooled,
                    psnr_min_db: min,
                });
                // The uncached sampler with about the same FLOPs.
                let min_steps = run.sampler.kind.sampler().min_steps();
                let steps = ((run.sampler.steps as f64 * relative).round() as usize).max(min_steps);
                let mut fewer = run.sampler.clone();
                fewer.steps = steps;
                let (mut xs, mut seconds) = (Vec::new(), 0.0);
                let mut forwards = 0;
                for run in &runs {
                    let noise = noise_of(run);
                    let req = Request {
                        sampler: fewer.clone(),
                        ..request(&noise)
                    };
                    let start = Instant::now();
                    let out = generate(cached.whole_mut(), &req, &mut |_| {})?;
                    seconds += start.elapsed().as_secs_f64();
                    forwards = out.forwards;
                    xs.push(out.x.mapv(|v| v.clamp(-1.0, 1.0)));
                }
                let (pooled, min) = psnr_pair(&xs, &uncached);
                rows.push(CacheRow {
                    setting: "fewer steps".into(),
                    steps,
                    whole_forwards: forwards,
                    pixel_level_forwards: 0,
                    relative_flops: forwards as f64 / (whole + pixel).max(1) as f64 * n as f64,
                    ms_per_image: seconds * 1e3 / images,
                    psnr_pooled_db: pooled,
                    psnr_min_db: min,
                });
            }
            rows
        }
    };
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
        uncached_ms_per_image,
        patch_cache,
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

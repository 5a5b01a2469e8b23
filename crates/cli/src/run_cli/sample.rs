//! One sampling path for every model kind: the flags become a [`Request`] of the runtime's generation API
//! (conditions from [`super::class`] or [`super::text`], the sampler settings checked by
//! [`SamplerConfig::with_overrides`], the noise), run locally or on a Triton server, and the samples are written.

use super::{class, remote, text, SampleArgs, Target};
use anyhow::{bail, Context, Result};
use ndarray::{Array4, Axis};
use pixeldit_runtime::backend;
use pixeldit_runtime::generate::{
    self, Conditions, ImageShape, Noise, Request, SamplerConfig, VelocityModel,
};
use pixeldit_runtime::patch_cache::{find_pixel_level, CachedDenoiser};
use pixeldit_runtime::{io, Backend, Denoiser, RuntimeError};
use pixeldit_spec::flops::ForwardFlops;
use pixeldit_spec::{ModelKind, ModelMetadata};
use pixeldit_triton::PipelineRequest;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the conditions of a run come from (cheap to know; the conditions themselves may need the text encoder).
pub(super) enum Source {
    /// Class labels, one per image (checked against the model).
    Classes(Vec<i64>),
    /// Prompts, one per image.
    Prompts(Vec<String>),
    /// `--text-embeddings` (and `--negative-embeddings`) files.
    Embeddings,
}

impl Source {
    /// Images, when known before the conditions are built.
    fn count(&self) -> Option<usize> {
        match self {
            Source::Classes(l) => Some(l.len()),
            Source::Prompts(p) => Some(p.len()),
            Source::Embeddings => None,
        }
    }

    /// One request per image for a pipeline model on the server (none for embedding files: those runs go step-wise);
    /// `size` is sent as the `height`/`width` inputs (a dynamic-size model's pipeline).
    fn pipeline_requests(&self, a: &SampleArgs, size: Option<ImageShape>) -> Option<Vec<PipelineRequest>> {
        let base = PipelineRequest {
            seed: a.seed,
            steps: a.steps,
            cfg: a.cfg,
            sampler: a.sampler.map(|s| s.to_string()),
            interval: a.interval,
            shift: a.shift,
            patch_cache: a.patch_cache,
            patch_cache_threshold: a.patch_cache_threshold,
            patch_cache_reuse: (a.patch_cache.is_some() || a.patch_cache_threshold.is_some())
                .then(|| a.patch_cache_reuse.to_string()),
            patch_cache_schedule: a.patch_cache.map(|_| a.patch_cache_schedule.to_string()),
            height: size.map(|s| s.height),
            width: size.map(|s| s.width),
            ..Default::default()
        };
        match self {
            Source::Classes(labels) => Some(
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, &class)| PipelineRequest {
                        class: Some(class),
                        index: i as u64,
                        ..base.clone()
                    })
                    .collect(),
            ),
            Source::Prompts(prompts) => Some(
                prompts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PipelineRequest {
                        prompt: Some(p.clone()),
                        negative_prompt: a.negative_prompt.clone(),
                        index: i as u64,
                        ..base.clone()
                    })
                    .collect(),
            ),
            Source::Embeddings => None,
        }
    }

    /// `--report-json` fields of the conditions known without building them.
    fn report(&self, a: &SampleArgs) -> serde_json::Value {
        match self {
            Source::Classes(labels) => serde_json::json!({ "classes": labels }),
            Source::Prompts(prompts) => serde_json::json!({
                "prompts": prompts,
                "negative_prompt": a.negative_prompt.clone().unwrap_or_default(),
            }),
            Source::Embeddings => {
                serde_json::json!({ "negative_embeddings": a.negative_embeddings.is_some() })
            }
        }
    }
}

/// The sampler settings of a run: the model's defaults, then the flags, checked.
pub(super) fn sampler_config(a: &SampleArgs, meta: &ModelMetadata) -> Result<SamplerConfig> {
    Ok(SamplerConfig::from_metadata(&meta.sampler)?.with_overrides(&a.sampler_overrides())?)
}

/// `--report-json` fields and summary text of a sampler configuration.
fn sampler_report(s: &SamplerConfig) -> (serde_json::Value, String) {
    (
        serde_json::json!({
            "sampler": s.kind.to_string(),
            "cfg_scale": s.cfg_scale,
            "guidance_interval": [s.interval.0, s.interval.1],
            "time_shift": s.shift,
        }),
        format!("{} {} steps, cfg {}", s.kind, s.steps, s.cfg_scale),
    )
}

/// The image size of the run: `--height/--width` (each defaulting to the model's), or the bucket nearest to
/// `--aspect-ratio`; checked against the model (a dynamic model's range, a static model's own size).
pub(crate) fn image_shape(a: &SampleArgs, meta: &ModelMetadata) -> Result<ImageShape> {
    let mut image = ImageShape::of(meta);
    if let Some(ar) = &a.aspect_ratio {
        let ratio = parse_aspect_ratio(ar).with_context(|| format!("--aspect-ratio {ar}"))?;
        let Some(d) = &meta.dynamic else {
            bail!(
                "--aspect-ratio {ar}: this model was exported at the fixed size {}x{} (export it with \
                 --dynamic-size to choose among sizes)",
                meta.height,
                meta.width
            );
        };
        let [h, w] = d
            .nearest_bucket(ratio)
            .ok_or_else(|| anyhow::anyhow!("--aspect-ratio {ar}: the model's bucket table is empty"))?;
        crate::note!("pixeldit-run: --aspect-ratio {ar}: {h}x{w} (HxW, the nearest bucket of the model)");
        image.height = h;
        image.width = w;
    }
    image.height = a.height.unwrap_or(image.height);
    image.width = a.width.unwrap_or(image.width);
    meta.check_size(image.height, image.width)
        .context("--height/--width")?;
    Ok(image)
}

/// Parses `H:W` (positive numbers) as the ratio `H / W`.
fn parse_aspect_ratio(s: &str) -> Result<f64> {
    let (h, w) = s
        .split_once(':')
        .ok_or_else(|| anyhow::anyhow!("expected H:W, such as 16:9"))?;
    let num = |v: &str| -> Result<f64> {
        match v.trim().parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => bail!("'{v}' is not a positive number (expected H:W, such as 16:9)"),
        }
    };
    Ok(num(h)? / num(w)?)
}

/// Samples the images the flags ask for and writes them.
pub(super) fn run(a: &SampleArgs, target: Target) -> Result<()> {
    let image = image_shape(a, &target.meta)?;
    let scfg = sampler_config(a, &target.meta)?;
    let patch_cache = a.patch_cache()?;
    let source = match target.meta.config.kind {
        ModelKind::C2i => class::source(a, &target)?,
        ModelKind::T2i => text::source(a, &target)?,
    };
    let (mut report, sampler_line) = sampler_report(&scfg);
    report["conditions"] = source.report(a);
    if target.pipeline.is_some() && a.noise.is_none() {
        let size = target.meta.dynamic.as_ref().map(|_| image);
        if let Some(requests) = source.pipeline_requests(a, size) {
            if let Some(policy) = patch_cache {
                report["patch_cache"] = serde_json::json!({
                    "policy": policy.to_string(),
                    "reuse": a.patch_cache_reuse.to_string(),
                });
            }
            let out_paths = checked_outputs(a, requests.len())?;
            return remote::sample_in_server(
                a,
                target,
                requests,
                &out_paths,
                scfg.steps,
                sampler_line,
                report,
            );
        }
    }
    if patch_cache.is_some() && a.triton.is_some() {
        let why = if a.triton_step_wise {
            "--triton-step-wise drives whole forwards from this client"
        } else if a.noise.is_some() {
            "--noise runs step-wise from this client"
        } else if target.pipeline.is_none() {
            "the server has no pipeline model NAME_pipeline ready"
        } else {
            "embedding files run step-wise from this client"
        };
        bail!(
            "--patch-cache with --triton runs in the server's pipeline model (it calls the pixel-level model \
             NAME_pixel), but {why}: drop the cache flag, or run locally"
        );
    }
    // The image count and output paths are checked before the text encoder runs, when the count is known.
    let known_paths = source.count().map(|k| checked_outputs(a, k)).transpose()?;
    let (conditions, conditions_report) = match source {
        Source::Classes(labels) => (Conditions::classes(labels, target.meta.config.null_class()), None),
        Source::Prompts(texts) => text::from_prompts(a, &target, &scfg, texts)?,
        Source::Embeddings => text::from_files(a, &target, &scfg)?,
    };
    if let Some(extra) = conditions_report {
        report["conditions"] = extra;
    }
    conditions.check(&target.meta.config)?;
    let k = conditions.count();
    let out_paths = match known_paths {
        Some(paths) => paths,
        None => checked_outputs(a, k)?,
    };
    let request = Request {
        conditions,
        sampler: scfg,
        image,
        noise: noise(a, image, k)?,
    };
    let pixel_level = match (patch_cache, a.model.as_deref()) {
        (Some(_), Some(model)) => Some(find_pixel_level(model, &target.meta)?),
        _ => None,
    };
    let (denoiser, meta, candidate) = target.open(a)?;
    let mut model = match (patch_cache, pixel_level, candidate) {
        (Some(policy), Some((path, split)), Some(candidate)) => {
            let opts = a.load_options(meta.precision);
            let pixel = backend::load_candidate(&path, candidate, &opts, false)?;
            crate::note!(
                "pixeldit-run: patch cache {policy}, pixel level {}",
                path.display()
            );
            let cached = CachedDenoiser::new(denoiser, pixel, &split, policy, a.patch_cache_reuse)?;
            Model::Cached(Box::new(cached))
        }
        _ => Model::Whole(denoiser),
    };

    let bar = crate::progress::steps(request.sampler.steps, a.quiet);
    let start = Instant::now();
    let out = generate::generate(model.velocity_model(), &request, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    report["forwards"] = serde_json::json!(out.forwards);
    report["guided_forwards"] = serde_json::json!(out.guided_forwards);
    report["forward_rows"] = serde_json::json!(out.rows);
    let mut forwards_line = format!("{} forwards, ", out.forwards);
    let flops = ForwardFlops::of(&meta.config, meta.height, meta.width);
    let k = out.x.shape()[0] as f64;
    report["gflops_per_image"] = serde_json::json!(out.rows as f64 * flops.whole() / k / 1e9);
    if let Model::Cached(c) = &model {
        let stats = c.stats();
        let pixel_flops = flops.pixel_level_at(c.cut());
        report["gflops_per_image"] = serde_json::json!(
            (stats.full_rows as f64 * flops.whole() + stats.pixel_rows as f64 * pixel_flops) / k / 1e9
        );
        let relative = flops.cached_relative(stats.full, stats.pixel_only, c.cut());
        report["patch_cache"] = serde_json::json!({
            "policy": c.policy().to_string(),
            "reuse": c.reuse().to_string(),
            "whole_forwards": stats.full,
            "pixel_level_forwards": stats.pixel_only,
            "relative_flops": relative,
        });
        forwards_line = format!(
            "{} forwards: {} whole, {} pixel level only (patch cache {}, {}; {:.2}x FLOPs), ",
            out.forwards,
            stats.full,
            stats.pixel_only,
            c.policy(),
            c.reuse(),
            relative
        );
    }
    finish(
        a,
        &out.x,
        &out_paths,
        Finished {
            meta: &meta,
            backend: model.whole().backend(),
            steps: request.sampler.steps,
            seconds,
            report,
            sampler_line: format!("{sampler_line} ({} guided)", out.guided_forwards),
            forwards_line,
        },
    )
}

/// What runs the forwards of a local or step-wise remote run.
enum Model {
    /// The whole model at every forward.
    Whole(Denoiser),
    /// The whole model and its pixel level (`--patch-cache`).
    Cached(Box<CachedDenoiser>),
}

impl Model {
    fn velocity_model(&mut self) -> &mut dyn VelocityModel {
        match self {
            Model::Whole(d) => d,
            Model::Cached(c) => c.as_mut(),
        }
    }

    fn whole(&self) -> &Denoiser {
        match self {
            Model::Whole(d) => d,
            Model::Cached(c) => c.whole(),
        }
    }
}

/// The initial noise: `--noise FILE.npy` (which must be `[K, C, H, W]`), else the stream of `--seed`.
fn noise(a: &SampleArgs, image: ImageShape, k: usize) -> Result<Noise> {
    let Some(path) = &a.noise else {
        return Ok(Noise::seeded(a.seed));
    };
    let arr = io::read_npy(path)?;
    let expected = image.batch(k);
    if arr.shape() != expected {
        return Err(RuntimeError::NoiseShape {
            path: path.clone(),
            found: arr.shape().to_vec(),
            expected: expected.to_vec(),
        }
        .into());
    }
    Ok(Noise::Given(arr.into_dimensionality().context("checked shape")?))
}

/// Checks that `k > 0` images are requested and returns their output paths (see [`checked_output_paths`]).
fn checked_outputs(a: &SampleArgs, k: usize) -> Result<Vec<PathBuf>> {
    if k == 0 {
        bail!("no images requested (--batch 0)");
    }
    checked_output_paths(a, k)
}

/// The image paths to write for `k` images (`-o` as is with one image or `--grid`, else numbered), after checking
/// that their directories, and those of `--save-raw` and `--report-json`, exist.
fn checked_output_paths(a: &SampleArgs, k: usize) -> Result<Vec<PathBuf>> {
    let out_paths: Vec<PathBuf> = if k == 1 || a.grid {
        vec![a.output.clone()]
    } else {
        io::numbered_paths(&a.output, k)
    };
    for p in out_paths.iter().chain(&a.save_raw).chain(&a.report_json) {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!("output directory {} does not exist", dir.display());
        }
    }
    Ok(out_paths)
}

/// What a finished run reports: the JSON fields specific to its kind and the middle of the summary line.
pub(crate) struct Finished<'a> {
    pub meta: &'a ModelMetadata,
    pub backend: &'a dyn Backend,
    pub steps: usize,
    pub seconds: f64,
    /// Extra `--report-json` fields (sampler settings, conditions).
    pub report: serde_json::Value,
    /// Sampler description for the summary line, e.g. `flow_dpm 25 steps, cfg 3`.
    pub sampler_line: String,
    /// Forward description for the summary line, e.g. `25 forwards, `.
    pub forwards_line: String,
}

/// Encodes the `[K, 3, H, W]` samples `x` (one image or a grid at `-o`, else one image per path), `--save-raw`
/// and `--report-json`, writes them all atomically and prints the summary line.
pub(crate) fn finish(a: &SampleArgs, x: &Array4<f32>, out_paths: &[PathBuf], f: Finished<'_>) -> Result<()> {
    let (k, height, width) = (x.shape()[0], x.shape()[2], x.shape()[3]);
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    if k == 1 || a.grid {
        let (rgb, w, h) = if k == 1 {
            (io::image_rgb8(x.index_axis(Axis(0), 0)), width, height)
        } else {
            io::grid_rgb8(x.view())
        };
        files.push((a.output.clone(), io::png_bytes(&a.output, &rgb, w, h)?));
    } else {
        for (p, img) in out_paths.iter().zip(x.outer_iter()) {
            files.push((p.clone(), io::png_bytes(p, &io::image_rgb8(img), width, height)?));
        }
    }
    if let Some(raw) = &a.save_raw {
        files.push((raw.clone(), io::npy_bytes(x.shape(), x.iter().copied())));
    }
    let ms_per_step = f.seconds * 1e3 / f.steps as f64;
    if let Some(path) = &a.report_json {
        let mut report = serde_json::json!({
            "model": a.model.as_ref().map(|m| m.display().to_string()).or_else(|| a.triton_model.clone()),
            "kind": match f.meta.config.kind { ModelKind::T2i => "t2i", ModelKind::C2i => "c2i" },
            "backend": f.backend.name(),
            "provider": f.backend.provider(),
            "precision": f.meta.precision.to_string(),
            "steps": f.steps,
            "images": k,
            "noise": match &a.noise {
                Some(p) => p.display().to_string(),
                None => format!("seed {}", a.seed),
            },
            "ms_per_step": ms_per_step,
            "total_s": f.seconds,
        });
        if let (Some(obj), serde_json::Value::Object(extra)) = (report.as_object_mut(), f.report) {
            obj.extend(extra);
        }
        let outputs: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        report["outputs"] = serde_json::json!(outputs);
        let text = serde_json::to_string_pretty(&report).context("report JSON")? + "\n";
        files.push((path.clone(), text.into_bytes()));
    }
    io::write_all_atomic(&files)?;
    for (p, _) in &files {
        crate::note!("pixeldit-run: wrote {}", p.display());
    }
    crate::say!(
        "backend {} | provider {} | precision {} | {} | {:.1} ms/step ({}{:.2} s total)",
        f.backend.name(),
        f.backend.provider(),
        f.meta.precision,
        f.sampler_line,
        ms_per_step,
        f.forwards_line,
        f.seconds
    );
    Ok(())
}

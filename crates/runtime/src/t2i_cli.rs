//! `pixeldit-run MODEL --text-embeddings FILE [--negative-embeddings FILE]` for text-to-image models: DPM-Solver++ 2M
//! ([`pixeldit_runtime::t2i`]) with the model's sampler defaults, on any backend that implements
//! `Backend::run_text` (ONNX Runtime, tract, a Triton server with `--triton`).

use super::SampleArgs;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array3, Axis};
use pixeldit_runtime::backend::Backend;
use pixeldit_runtime::io;
use pixeldit_runtime::t2i::{self, T2iSamplerConfig};
use pixeldit_spec::ModelMetadata;
use std::time::Instant;

/// Repeats a `[1, L, E]` array K times, or checks that it already has K rows.
fn broadcast(a: Array3<f32>, k: usize, what: &str) -> Result<Array3<f32>> {
    match a.shape()[0] {
        n if n == k => Ok(a),
        1 => Ok(ndarray::concatenate(Axis(0), &vec![a.view(); k]).expect("same shapes")),
        n => bail!("{what} hold {n} prompts for {k} images (give 1 or {k})"),
    }
}

pub(super) fn run(a: &SampleArgs, remote: Option<Box<dyn Backend>>, meta: &ModelMetadata) -> Result<()> {
    // What the messages and the report call the model: the file, else the Triton model.
    let model_name = match (&a.model, &a.triton_model) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(name)) => format!("Triton model {name}"),
        (None, None) => bail!("a model file is required"),
    };
    let cfg_m = &meta.config;
    let text_cfg = cfg_m
        .text
        .as_ref()
        .context("the model metadata has no text section")?;
    if a.class.is_some() || a.classes.is_some() {
        bail!("{model_name} is a text-to-image model: pass --text-embeddings, not class labels");
    }
    let text_path = a.text_embeddings.as_deref().with_context(|| {
        format!(
            "{model_name} is a text-to-image model: pass --text-embeddings FILE ([{}, {}] hidden states of the text \
             encoder, see --help)",
            text_cfg.max_length,
            text_cfg.embed_dim
        )
    })?;
    let (len, dim) = (text_cfg.max_length, text_cfg.embed_dim);
    let cond = t2i::read_text_embeddings(text_path, len, dim)?;
    let k = a.batch.unwrap_or(cond.shape()[0]);
    if k == 0 {
        bail!("no images requested (--batch 0)");
    }
    let cond = broadcast(cond, k, "--text-embeddings")?;

    // Sampler settings: the model's defaults, then the flags.
    let mut scfg = T2iSamplerConfig::from_defaults(&meta.sampler)?;
    if let Some(s) = &a.sampler {
        if s != t2i::SAMPLER_NAME {
            bail!(
                "text-to-image models sample with {}, not '{s}'",
                t2i::SAMPLER_NAME
            );
        }
    }
    if let Some(n) = a.steps {
        scfg.steps = n;
    }
    if let Some(w) = a.cfg {
        scfg.cfg_scale = w;
    }
    if let Some(s) = a.shift {
        scfg.shift = s;
    }
    if let Some(iv) = &a.interval {
        scfg.interval = super::parse_interval(iv)?;
    }
    scfg.validate()?;
    let uncond = match &a.negative_embeddings {
        Some(p) => Some(broadcast(
            t2i::read_text_embeddings(p, len, dim)?,
            k,
            "--negative-embeddings",
        )?),
        None if scfg.cfg_scale != 1.0 => bail!(
            "CFG (scale {}) needs the hidden states of the negative prompt (the empty prompt \"\" for plain \
             guidance): pass --negative-embeddings FILE, or --cfg 1",
            scfg.cfg_scale
        ),
        None => None,
    };

    // Noise.
    let shape = [k, cfg_m.in_channels, meta.height, meta.width];
    let noise = super::initial_noise(a, shape)?;

    let out_paths = super::checked_output_paths(a, k)?;

    let mut runner = super::open_runner(a, remote, meta.precision)?;
    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(scfg.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("step {pos}/{len} [{bar:30}] ETA {eta} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut guided_steps = 0usize;
    let x = t2i::sample(
        &mut |x, t, text| runner.run_text(x, t, text),
        noise,
        cond.view(),
        uncond.as_ref().map(|u| u.view()),
        &scfg,
        &mut |s| {
            guided_steps += usize::from(s.guided);
            bar.inc(1)
        },
    )?;
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();

    let mut files = super::encode_outputs(a, &x, &out_paths, meta.width, meta.height)?;
    let summary = serde_json::json!({
        "model": model_name,
        "kind": "t2i",
        "backend": runner.name(),
        "provider": runner.provider(),
        "precision": meta.precision.to_string(),
        "sampler": t2i::SAMPLER_NAME,
        "steps": scfg.steps,
        "cfg_scale": scfg.cfg_scale,
        "guidance_interval": [scfg.interval.0, scfg.interval.1],
        "flow_shift": scfg.shift,
        "images": k,
        "negative_embeddings": a.negative_embeddings.is_some(),
        "noise": a.noise.as_ref().map_or_else(|| format!("seed {}", a.seed), |p| p.display().to_string()),
        "seconds": elapsed,
        "ms_per_step": elapsed * 1e3 / scfg.steps as f64,
    });
    if let Some(p) = &a.report_json {
        files.push((p.clone(), serde_json::to_vec_pretty(&summary)?));
    }
    io::write_all_atomic(&files)?;
    for (p, _) in &files {
        eprintln!("pixeldit-run: wrote {}", p.display());
    }
    println!(
        "backend {} | provider {} | precision {} | {} {} steps, cfg {} ({} guided) | {:.1} ms/step ({:.2} s total)",
        runner.name(),
        runner.provider(),
        meta.precision,
        t2i::SAMPLER_NAME,
        scfg.steps,
        scfg.cfg_scale,
        guided_steps,
        elapsed * 1e3 / scfg.steps as f64,
        elapsed
    );
    Ok(())
}

//! Text-to-image sampling: prompt embeddings from `--text-embeddings` (and `--negative-embeddings` for CFG),
//! DPM-Solver++ 2M with the model's sampler defaults.

use super::{finish, prepare, Finished, SampleArgs, SamplerArg, Target};
use anyhow::{bail, Context, Result};
use ndarray::{Array3, Axis};
use pixeldit_runtime::samplers::dpm_solver::{self, DpmSolverConfig, SAMPLER_NAME};
use std::time::Instant;

/// Repeats a `[1, L, E]` array K times, or checks that it already has K rows.
fn broadcast(a: Array3<f32>, k: usize, what: &str) -> Result<Array3<f32>> {
    match a.shape()[0] {
        n if n == k => Ok(a),
        1 => Ok(ndarray::concatenate(Axis(0), &vec![a.view(); k]).expect("same shapes")),
        n => bail!("{what} hold {n} prompts for {k} images (give 1 or {k})"),
    }
}

/// The sampler settings of `target`: the model's defaults, then the flags.
fn sampler_config(a: &SampleArgs, target: &Target) -> Result<DpmSolverConfig> {
    if let Some(s) = a.sampler.filter(|s| *s != SamplerArg::Dpmpp2m) {
        bail!(
            "{} is a text-to-image model: it samples with {SAMPLER_NAME}, not '{}'",
            target.name,
            clap::ValueEnum::to_possible_value(&s).map_or_else(String::new, |v| v.get_name().to_string())
        );
    }
    let mut scfg = DpmSolverConfig::from_defaults(&target.meta.sampler)?;
    scfg.steps = a.steps.unwrap_or(scfg.steps);
    scfg.cfg_scale = a.cfg.unwrap_or(scfg.cfg_scale);
    scfg.shift = a.shift.unwrap_or(scfg.shift);
    scfg.interval = a.interval.unwrap_or(scfg.interval);
    scfg.validate()?;
    Ok(scfg)
}

pub(super) fn run(a: &SampleArgs, target: Target) -> Result<()> {
    let text_cfg = target
        .meta
        .config
        .text
        .clone()
        .context("the model metadata has no text section")?;
    if a.class.is_some() || a.classes.is_some() {
        bail!(
            "{} is a text-to-image model: pass --text-embeddings, not class labels",
            target.name
        );
    }
    let (len, dim) = (text_cfg.max_length, text_cfg.embed_dim);
    let text_path = a.text_embeddings.as_deref().with_context(|| {
        format!(
            "{} is a text-to-image model: pass --text-embeddings FILE ([{len}, {dim}] hidden states of the text \
             encoder, see --help)",
            target.name
        )
    })?;
    let cond = pixeldit_runtime::io::read_text_embeddings(text_path, len, dim)?;
    let k = a.batch.unwrap_or(cond.shape()[0]);
    if k == 0 {
        bail!("no images requested (--batch 0)");
    }
    let cond = broadcast(cond, k, "--text-embeddings")?;
    let scfg = sampler_config(a, &target)?;
    let uncond = match &a.negative_embeddings {
        Some(p) => Some(broadcast(
            pixeldit_runtime::io::read_text_embeddings(p, len, dim)?,
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
    let prepared = prepare(a, &target.meta, k)?;
    let (mut denoiser, meta) = target.open(a)?;

    let bar = crate::progress::steps(scfg.steps, a.quiet);
    let start = Instant::now();
    let mut guided_steps = 0usize;
    let x = dpm_solver::sample(
        &mut |x, t, text| denoiser.text_velocity(x, t, text),
        prepared.noise,
        cond.view(),
        uncond.as_ref().map(|u| u.view()),
        &scfg,
        &mut |s| {
            guided_steps += usize::from(s.guided);
            bar.inc(1)
        },
    )?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    finish(
        a,
        &x,
        &prepared.out_paths,
        Finished {
            meta: &meta,
            backend: denoiser.backend(),
            steps: scfg.steps,
            seconds,
            report: serde_json::json!({
                "sampler": SAMPLER_NAME,
                "cfg_scale": scfg.cfg_scale,
                "guidance_interval": [scfg.interval.0, scfg.interval.1],
                "flow_shift": scfg.shift,
                "guided_steps": guided_steps,
                "negative_embeddings": a.negative_embeddings.is_some(),
            }),
            sampler_line: format!(
                "{SAMPLER_NAME} {} steps, cfg {} ({guided_steps} guided)",
                scfg.steps, scfg.cfg_scale
            ),
            forwards_line: String::new(),
        },
    )
}

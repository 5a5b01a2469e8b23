//! Class-conditional sampling: labels from `--class`/`--classes`, the flow sampler with the model's defaults.

use super::{finish, prepare, Finished, SampleArgs, SamplerArg, Target};
use anyhow::{bail, Result};
use pixeldit_runtime::samplers::flow::{self, FlowSamplerConfig, SamplerKind};
use pixeldit_runtime::RuntimeError;
use pixeldit_triton::PipelineRequest;
use std::time::Instant;

/// The labels of the images: `--classes`, or `--class` (default 0) repeated `--batch` times.
fn labels(a: &SampleArgs, num_classes: usize) -> Result<Vec<i64>> {
    let labels: Vec<i64> = match (&a.classes, a.class) {
        (Some(list), _) => {
            if let Some(b) = a.batch.filter(|b| *b != list.len()) {
                bail!(
                    "--batch {b} does not match the {} labels of --classes",
                    list.len()
                );
            }
            list.clone()
        }
        (None, c) => vec![c.unwrap_or(0); a.batch.unwrap_or(1)],
    };
    if let Some(&c) = labels.iter().find(|&&c| c < 0 || c >= num_classes as i64) {
        return Err(RuntimeError::ClassOutOfRange {
            class: c,
            num_classes,
        }
        .into());
    }
    Ok(labels)
}

/// The sampler settings: the model's defaults, then the flags.
fn sampler_config(a: &SampleArgs, target: &Target) -> Result<FlowSamplerConfig> {
    let mut scfg = FlowSamplerConfig::from_defaults(&target.meta.sampler)?;
    match a.sampler {
        Some(SamplerArg::FlowDpm) => scfg.kind = SamplerKind::FlowDpm,
        Some(SamplerArg::Euler) => scfg.kind = SamplerKind::Euler,
        Some(SamplerArg::Heun) => scfg.kind = SamplerKind::Heun,
        Some(SamplerArg::Dpmpp2m) => bail!(
            "{} is class-conditional: its samplers are flow_dpm, euler and heun, not dpmpp_2m",
            target.name
        ),
        None => {}
    }
    scfg.steps = a.steps.unwrap_or(scfg.steps);
    scfg.cfg_scale = a.cfg.unwrap_or(scfg.cfg_scale);
    scfg.shift = a.shift.unwrap_or(scfg.shift);
    scfg.interval = a.interval.unwrap_or(scfg.interval);
    scfg.validate()?;
    Ok(scfg)
}

pub(super) fn run(a: &SampleArgs, target: Target) -> Result<()> {
    if a.text_embeddings.is_some()
        || a.negative_embeddings.is_some()
        || a.prompt.is_some()
        || a.prompts_file.is_some()
        || a.negative_prompt.is_some()
        || a.text_encoder.is_some()
    {
        bail!(
            "prompts, text encoders and text embeddings are for text-to-image models; {} is class-conditional",
            target.name
        );
    }
    let labels = labels(a, target.meta.config.num_classes)?;
    let scfg = sampler_config(a, &target)?;
    if target.pipeline.is_some() && a.noise.is_none() {
        return run_pipeline(a, target, &labels, &scfg);
    }
    let prepared = prepare(a, &target.meta, labels.len())?;
    let null = target.meta.config.null_class();
    let (mut denoiser, meta) = target.open(a)?;

    let bar = crate::progress::steps(scfg.steps, a.quiet);
    let start = Instant::now();
    let x = flow::sample(
        &mut |x, t, y| denoiser.class_velocity(x, t, y),
        prepared.noise,
        &labels,
        null,
        &scfg,
        &mut |_| bar.inc(1),
    )?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();

    let forwards = scfg.network_calls();
    let batch = if scfg.cfg_scale == 1.0 {
        labels.len()
    } else {
        2 * labels.len()
    };
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
                "sampler": scfg.kind.to_string(),
                "cfg_scale": scfg.cfg_scale,
                "interval": [scfg.interval.0, scfg.interval.1],
                "shift": scfg.shift,
                "classes": labels,
                "forwards": forwards,
                "forward_batch": batch,
            }),
            sampler_line: format!("{} {} steps, cfg {}", scfg.kind, scfg.steps, scfg.cfg_scale),
            forwards_line: format!("{forwards} forwards of batch {batch}, "),
        },
    )
}

/// `--triton` with a pipeline model on the server: one request per image (class, seed, the image's position in the
/// seed's noise stream, and the sampler flags the user gave; the server applies the same metadata defaults).
fn run_pipeline(a: &SampleArgs, target: Target, labels: &[i64], scfg: &FlowSamplerConfig) -> Result<()> {
    let requests: Vec<PipelineRequest> = labels
        .iter()
        .enumerate()
        .map(|(i, &class)| PipelineRequest {
            class: Some(class),
            seed: a.seed,
            index: i as u64,
            steps: a.steps,
            cfg: a.cfg,
            sampler: a.sampler.map(|s| {
                clap::ValueEnum::to_possible_value(&s).map_or_else(String::new, |v| v.get_name().to_string())
            }),
            interval: a.interval,
            shift: a.shift,
            ..Default::default()
        })
        .collect();
    super::sample_in_server(
        a,
        target,
        requests,
        scfg.steps,
        format!("{} {} steps, cfg {}", scfg.kind, scfg.steps, scfg.cfg_scale),
        serde_json::json!({
            "sampler": scfg.kind.to_string(),
            "cfg_scale": scfg.cfg_scale,
            "interval": [scfg.interval.0, scfg.interval.1],
            "shift": scfg.shift,
            "classes": labels,
        }),
    )
}

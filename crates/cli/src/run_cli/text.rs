//! Text-to-image sampling: prompt embeddings from `--prompt`/`--prompts-file` through the exported text encoder
//! and its tokenizer, or from `--text-embeddings` (and `--negative-embeddings` for CFG) files; DPM-Solver++ 2M
//! with the model's sampler defaults.

use super::{finish, prepare, report_selection, Finished, SampleArgs, SamplerArg, Target};
use anyhow::{bail, Context, Result};
use ndarray::{Array3, Axis};
use pixeldit_runtime::backend;
use pixeldit_runtime::prompt::{PromptKind, PromptTokenizer};
use pixeldit_runtime::samplers::dpm_solver::{self, DpmSolverConfig, SAMPLER_NAME};
use pixeldit_runtime::text_encoder::{self, TextEncoder};
use pixeldit_spec::TextConfig;
use pixeldit_triton::PipelineRequest;
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

/// The conditions of a run: `[K, 300, D]` prompt embeddings and, for CFG, the negative ones.
struct Conditions {
    cond: Array3<f32>,
    uncond: Option<Array3<f32>>,
    /// `--report-json` fields describing where they came from.
    report: serde_json::Value,
}

/// The prompts of `--prompt` / `--prompts-file`, one per image (one prompt is repeated `--batch` times), if any.
fn prompts(a: &SampleArgs) -> Result<Option<Vec<String>>> {
    let texts = match (&a.prompt, &a.prompts_file) {
        (Some(p), _) => vec![p.clone()],
        (None, Some(path)) => crate::read_prompts_file(path)?,
        (None, None) => return Ok(None),
    };
    Ok(Some(match (texts.len(), a.batch) {
        (1, Some(b)) => vec![texts[0].clone(); b],
        (n, Some(b)) if n != b => {
            bail!("--batch {b} with {n} prompts (give one prompt to repeat, or no --batch)")
        }
        _ => texts,
    }))
}

/// Conditions from `--text-embeddings` / `--negative-embeddings` files.
fn from_files(
    a: &SampleArgs,
    target: &Target,
    text_cfg: &TextConfig,
    scfg: &DpmSolverConfig,
) -> Result<Conditions> {
    let (len, dim) = (text_cfg.max_length, text_cfg.embed_dim);
    let text_path = a.text_embeddings.as_deref().with_context(|| {
        format!(
            "{} is a text-to-image model: pass --prompt with --text-encoder and --tokenizer, or --text-embeddings \
             FILE ([{len}, {dim}] hidden states of the text encoder, see --help)",
            target.name
        )
    })?;
    if a.negative_prompt.is_some() {
        bail!("--negative-prompt needs --prompt or --prompts-file (with --text-embeddings use --negative-embeddings)");
    }
    let cond = pixeldit_runtime::io::read_text_embeddings(text_path, len, dim)?;
    let k = a.batch.unwrap_or(cond.shape()[0]);
    if k == 0 {
        bail!("no images requested (--batch 0)");
    }
    let cond = broadcast(cond, k, "--text-embeddings")?;
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
    Ok(Conditions {
        cond,
        uncond,
        report: serde_json::json!({ "negative_embeddings": a.negative_embeddings.is_some() }),
    })
}

/// Conditions from prompts: the text encoder on the backend the flags choose, with its tokenizer.
fn from_prompts(
    a: &SampleArgs,
    target: &Target,
    text_cfg: &TextConfig,
    scfg: &DpmSolverConfig,
    texts: Vec<String>,
) -> Result<Conditions> {
    let enc_path = a.text_encoder.as_deref().context(
        "--prompt needs the exported text encoder: pass --text-encoder gemma.onnx (pixeldit-export --text-encoder)",
    )?;
    let tok_path = match &a.tokenizer {
        Some(p) => p.clone(),
        None => {
            let sibling = enc_path.with_file_name("tokenizer.json");
            if !sibling.is_file() {
                bail!(
                    "--prompt needs the encoder's tokenizer: pass --tokenizer tokenizer.json (none found next to {})",
                    enc_path.display()
                );
            }
            sibling
        }
    };
    let tokenizer = PromptTokenizer::from_file(&tok_path)?;
    let meta = text_encoder::read_metadata(enc_path)?;
    let sel = backend::load(enc_path, &a.backend.options(meta.precision))?;
    eprintln!("pixeldit-run: text encoder {}:", enc_path.display());
    report_selection(&sel);
    let mut encoder = TextEncoder::new(sel.backend, enc_path, meta, tokenizer)?;
    encoder.check_model(text_cfg, &target.name)?;
    encoder.check_prompt_length()?;

    let start = Instant::now();
    let prompts = encoder.encode(PromptKind::Prompt, &texts)?;
    for (i, cut) in prompts.truncated.iter().enumerate() {
        if let Some(t) = cut {
            eprintln!("pixeldit-run: prompt {} {t}", i + 1);
        }
    }
    let negative = a.negative_prompt.clone().unwrap_or_default();
    let uncond = if scfg.cfg_scale != 1.0 {
        if !encoder.negative_is_exact() {
            let m = encoder.metadata();
            eprintln!(
                "pixeldit-run: note: the negative prompt runs padded to {} tokens; with this encoder's sliding \
                 window ({}) < 300 its padded positions differ from the official 300-token encoding",
                m.sequence_length, m.sliding_window
            );
        }
        let neg = encoder.encode(PromptKind::Negative, &vec![negative.clone(); texts.len()])?;
        if neg.truncated[0].is_some() {
            eprintln!(
                "pixeldit-run: negative prompt {}",
                neg.truncated[0].as_ref().expect("checked")
            );
        }
        Some(neg.embeddings)
    } else {
        None
    };
    let encoder_s = start.elapsed().as_secs_f64();
    eprintln!(
        "pixeldit-run: encoded {} text(s) in {:.2} s ({}, {})",
        texts.len() + usize::from(uncond.is_some()),
        encoder_s,
        encoder.backend().name(),
        encoder.backend().provider()
    );
    Ok(Conditions {
        cond: prompts.embeddings,
        uncond,
        report: serde_json::json!({
            "prompts": texts,
            "negative_prompt": negative,
            "prompts_truncated": prompts.truncated.iter().filter(|t| t.is_some()).count(),
            "text_encoder": enc_path.display().to_string(),
            "text_encoder_backend": encoder.backend().name(),
            "text_encoder_s": encoder_s,
        }),
    })
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
            "{} is a text-to-image model: pass --prompt or --text-embeddings, not class labels",
            target.name
        );
    }
    let scfg = sampler_config(a, &target)?;
    let texts = prompts(a)?;
    // With a pipeline model on the server, prompts are tokenized, encoded and sampled there.
    if let (Some(prompts), true) = (&texts, target.pipeline.is_some() && a.noise.is_none()) {
        let requests = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| PipelineRequest {
                prompt: Some(p.clone()),
                negative_prompt: a.negative_prompt.clone(),
                seed: a.seed,
                index: i as u64,
                steps: a.steps,
                cfg: a.cfg,
                interval: a.interval,
                shift: a.shift,
                ..Default::default()
            })
            .collect();
        return super::sample_in_server(
            a,
            target,
            requests,
            scfg.steps,
            format!("{SAMPLER_NAME} {} steps, cfg {}", scfg.steps, scfg.cfg_scale),
            serde_json::json!({
                "sampler": SAMPLER_NAME,
                "cfg_scale": scfg.cfg_scale,
                "flow_shift": scfg.shift,
                "conditions": {"prompts": prompts, "negative_prompt": a.negative_prompt.clone().unwrap_or_default()},
            }),
        );
    }
    // The image count and output paths are checked before the encoder runs.
    if let Some(t) = &texts {
        super::checked_outputs(a, t.len())?;
    }
    let conditions = match texts {
        Some(texts) => from_prompts(a, &target, &text_cfg, &scfg, texts)?,
        None => from_files(a, &target, &text_cfg, &scfg)?,
    };
    let (cond, uncond) = (conditions.cond, conditions.uncond);
    let k = cond.shape()[0];
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
                "conditions": conditions.report,
            }),
            sampler_line: format!(
                "{SAMPLER_NAME} {} steps, cfg {} ({guided_steps} guided)",
                scfg.steps, scfg.cfg_scale
            ),
            forwards_line: String::new(),
        },
    )
}

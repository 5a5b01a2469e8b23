//! Text-to-image conditions: prompt embeddings from `--prompt`/`--prompts-file` through the exported text encoder
//! and its tokenizer, or from `--text-embeddings` (and `--negative-embeddings` for CFG) files.

use super::sample::Source;
use super::{report_selection, SampleArgs, Target};
use anyhow::{bail, Context, Result};
use ndarray::{Array3, Axis};
use pixeldit_runtime::backend;
use pixeldit_runtime::prompt::{PromptKind, PromptTokenizer};
use pixeldit_runtime::text_encoder::{self, TextEncoder};
use pixeldit_runtime::{Conditions, SamplerConfig};
use pixeldit_spec::TextConfig;
use std::time::Instant;

/// Repeats a `[1, L, E]` array K times, or checks that it already has K rows.
fn broadcast(a: Array3<f32>, k: usize, what: &str) -> Result<Array3<f32>> {
    match a.shape()[0] {
        n if n == k => Ok(a),
        1 => Ok(ndarray::concatenate(Axis(0), &vec![a.view(); k]).expect("same shapes")),
        n => bail!("{what} hold {n} prompts for {k} images (give 1 or {k})"),
    }
}

/// The text section of the model's metadata.
fn text_config(target: &Target) -> Result<TextConfig> {
    target
        .meta
        .config
        .text
        .clone()
        .context("the model metadata has no text section")
}

/// Where the text conditions come from: prompts (checked against `--batch`), else embedding files; class flags
/// are refused.
pub(super) fn source(a: &SampleArgs, target: &Target) -> Result<Source> {
    text_config(target)?;
    if a.class.is_some() || a.classes.is_some() {
        bail!(
            "{} is a text-to-image model: pass --prompt or --text-embeddings, not class labels",
            target.name
        );
    }
    Ok(match prompts(a)? {
        Some(p) => Source::Prompts(p),
        None => Source::Embeddings,
    })
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

/// Conditions from `--text-embeddings` / `--negative-embeddings` files (and their `--report-json` fields).
pub(super) fn from_files(
    a: &SampleArgs,
    target: &Target,
    scfg: &SamplerConfig,
) -> Result<(Conditions, Option<serde_json::Value>)> {
    let text_cfg = text_config(target)?;
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
    Ok((Conditions::text(cond, uncond), None))
}

/// Conditions from prompts: the text encoder on the backend the flags choose, with its tokenizer (and their
/// `--report-json` fields).
pub(super) fn from_prompts(
    a: &SampleArgs,
    target: &Target,
    scfg: &SamplerConfig,
    texts: Vec<String>,
) -> Result<(Conditions, Option<serde_json::Value>)> {
    let text_cfg = text_config(target)?;
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
    crate::note!("pixeldit-run: text encoder {}:", enc_path.display());
    report_selection(&sel);
    let mut encoder = TextEncoder::new(sel.backend, enc_path, meta, tokenizer)?;
    encoder.check_model(&text_cfg, &target.name)?;
    encoder.check_prompt_length()?;

    let start = Instant::now();
    let prompts = encoder.encode(PromptKind::Prompt, &texts)?;
    for (i, cut) in prompts.truncated.iter().enumerate() {
        if let Some(t) = cut {
            crate::note!("pixeldit-run: prompt {} {t}", i + 1);
        }
    }
    let negative = a.negative_prompt.clone().unwrap_or_default();
    let uncond = if scfg.cfg_scale != 1.0 {
        if !encoder.negative_is_exact() {
            let m = encoder.metadata();
            crate::note!(
                "pixeldit-run: note: the negative prompt runs padded to {} tokens; with this encoder's sliding \
                 window ({}) < 300 its padded positions differ from the official 300-token encoding",
                m.sequence_length, m.sliding_window
            );
        }
        let neg = encoder.encode(PromptKind::Negative, &vec![negative.clone(); texts.len()])?;
        if neg.truncated[0].is_some() {
            crate::note!(
                "pixeldit-run: negative prompt {}",
                neg.truncated[0].as_ref().expect("checked")
            );
        }
        Some(neg.embeddings)
    } else {
        None
    };
    let encoder_s = start.elapsed().as_secs_f64();
    crate::note!(
        "pixeldit-run: encoded {} text(s) in {:.2} s ({}, {})",
        texts.len() + usize::from(uncond.is_some()),
        encoder_s,
        encoder.backend().name(),
        encoder.backend().provider()
    );
    let report = serde_json::json!({
            "prompts": texts,
            "negative_prompt": negative,
            "prompts_truncated": prompts.truncated.iter().filter(|t| t.is_some()).count(),
            "text_encoder": enc_path.display().to_string(),
            "text_encoder_backend": encoder.backend().name(),
            "text_encoder_s": encoder_s,
    });
    Ok((Conditions::text(prompts.embeddings, uncond), Some(report)))
}

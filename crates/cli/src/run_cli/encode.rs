//! `pixeldit-run encode`: texts -> text embeddings `[K, 300, D]` (.npy f32) through the exported text encoder and
//! its tokenizer, by the official recipe; for `--text-embeddings`, `--calib-embeddings` or training data.

use super::{report_selection, BackendArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use pixeldit_runtime::prompt::{PromptKind, PromptTokenizer};
use pixeldit_runtime::text_encoder::{self, TextEncoder};
use pixeldit_runtime::{backend, io};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct EncodeArgs {
    /// The exported text encoder (`pixeldit-export --text-encoder`).
    #[arg(long, value_name = "FILE.onnx")]
    text_encoder: PathBuf,
    /// Its tokenizer.json [default: tokenizer.json next to --text-encoder].
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// A text to encode (repeatable; in order, before --prompts-file).
    #[arg(long)]
    prompt: Vec<String>,
    /// A file of texts, one per line (blank lines skipped).
    #[arg(long, value_name = "FILE")]
    prompts_file: Option<PathBuf>,
    /// Encode the texts as negative prompts (no CHI prefix, 300 tokens) instead of prompts.
    #[arg(long)]
    negative: bool,
    /// Output .npy, f32 [K, 300, D].
    #[arg(short, long, value_name = "FILE.npy")]
    output: PathBuf,
    /// Quiet: print nothing but errors.
    #[arg(short, long)]
    pub(super) quiet: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

pub(crate) fn run(a: &EncodeArgs) -> Result<()> {
    let mut texts = a.prompt.clone();
    if let Some(p) = &a.prompts_file {
        let body = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        texts.extend(
            body.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    if texts.is_empty() {
        bail!("no texts: pass --prompt TEXT or --prompts-file FILE");
    }
    let tok_path = a
        .tokenizer
        .clone()
        .unwrap_or_else(|| a.text_encoder.with_file_name("tokenizer.json"));
    let tokenizer = PromptTokenizer::from_file(&tok_path)?;
    let meta = text_encoder::read_metadata(&a.text_encoder)?;
    let sel = backend::load(&a.text_encoder, &a.backend.options(meta.precision))?;
    report_selection(&sel);
    let mut encoder = TextEncoder::new(sel.backend, &a.text_encoder, meta, tokenizer)?;
    let kind = if a.negative {
        PromptKind::Negative
    } else {
        encoder.check_prompt_length()?;
        PromptKind::Prompt
    };
    let out = encoder.encode(kind, &texts)?;
    for (i, t) in out.truncated.iter().enumerate() {
        if let Some(t) = t {
            crate::note!("pixeldit-run: text {} {t}", i + 1);
        }
    }
    io::write_atomic(
        &a.output,
        &io::npy_bytes(out.embeddings.shape(), out.embeddings.iter().copied()),
    )?;
    crate::say!(
        "wrote {} ({} text(s), {:?})",
        a.output.display(),
        texts.len(),
        out.embeddings.shape()
    );
    Ok(())
}

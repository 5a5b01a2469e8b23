//! `pixeldit-run bench`: per-forward latency of a denoiser or a text encoder on every backend the flags allow,
//! printed as a Markdown table and appended to a file only with `--append FILE`.

use super::BackendArgs;
use crate::bench_table::{self, BenchRow};
use anyhow::{bail, Result};
use clap::Args;
use pixeldit_runtime::model::ModelInfo;
use pixeldit_runtime::{backend, bench, text_encoder, Denoiser};
use pixeldit_spec::text_encoder::{TextEncoderMetadata, TEXT_ENCODER_META_KEY};
use pixeldit_spec::ModelMetadata;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Exported model: a PixelDiT denoiser, or a text encoder (`pixeldit-export --text-encoder`; one forward =
    /// encoding `--batch` texts of its sequence length).
    model: PathBuf,
    /// Timed runs per backend.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Untimed warm-up runs per backend.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Batch size of each forward.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Also append the rows to this Markdown table (created with a header if missing), e.g. BENCHMARKS.md.
    #[arg(long, value_name = "FILE")]
    append: Option<PathBuf>,
    /// Quiet: print nothing but errors (the table too; use --append to keep it).
    #[arg(short, long)]
    pub(super) quiet: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

/// What is benchmarked: a PixelDiT denoiser or a text encoder.
enum Benched {
    Denoiser(Box<ModelMetadata>),
    TextEncoder(TextEncoderMetadata),
}

pub(crate) fn run(a: &BenchArgs) -> Result<()> {
    let info = ModelInfo::read(&a.model)?;
    let benched = match info.metadata_prop(TEXT_ENCODER_META_KEY) {
        Some(_) => Benched::TextEncoder(text_encoder::read_metadata(&a.model)?),
        None => Benched::Denoiser(Box::new(info.pixeldit_metadata()?)),
    };
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let precision = match &benched {
        Benched::Denoiser(m) => m.precision,
        Benched::TextEncoder(m) => m.precision,
    };
    let opts = a.backend.options(precision);
    let (candidates, explicit) = opts.plan()?;
    let command = std::iter::once("pixeldit-run".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let file = a
        .model
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let model_desc = match &benched {
        Benched::Denoiser(m) => format!(
            "{file} ({} {}x{}, {})",
            m.config.name, m.height, m.width, m.attention
        ),
        Benched::TextEncoder(m) => format!("{file} (text encoder {}, {} tokens)", m.name, m.sequence_length),
    };
    let (date, machine) = (bench_table::today(), bench_table::machine());
    let mut rows = Vec::new();
    for c in candidates {
        let b = match backend::load_candidate(&a.model, c, &opts, !explicit) {
            Ok(b) => b,
            Err(e) if explicit => return Err(e.into()),
            Err(e) => {
                crate::note!("pixeldit-run: skipped {c}: {}", backend::short_reason(&e));
                continue;
            }
        };
        for n in b.notes() {
            crate::note!("pixeldit-run: {}: {n}", b.name());
        }
        let name = format!("{}/{}", b.name(), b.provider());
        let s = match &benched {
            Benched::Denoiser(meta) => {
                let mut denoiser = Denoiser::new(b, meta);
                bench::bench_forward(&mut denoiser, meta, a.batch, a.warmup, a.runs)?
            }
            Benched::TextEncoder(meta) => {
                let mut b = b;
                bench::bench_text_encoder(b.as_mut(), meta, a.batch, a.warmup, a.runs)?
            }
        };
        rows.push(BenchRow {
            date: date.clone(),
            machine: machine.clone(),
            command: command.clone(),
            model: model_desc.clone(),
            precision: precision.to_string(),
            backend: name,
            batch: a.batch,
            stats: s,
        });
    }
    if rows.is_empty() {
        bail!("no backend could run {}", a.model.display());
    }
    if !crate::log::quiet() {
        print!("{}", bench_table::TABLE_HEAD);
    }
    for r in &rows {
        crate::say!("{}", r.markdown());
    }
    if let Some(path) = &a.append {
        bench_table::append_rows(path, &rows)?;
        crate::note!(
            "pixeldit-run: appended {} row(s) to {}",
            rows.len(),
            path.display()
        );
    }
    Ok(())
}

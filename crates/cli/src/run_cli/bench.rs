//! `pixeldit-run bench`: per-forward latency on every backend the flags allow, printed as a Markdown table and
//! appended to a file only with `--append FILE`.

use super::BackendArgs;
use crate::bench_table::{self, BenchRow};
use anyhow::{bail, Result};
use clap::Args;
use pixeldit_runtime::backend;
use pixeldit_runtime::model::ModelInfo;
use pixeldit_runtime::Denoiser;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Exported model.
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
    #[command(flatten)]
    backend: BackendArgs,
}

pub(crate) fn run(a: &BenchArgs) -> Result<()> {
    let info = ModelInfo::read(&a.model)?;
    let meta = info.pixeldit_metadata()?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let opts = a.backend.options(meta.precision);
    let (candidates, explicit) = opts.plan()?;
    let command = std::iter::once("pixeldit-run".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let model_desc = format!(
        "{} ({} {}x{}, {})",
        a.model
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        meta.config.name,
        meta.height,
        meta.width,
        meta.attention
    );
    let (date, machine) = (bench_table::today(), bench_table::machine());
    let mut rows = Vec::new();
    for c in candidates {
        let b = match backend::load_candidate(&a.model, c, &opts, !explicit) {
            Ok(b) => b,
            Err(e) if explicit => return Err(e.into()),
            Err(e) => {
                eprintln!("pixeldit-run: skipped {c}: {}", backend::short_reason(&e));
                continue;
            }
        };
        for n in b.notes() {
            eprintln!("pixeldit-run: {}: {n}", b.name());
        }
        let name = format!("{}/{}", b.name(), b.provider());
        let mut denoiser = Denoiser::new(b, &meta);
        let s = pixeldit_runtime::bench::bench_forward(&mut denoiser, &meta, a.batch, a.warmup, a.runs)?;
        rows.push(BenchRow {
            date: date.clone(),
            machine: machine.clone(),
            command: command.clone(),
            model: model_desc.clone(),
            precision: meta.precision.to_string(),
            backend: name,
            batch: a.batch,
            stats: s,
        });
    }
    if rows.is_empty() {
        bail!("no backend could run {}", a.model.display());
    }
    print!("{}", bench_table::TABLE_HEAD);
    for r in &rows {
        println!("{}", r.markdown());
    }
    if let Some(path) = &a.append {
        bench_table::append_rows(path, &rows)?;
        eprintln!(
            "pixeldit-run: appended {} row(s) to {}",
            rows.len(),
            path.display()
        );
    }
    Ok(())
}

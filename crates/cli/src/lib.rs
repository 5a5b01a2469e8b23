//! The pixeldit application: the `pixeldit-export` and `pixeldit-run` binaries, and the orchestration that crosses
//! the libraries (`pixeldit-exporter`, `pixeldit-quantize`, `pixeldit-runtime`, `pixeldit-triton`), which stand
//! side by side and never depend on each other.
//!
//! Module map:
//! * [`export_cli`]: `pixeldit-export` (flags, progress, summary); [`quant_args`], [`triton_args`]: its
//!   quantization and Triton repository flags.
//! * [`encoder_export`]: `pixeldit-export --text-encoder` (the Gemma-2 text encoder).
//! * [`run_cli`]: `pixeldit-run` (sampling from class labels, prompts or text embeddings; `bench`).
//! * [`variant`]: one exported variant of any precision (exporter graph -> calibration -> quantizer -> file).
//! * [`calibrate`]: the calibration driver (tapped fp32 model through the runtime's sampler).
//! * [`accuracy`]: `--accuracy-report` (a variant against the fp32 export, on the CPU).
//! * [`bench_table`]: the `BENCHMARKS.md` rows of `pixeldit-run bench --append`.
//! * [`progress`]: indicatif bars, drawn only on a terminal.
//! * [`log`]: notes and summaries that `-q` silences.
//!
//! Errors are `anyhow` here (this is the application); the libraries each have one `thiserror` enum.

pub mod accuracy;
pub mod bench_table;
pub mod calibrate;
pub mod encoder_export;
pub mod export_cli;
pub mod log;
pub mod progress;
pub mod quant_args;
pub mod run_cli;
pub mod triton_args;
pub mod variant;

use std::path::PathBuf;
use std::process::ExitCode;

/// Prints an error with its whole chain as `NAME: error: ...` and maps it to exit code 2.
pub fn exit_code(result: anyhow::Result<()>, name: &str) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The prompts of a prompts file: one per line, surrounding whitespace trimmed, blank lines skipped (possibly none).
pub fn prompt_lines(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context;
    let body =
        std::fs::read_to_string(path).with_context(|| format!("reading prompts from {}", path.display()))?;
    Ok(body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// [`prompt_lines`], and an error when the file holds no prompt.
pub fn read_prompts_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let prompts = prompt_lines(path)?;
    if prompts.is_empty() {
        anyhow::bail!("{}: no prompts (one per line)", path.display());
    }
    Ok(prompts)
}

/// A file of the source workspace (committed weights, presets): relative to the current directory, else to this
/// crate's workspace.
pub fn workspace_file(rel: &str) -> Option<PathBuf> {
    [
        PathBuf::from(rel),
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(rel),
    ]
    .into_iter()
    .find(|p| p.exists())
}

//! The pixeldit application: the `pixeldit-export` and `pixeldit-run` binaries, and the orchestration that crosses
//! the libraries (`pixeldit-exporter`, `pixeldit-quantize`, `pixeldit-runtime`, `pixeldit-triton`). Application
//! policy lives here, not in the libraries: e.g. where the source checkout's committed weights and ONNX Runtime
//! library are ([`source_workspace`]).
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

use pixeldit_runtime::LoadOptions;
use std::path::{Path, PathBuf};
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

/// The source workspace this binary was built from (the checkout's root). Application policy, kept out of the
/// libraries: the committed weights ([`workspace_file`]) and the ONNX Runtime library of `scripts/setup.sh`
/// ([`load_options`]) are looked up there after the current directory.
pub fn source_workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// A file of the source workspace (committed weights): relative to the current directory, else to
/// [`source_workspace`].
pub fn workspace_file(rel: &str) -> Option<PathBuf> {
    [PathBuf::from(rel), source_workspace().join(rel)]
        .into_iter()
        .find(|p| p.exists())
}

/// The default [`LoadOptions`] of the binaries: the ONNX Runtime library is looked up (after `--ort-lib` and
/// `ORT_DYLIB_PATH`) in `.cache/onnxruntime*/` under the current directory, then under [`source_workspace`].
pub fn load_options() -> LoadOptions {
    LoadOptions::default().with_ort_search_dir(source_workspace())
}

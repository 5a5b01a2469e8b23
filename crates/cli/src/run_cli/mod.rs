//! `pixeldit-run`: sample images from an exported PixelDiT ONNX model, or benchmark its forward pass.
//!
//! ```text
//! pixeldit-run model.onnx --class 207 --seed 0 --steps 100 --cfg 2.75 -o out.png
//! pixeldit-run model.onnx --classes 1,2,3 -o out.png          # out_000.png, out_001.png, out_002.png
//! pixeldit-run model.onnx --class 7 --batch 4 --grid -o g.png # one 2x2 grid image
//! pixeldit-run t2i.onnx --prompt "a red fox" --text-encoder gemma.onnx --tokenizer tokenizer.json -o fox.png
//! pixeldit-run t2i.onnx --text-embeddings fox.npy --negative-embeddings empty.npy -o fox.png
//! pixeldit-run bench model.onnx --runs 20 --warmup 3 --batch 1 [--append BENCHMARKS.md]
//! pixeldit-run encode --text-encoder gemma.onnx --prompt "a red fox" -o fox.npy
//! ```
//!
//! * [`args`]: the flags; [`sample`]: one sampling path for every model kind (the runtime's generation API),
//!   with [`class`] and [`text`] turning flags into conditions; [`remote`]: `--triton`; [`bench`]:
//!   `pixeldit-run bench`; [`encode`]: `pixeldit-run encode`.
//! * This module: the command line, and where the forwards run ([`Target`]).

mod args;
mod bench;
mod class;
mod encode;
mod remote;
mod sample;
mod text;

pub(crate) use args::{BackendArgs, SampleArgs};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use pixeldit_runtime::backend::{self, Backend, Candidate, Selection};
use pixeldit_runtime::model::ModelInfo;
use pixeldit_spec::ModelMetadata;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pixeldit-run",
    version,
    about = "Sample images from an exported PixelDiT ONNX model (ONNX Runtime or tract)",
    long_about = "Sample images from an exported PixelDiT ONNX model.\n\n\
Sampler defaults (sampler, steps, cfg, interval, shift) come from the model's pixeldit.metadata.\n\
Image size: the model's; a model exported with --dynamic-size also takes --height/--width (multiples of 16 in its \
range) or --aspect-ratio H:W (the nearest size of its bucket table).\n\
Noise: ChaCha8Rng::seed_from_u64(--seed) drawing StandardNormal f32, one stream for all images in order \
image, channel, row, column; --noise FILE.npy (f32 [K,3,H,W]) replaces it.\n\
Output: with one image, -o is written as is; with K > 1 images, -o out.png writes out_000.png .. \
out_{K-1}.png, or one grid image (ceil(sqrt(K)) columns) at -o with --grid. Files are written to a temporary \
name and renamed, so an error leaves no partial output.\n\n\
ONNX Runtime library lookup: --ort-lib, then ORT_DYLIB_PATH, then .cache/onnxruntime/libonnxruntime.so.1.31.1 \
under the current directory and under the source workspace.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    sample: SampleArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Measure per-forward latency on every available backend; print a table (and append it to a file with
    /// --append).
    Bench(bench::BenchArgs),
    /// Encode texts into text embeddings [K, 300, D] (.npy) with the exported text encoder and its tokenizer (the
    /// official recipe), e.g. for --text-embeddings or --calib-embeddings.
    Encode(encode::EncodeArgs),
}

/// `main` of `pixeldit-run`: errors print their whole chain and exit 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::log::set_quiet(match &cli.command {
        Some(Command::Bench(b)) => b.quiet,
        Some(Command::Encode(e)) => e.quiet,
        None => cli.sample.quiet,
    });
    let result = match cli.command {
        Some(Command::Bench(b)) => bench::run(&b),
        Some(Command::Encode(e)) => encode::run(&e),
        None => run_sample(&cli.sample),
    };
    crate::exit_code(result, "pixeldit-run")
}

/// A model's metadata and where its forwards run: a local file on a chosen backend, or a Triton server.
pub(crate) struct Target {
    /// The model's metadata.
    pub meta: ModelMetadata,
    /// What messages call the model: the file, else `Triton model NAME`.
    pub name: String,
    remote: Option<Box<dyn Backend>>,
    /// The server's pipeline model for this denoiser (one request per image), when it has one.
    pub pipeline: Option<pixeldit_triton::TritonModel>,
}

fn run_sample(a: &SampleArgs) -> Result<()> {
    let remote = remote::connect(a)?;
    let (meta, remote, pipeline) = match (a.model.as_deref(), remote) {
        (Some(model), r) => {
            let (backend, pipeline) = match r {
                Some(r) => (Some(r.backend), r.pipeline),
                None => (None, None),
            };
            (ModelInfo::read(model)?.pixeldit_metadata()?, backend, pipeline)
        }
        (
            None,
            Some(remote::Remote {
                backend,
                meta: Some(meta),
                pipeline,
            }),
        ) => (meta, Some(backend), pipeline),
        (None, _) => bail!("a model file is required"),
    };
    let name = match (&a.model, &a.triton_model) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(n)) => format!("Triton model {n}"),
        (None, None) => bail!("a model file is required"),
    };
    let target = Target {
        meta,
        name,
        remote,
        pipeline,
    };
    sample::run(a, target)
}

impl Target {
    /// The backend that runs the forwards: the Triton server when `--triton` connected one, else the model file on
    /// the backend the flags choose (the choice and skipped candidates are reported on stderr; the candidate is
    /// returned for the files that must run beside it, such as the pixel level of the patch cache).
    pub(crate) fn open(
        self,
        a: &SampleArgs,
    ) -> Result<(pixeldit_runtime::Denoiser, ModelMetadata, Option<Candidate>)> {
        // The backend flags are checked even when a server runs the model.
        let opts = a.load_options(self.meta.precision);
        let (backend, candidate) = match self.remote {
            Some(r) => {
                crate::note!("pixeldit-run: using triton ({})", r.provider());
                (r, None)
            }
            None => {
                let model = a.model.as_deref().context("a model file is required")?;
                let sel = backend::load(model, &opts)?;
                report_selection(&sel);
                (sel.backend, Some(sel.candidate))
            }
        };
        Ok((
            pixeldit_runtime::Denoiser::new(backend, &self.meta),
            self.meta,
            candidate,
        ))
    }
}

/// Reports on stderr (unless `-q`) which backend was chosen and why others were skipped.
pub(crate) fn report_selection(sel: &Selection) {
    for (names, reason) in backend::grouped_skips(&sel.skipped) {
        crate::note!("pixeldit-run: skipped {names}: {reason}");
    }
    crate::note!(
        "pixeldit-run: using {} ({})",
        sel.candidate,
        sel.backend.provider()
    );
    for n in sel.backend.notes() {
        crate::note!("pixeldit-run: {}: {n}", sel.backend.name());
    }
}

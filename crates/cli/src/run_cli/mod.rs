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
//! * [`class`]: class-conditional sampling; [`text`]: text-to-image sampling; [`bench`]: `pixeldit-run bench`.
//! * This module: the flags, backend selection and what every sampling run shares (noise, output paths,
//!   encoding, the report and the summary line).

mod bench;
mod class;
mod encode;
mod text;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ndarray::{Array4, Axis};
use pixeldit_runtime::backend::{self, Backend, BackendKind, Device, LoadOptions, Selection};
use pixeldit_runtime::model::ModelInfo;
use pixeldit_runtime::{io, RuntimeError};
use pixeldit_spec::{ModelKind, ModelMetadata, Precision};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pixeldit-run",
    version,
    about = "Sample images from an exported PixelDiT ONNX model (ONNX Runtime or tract)",
    long_about = "Sample images from an exported PixelDiT ONNX model.\n\n\
Sampler defaults (sampler, steps, cfg, interval, shift) come from the model's pixeldit.metadata.\n\
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

/// Backend selection flags (shared by sampling and `bench`).
#[derive(Args, Clone)]
pub(crate) struct BackendArgs {
    /// Backend: auto (TensorRT, CUDA, ORT CPU, tract: first that loads), ort or tract.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Device: auto, tensorrt, cuda or cpu. An explicit GPU device that fails is an error, never a fallback.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
    /// Path of libonnxruntime.so.1.31.1 (overrides ORT_DYLIB_PATH).
    #[arg(long, value_name = "FILE")]
    ort_lib: Option<PathBuf>,
    /// TensorRT engine cache directory (default: .trt-cache next to the model).
    #[arg(long, value_name = "DIR")]
    trt_cache: Option<PathBuf>,
    /// Threads for ONNX Runtime's intra-op pool and tract's matrix products (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// ONNX Runtime graph optimization level: 0 off, 1 basic, 2 extended, 3 all. Level 2+ fuses INT8 Q/DQ MatMuls
    /// into a u8s8 kernel that can saturate on CPUs without AVX-VNNI; use 1 to compare int8 variants.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
    ort_opt_level: u8,
    /// Let idle ONNX Runtime worker threads spin. Faster on an idle machine (B-256 batch 2: ~4%), slower when other
    /// work shares the cores (up to ~30%), hence off by default.
    #[arg(long)]
    ort_spin: bool,
}

impl BackendArgs {
    pub(crate) fn options(&self, precision: Precision) -> LoadOptions {
        let mut o = crate::load_options()
            .with_backend(self.backend)
            .with_device(self.device)
            .with_ort_lib(self.ort_lib.clone())
            .with_trt_cache_dir(self.trt_cache.clone())
            .with_precision(Some(precision));
        o.threads = self.threads;
        o.ort_opt_level = Some(self.ort_opt_level);
        o.ort_spinning = self.ort_spin;
        o
    }
}

/// `--sampler`: the class-conditional flow updates, or the text-to-image DPM-Solver++ 2M.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SamplerArg {
    /// Euler, then 2-step Adams-Bashforth (class-conditional, official).
    #[value(name = "flow_dpm")]
    FlowDpm,
    /// Euler (class-conditional).
    Euler,
    /// Heun (class-conditional, two forwards per step).
    Heun,
    /// DPM-Solver++ 2M (text-to-image).
    #[value(name = "dpmpp_2m")]
    Dpmpp2m,
}

#[derive(Args)]
pub(crate) struct SampleArgs {
    /// Exported model (.onnx with pixeldit.metadata). With --triton it is optional and only supplies the
    /// metadata (default: the server's model configuration).
    #[arg(required_unless_present = "triton")]
    model: Option<PathBuf>,
    /// Class label of every image.
    #[arg(long, conflicts_with = "classes")]
    class: Option<i64>,
    /// Comma-separated class labels, one image each.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    classes: Option<Vec<i64>>,
    /// Images per run (with --class, or repeating one prompt's embeddings).
    #[arg(long)]
    batch: Option<usize>,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps (default from metadata).
    #[arg(long)]
    steps: Option<usize>,
    /// CFG weight (default from metadata; 1 disables guidance and the uncond half of the batch).
    #[arg(long)]
    cfg: Option<f32>,
    /// Sampler (default from metadata): flow_dpm, euler or heun for class-conditional models, dpmpp_2m for
    /// text-to-image models.
    #[arg(long, value_enum)]
    sampler: Option<SamplerArg>,
    /// Time shift (default from metadata).
    #[arg(long)]
    shift: Option<f64>,
    /// Guidance interval lo,hi (strict lo < t < hi; default from metadata).
    #[arg(long, value_name = "LO,HI", value_parser = parse_interval)]
    interval: Option<(f64, f64)>,
    /// Output PNG (see --grid for several images).
    #[arg(short, long, default_value = "out.png")]
    output: PathBuf,
    /// With several images, write one grid PNG at -o instead of numbered files.
    #[arg(long)]
    grid: bool,
    /// Initial noise, .npy f32 [K,3,H,W] (replaces --seed).
    #[arg(long, value_name = "FILE.npy")]
    noise: Option<PathBuf>,
    /// Text-to-image models: the prompt. It is tokenized with --tokenizer and encoded with --text-encoder by the
    /// official recipe (CHI system prompt, len(tokenize(CHI)) + 298 tokens, BOS and the last 299 positions kept);
    /// a longer prompt is truncated as the recipe does, with a note on stderr. `--batch K` repeats it.
    #[arg(long, conflicts_with_all = ["text_embeddings", "prompts_file"])]
    prompt: Option<String>,
    /// Text-to-image models: a file with one prompt per line (blank lines skipped), one image each.
    #[arg(long, value_name = "FILE", conflicts_with = "text_embeddings")]
    prompts_file: Option<PathBuf>,
    /// Text-to-image models: the negative prompt for CFG with --prompt/--prompts-file (no CHI prefix, 300 tokens)
    /// [default: "", the empty prompt].
    #[arg(long, conflicts_with = "negative_embeddings")]
    negative_prompt: Option<String>,
    /// The Gemma-2 text encoder exported by `pixeldit-export --text-encoder` (with --prompt/--prompts-file). It
    /// runs on the same backend selection as the model (--backend, --device), locally also with --triton.
    #[arg(long, value_name = "FILE.onnx")]
    text_encoder: Option<PathBuf>,
    /// The encoder's tokenizer.json [default: tokenizer.json next to --text-encoder].
    #[arg(long, value_name = "FILE")]
    tokenizer: Option<PathBuf>,
    /// Text-to-image models: hidden states of the prompt, `[300, 2304]` or `[K, 300, 2304]` (.npy f32, or
    /// safetensors F32/F16/BF16).
    ///
    /// These are the last hidden state of Gemma-2-2B-IT (`AutoModelForCausalLM.get_decoder()`, after its final
    /// norm) for the prompt prefixed with the model's "CHI" system prompt, tokenized with right padding to
    /// len(tokenize(chi)) + 300 - 2 tokens, of which token 0 (BOS) and the last 299 positions are kept: 300 rows of
    /// 2304, padding positions included. `--batch K` repeats one prompt K times. See README "Text-to-image".
    #[arg(long, value_name = "FILE")]
    text_embeddings: Option<PathBuf>,
    /// Text-to-image models: hidden states of the negative prompt for CFG (the empty prompt "" for plain guidance):
    /// encoded without the CHI prefix, padded to 300 tokens, the first 300 rows; same formats as --text-embeddings.
    #[arg(long, value_name = "FILE")]
    negative_embeddings: Option<PathBuf>,
    /// Also save the final float x (before quantization to u8) as .npy f32 [K,3,H,W].
    #[arg(long, value_name = "FILE.npy")]
    save_raw: Option<PathBuf>,
    /// Also write what ran as JSON: model, backend, provider, precision, sampler settings, conditions, noise
    /// source, ms per step and total seconds (for scripts; the same as the summary line on stdout).
    #[arg(long, value_name = "FILE.json")]
    report_json: Option<PathBuf>,
    /// No progress bar (it is drawn only when stderr is a terminal anyway).
    #[arg(long, short)]
    quiet: bool,
    /// Run the forward passes on a Triton Inference Server, e.g. http://127.0.0.1:8000 (KServe v2 HTTP with
    /// binary tensors), with the same samplers; a model written by `pixeldit-export --triton-repo` carries its
    /// metadata in the server's model configuration. --backend/--device do not apply.
    #[arg(long, value_name = "URL", requires = "triton_model")]
    triton: Option<String>,
    /// Model name on the Triton server (with --triton).
    #[arg(long = "model", id = "triton_model", value_name = "NAME", requires = "triton")]
    triton_model: Option<String>,
    /// Model version on the Triton server (default: the server's version policy).
    #[arg(long, value_name = "V", requires = "triton")]
    triton_version: Option<String>,
    /// With --triton: drive every step from this client even when the server has the pipeline model NAME_pipeline
    /// (which otherwise samples each image inside the server, one request per image).
    #[arg(long, requires = "triton")]
    triton_step_wise: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

impl SampleArgs {
    /// `--triton URL`.
    pub(crate) fn triton_url(&self) -> Option<&str> {
        self.triton.as_deref()
    }
    /// `--model NAME` (with `--triton`).
    pub(crate) fn triton_model_name(&self) -> Option<&str> {
        self.triton_model.as_deref()
    }
    /// `--triton-step-wise`.
    pub(crate) fn triton_step_wise(&self) -> bool {
        self.triton_step_wise
    }
    /// `--triton-version V`.
    pub(crate) fn triton_version(&self) -> Option<&str> {
        self.triton_version.as_deref()
    }
    /// The local model file, when given.
    pub(crate) fn model_path(&self) -> Option<&Path> {
        self.model.as_deref()
    }
}

fn parse_interval(s: &str) -> std::result::Result<(f64, f64), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [lo, hi] = parts.as_slice() else {
        return Err(format!("expected LO,HI, got '{s}'"));
    };
    let p = |v: &str| v.parse::<f64>().map_err(|_| format!("'{v}' is not a number"));
    Ok((p(lo)?, p(hi)?))
}

/// `main` of `pixeldit-run`: errors print their whole chain and exit 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
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
    let remote = crate::remote::connect(a)?;
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
            Some(crate::remote::Remote {
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
    match target.meta.config.kind {
        ModelKind::T2i => text::run(a, target),
        ModelKind::C2i => class::run(a, target),
    }
}

impl Target {
    /// The backend that runs the forwards: the Triton server when `--triton` connected one, else the model file on
    /// the backend the flags choose (the choice and skipped candidates are reported on stderr).
    pub(crate) fn open(self, a: &SampleArgs) -> Result<(pixeldit_runtime::Denoiser, ModelMetadata)> {
        // The backend flags are checked even when a server runs the model.
        let opts = a.backend.options(self.meta.precision);
        let backend = match self.remote {
            Some(r) => {
                eprintln!("pixeldit-run: using triton ({})", r.provider());
                r
            }
            None => {
                let model = a.model.as_deref().context("a model file is required")?;
                let sel = backend::load(model, &opts)?;
                report_selection(&sel);
                sel.backend
            }
        };
        Ok((pixeldit_runtime::Denoiser::new(backend, &self.meta), self.meta))
    }
}

pub(crate) fn report_selection(sel: &Selection) {
    for (names, reason) in backend::grouped_skips(&sel.skipped) {
        eprintln!("pixeldit-run: skipped {names}: {reason}");
    }
    eprintln!(
        "pixeldit-run: using {} ({})",
        sel.candidate,
        sel.backend.provider()
    );
    for n in sel.backend.notes() {
        eprintln!("pixeldit-run: {}: {n}", sel.backend.name());
    }
}

/// The initial noise: `--noise FILE.npy` (which must have `shape`), else seeded noise from `--seed`.
fn initial_noise(a: &SampleArgs, shape: [usize; 4]) -> Result<Array4<f32>> {
    Ok(match &a.noise {
        Some(p) => {
            let arr = io::read_npy(p)?;
            if arr.shape() != shape {
                return Err(RuntimeError::NoiseShape {
                    path: p.clone(),
                    found: arr.shape().to_vec(),
                    expected: shape.to_vec(),
                }
                .into());
            }
            arr.into_dimensionality().expect("checked shape")
        }
        None => io::seeded_noise(a.seed, shape),
    })
}

/// The image paths to write for `k` images (`-o` as is with one image or `--grid`, else numbered), after checking
/// that their directories, and those of `--save-raw` and `--report-json`, exist.
fn checked_output_paths(a: &SampleArgs, k: usize) -> Result<Vec<PathBuf>> {
    let out_paths: Vec<PathBuf> = if k == 1 || a.grid {
        vec![a.output.clone()]
    } else {
        io::numbered_paths(&a.output, k)
    };
    for p in out_paths.iter().chain(&a.save_raw).chain(&a.report_json) {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!("output directory {} does not exist", dir.display());
        }
    }
    Ok(out_paths)
}

/// What every sampling run prepares before its first forward: the noise and the checked output paths.
pub(crate) struct Prepared {
    /// `[K, C, H, W]` initial noise.
    pub noise: Array4<f32>,
    /// Image files to write.
    pub out_paths: Vec<PathBuf>,
}

/// Checks that `k > 0` images are requested and returns their output paths (see [`checked_output_paths`]).
pub(crate) fn checked_outputs(a: &SampleArgs, k: usize) -> Result<Vec<PathBuf>> {
    if k == 0 {
        bail!("no images requested (--batch 0)");
    }
    checked_output_paths(a, k)
}

/// Noise for `k` images of `meta` and the output paths (checked before the expensive part).
pub(crate) fn prepare(a: &SampleArgs, meta: &ModelMetadata, k: usize) -> Result<Prepared> {
    let out_paths = checked_outputs(a, k)?;
    let shape = [k, meta.config.in_channels, meta.height, meta.width];
    Ok(Prepared {
        noise: initial_noise(a, shape)?,
        out_paths,
    })
}

/// What a finished run reports: the JSON fields specific to its kind and the middle of the summary line.
pub(crate) struct Finished<'a> {
    pub meta: &'a ModelMetadata,
    pub backend: &'a dyn Backend,
    pub steps: usize,
    pub seconds: f64,
    /// Extra `--report-json` fields (sampler settings, conditions).
    pub report: serde_json::Value,
    /// Sampler description for the summary line, e.g. `flow_dpm 25 steps, cfg 3`.
    pub sampler_line: String,
    /// Forward description for the summary line, e.g. `50 forwards of batch 2, `.
    pub forwards_line: String,
}

/// Encodes the `[K, 3, H, W]` samples `x` (one image or a grid at `-o`, else one image per path), `--save-raw`
/// and `--report-json`, writes them all atomically and prints the summary line.
pub(crate) fn finish(a: &SampleArgs, x: &Array4<f32>, out_paths: &[PathBuf], f: Finished<'_>) -> Result<()> {
    let (width, height) = (f.meta.width, f.meta.height);
    let k = x.shape()[0];
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    if k == 1 || a.grid {
        let (rgb, w, h) = if k == 1 {
            (io::image_rgb8(x.index_axis(Axis(0), 0)), width, height)
        } else {
            io::grid_rgb8(x.view())
        };
        files.push((a.output.clone(), io::png_bytes(&a.output, &rgb, w, h)?));
    } else {
        for (p, img) in out_paths.iter().zip(x.outer_iter()) {
            files.push((p.clone(), io::png_bytes(p, &io::image_rgb8(img), width, height)?));
        }
    }
    if let Some(raw) = &a.save_raw {
        files.push((raw.clone(), io::npy_bytes(x.shape(), x.iter().copied())));
    }
    let ms_per_step = f.seconds * 1e3 / f.steps as f64;
    if let Some(path) = &a.report_json {
        let mut report = serde_json::json!({
            "model": a.model.as_ref().map(|m| m.display().to_string()).or_else(|| a.triton_model.clone()),
            "kind": match f.meta.config.kind { ModelKind::T2i => "t2i", ModelKind::C2i => "c2i" },
            "backend": f.backend.name(),
            "provider": f.backend.provider(),
            "precision": f.meta.precision.to_string(),
            "steps": f.steps,
            "images": k,
            "noise": match &a.noise {
                Some(p) => p.display().to_string(),
                None => format!("seed {}", a.seed),
            },
            "ms_per_step": ms_per_step,
            "total_s": f.seconds,
        });
        if let (Some(obj), serde_json::Value::Object(extra)) = (report.as_object_mut(), f.report) {
            obj.extend(extra);
        }
        let outputs: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        report["outputs"] = serde_json::json!(outputs);
        let text = serde_json::to_string_pretty(&report).context("report JSON")? + "\n";
        files.push((path.clone(), text.into_bytes()));
    }
    io::write_all_atomic(&files)?;
    for (p, _) in &files {
        eprintln!("pixeldit-run: wrote {}", p.display());
    }
    println!(
        "backend {} | provider {} | precision {} | {} | {:.1} ms/step ({}{:.2} s total)",
        f.backend.name(),
        f.backend.provider(),
        f.meta.precision,
        f.sampler_line,
        ms_per_step,
        f.forwards_line,
        f.seconds
    );
    Ok(())
}

/// Images requested in flight at once from a pipeline model.
const PIPELINE_CONCURRENCY: usize = 16;

/// `--triton` with a pipeline model on the server (`NAME_pipeline`): one request per image, up to
/// [`PIPELINE_CONCURRENCY`] in flight; the samples come back as `x` and are written like local ones.
pub(crate) fn sample_in_server(
    a: &SampleArgs,
    target: Target,
    requests: Vec<pixeldit_triton::PipelineRequest>,
    steps: usize,
    sampler_line: String,
    report: serde_json::Value,
) -> Result<()> {
    let prepared = prepare(a, &target.meta, requests.len())?;
    let pipeline = target
        .pipeline
        .as_ref()
        .context("no pipeline model on the server")?;
    let name = pipeline.name().to_string();
    eprintln!(
        "pixeldit-run: using the Triton pipeline model {name} (one request per image, sampled in the server)"
    );
    let bar = crate::progress::steps(requests.len(), a.quiet);
    let start = std::time::Instant::now();
    let mut samples = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(PIPELINE_CONCURRENCY) {
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|r| s.spawn(move || pipeline.generate(r)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("request thread"))
                .collect()
        });
        for r in results {
            let (_, x) = r?;
            samples.push(x);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let views: Vec<_> = samples.iter().map(|x| x.view().insert_axis(Axis(0))).collect();
    let x = ndarray::concatenate(Axis(0), &views)?
        .into_dimensionality::<ndarray::Ix4>()
        .context("the pipeline returned samples of another rank")?;
    let backend = target
        .remote
        .as_deref()
        .context("the pipeline runs on a Triton server")?;
    let mut report = report;
    report["triton_pipeline"] = serde_json::json!(name);
    report["requests"] = serde_json::json!(requests.len());
    finish(
        a,
        &x,
        &prepared.out_paths,
        Finished {
            meta: &target.meta,
            backend,
            steps,
            seconds,
            report,
            sampler_line: format!("{sampler_line}, in the server ({name})"),
            forwards_line: format!("{} pipeline request(s), ", requests.len()),
        },
    )
}

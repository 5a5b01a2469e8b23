//! `pixeldit-run`: sample images from an exported PixelDiT ONNX model, or benchmark its forward pass.
//!
//! ```text
//! pixeldit-run model.onnx --class 207 --seed 0 --steps 100 --cfg 2.75 -o out.png
//! pixeldit-run model.onnx --classes 1,2,3 -o out.png          # out_000.png, out_001.png, out_002.png
//! pixeldit-run model.onnx --class 7 --batch 4 --grid -o g.png # one 2x2 grid image
//! pixeldit-run bench model.onnx --runs 20 --warmup 3 --batch 1
//! ```

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use ndarray::{Array4, Axis};
use pixeldit_runtime::backend::{self, Backend, BackendKind, Device, LoadOptions, Selection};
use pixeldit_runtime::model::ModelInfo;
use pixeldit_runtime::{bench, io, sampler, RuntimeError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

mod t2i_cli;

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
    /// Measure per-forward latency on every available backend and append rows to BENCHMARKS.md.
    Bench(BenchArgs),
}

#[derive(Args, Clone)]
struct BackendArgs {
    /// Backend: auto (TensorRT, CUDA, ORT CPU, tract, first that loads), ort or tract.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Device: auto, tensorrt, cuda or cpu. An explicit GPU device that fails is an error, never a fallback.
    #[arg(long, default_value = "auto")]
    device: String,
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
    fn options(&self, precision: pixeldit_spec::Precision) -> Result<LoadOptions> {
        let mut o = LoadOptions::default()
            .with_backend(self.backend.parse::<BackendKind>()?)
            .with_device(self.device.parse::<Device>()?)
            .with_ort_lib(self.ort_lib.clone())
            .with_trt_cache_dir(self.trt_cache.clone())
            .with_precision(Some(precision));
        o.threads = self.threads;
        o.ort_opt_level = Some(self.ort_opt_level);
        o.ort_spinning = self.ort_spin;
        Ok(o)
    }
}

#[derive(Args)]
struct SampleArgs {
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
    /// Images per run with --class (default 1).
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
    /// Sampler: flow_dpm, euler or heun (default from metadata).
    #[arg(long)]
    sampler: Option<String>,
    /// Time shift (default from metadata).
    #[arg(long)]
    shift: Option<f64>,
    /// Guidance interval lo,hi (strict lo < t < hi; default from metadata).
    #[arg(long, value_name = "LO,HI")]
    interval: Option<String>,
    /// Output PNG (see --grid for several images).
    #[arg(short, long, default_value = "out.png")]
    output: PathBuf,
    /// With several images, write one grid PNG at -o instead of numbered files.
    #[arg(long)]
    grid: bool,
    /// Initial noise, .npy f32 [K,3,H,W] (replaces --seed).
    #[arg(long, value_name = "FILE.npy")]
    noise: Option<PathBuf>,
    /// Text-to-image models: hidden states of the prompt, `[300, 2304]` or `[K, 300, 2304]` (.npy f32, or
    /// safetensors F32/F16/BF16).
    ///
    /// These are the last hidden state of Gemma-2-2B-IT (`AutoModelForCausalLM.get_decoder()`, after its final
    /// norm) for the prompt prefixed with the model's "CHI" system prompt, tokenized with right padding to
    /// len(tokenize(chi)) + 300 - 2 tokens, of which token 0 (BOS) and the last 299 positions are kept: 300 rows of
    /// 2304, padding positions included (no attention mask is used). `--batch K` repeats one prompt K times. The
    /// text encoder is not part of pixeldit; see README "Text-to-image".
    #[arg(long, value_name = "FILE")]
    text_embeddings: Option<PathBuf>,
    /// Text-to-image models: hidden states of the negative prompt for CFG (the empty prompt "" for plain guidance):
    /// encoded without the CHI prefix, padded to 300 tokens, the first 300 rows; same formats as --text-embeddings.
    #[arg(long, value_name = "FILE")]
    negative_embeddings: Option<PathBuf>,
    /// Also save the final float x (before quantization to u8) as .npy f32 [K,3,H,W].
    #[arg(long, value_name = "FILE.npy")]
    save_raw: Option<PathBuf>,
    /// Also write what ran as JSON: model, backend, provider, precision, sampler settings, labels, noise source,
    /// ms per step and total seconds (for scripts; the same as the summary line on stdout).
    #[arg(long, value_name = "FILE.json")]
    report_json: Option<PathBuf>,
    /// No progress bar.
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
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(Args)]
struct BenchArgs {
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
    /// Table to append to.
    #[arg(long, default_value = "BENCHMARKS.md")]
    table: PathBuf,
    /// Do not write the table.
    #[arg(long)]
    no_table: bool,
    #[command(flatten)]
    backend: BackendArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Bench(b)) => run_bench(&b),
        None => run_sample(&cli.sample),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pixeldit-run: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The backend that runs the forward passes: the Triton server when `--triton` connected one, else the model file
/// on the backend chosen by the backend flags (the choice and the skipped candidates are reported on stderr).
fn open_runner(
    a: &SampleArgs,
    remote: Option<Box<dyn Backend>>,
    precision: pixeldit_spec::Precision,
) -> Result<Box<dyn Backend>> {
    // The backend flags are checked even when a server runs the model.
    let opts = a.backend.options(precision)?;
    if let Some(r) = remote {
        eprintln!("pixeldit-run: using triton ({})", r.provider());
        return Ok(r);
    }
    let model = a.model.as_deref().context("a model file is required")?;
    let sel = backend::load(model, &opts)?;
    report_selection(&sel);
    Ok(sel.backend)
}

fn report_selection(sel: &Selection) {
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

/// The encoded output files of the `[K, 3, H, W]` samples `x` (`width` x `height` images): one image or a grid at
/// `-o`, else one image per path of `out_paths`, then the raw array for `--save-raw`.
fn encode_outputs(
    a: &SampleArgs,
    x: &Array4<f32>,
    out_paths: &[PathBuf],
    width: usize,
    height: usize,
) -> Result<Vec<(PathBuf, Vec<u8>)>> {
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
    Ok(files)
}

fn parse_interval(s: &str) -> Result<(f64, f64)> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    if parts.len() != 2 {
        bail!("--interval must be LO,HI, got '{s}'");
    }
    let p = |v: &str| {
        v.parse::<f64>()
            .with_context(|| format!("--interval: '{v}' is not a number"))
    };
    Ok((p(parts[0])?, p(parts[1])?))
}

fn run_sample(a: &SampleArgs) -> Result<()> {
    let remote = connect_triton(a)?;
    let meta = match (&remote, a.model.as_deref()) {
        (_, Some(model)) => ModelInfo::read(model)?.pixeldit_metadata()?,
        (Some((_, Some(m))), None) => m.clone(),
        _ => bail!("a model file is required"),
    };
    if meta.config.kind == pixeldit_spec::ModelKind::T2i {
        return t2i_cli::run(a, remote.map(|(r, _)| r), &meta);
    }
    if a.text_embeddings.is_some() || a.negative_embeddings.is_some() {
        bail!("--text-embeddings and --negative-embeddings are for text-to-image models; this one is class-conditional");
    }
    let cfg_m = &meta.config;

    // Labels.
    let labels: Vec<i64> = match (&a.classes, a.class) {
        (Some(list), _) => {
            if a.batch.is_some_and(|b| b != list.len()) {
                bail!(
                    "--batch {} does not match the {} labels of --classes",
                    a.batch.unwrap_or(0),
                    list.len()
                );
            }
            list.clone()
        }
        (None, c) => vec![c.unwrap_or(0); a.batch.unwrap_or(1)],
    };
    if labels.is_empty() {
        bail!("no images requested (--batch 0)");
    }
    for &c in &labels {
        if c < 0 || c >= cfg_m.num_classes as i64 {
            return Err(RuntimeError::ClassOutOfRange {
                class: c,
                num_classes: cfg_m.num_classes,
            }
            .into());
        }
    }
    let k = labels.len();

    // Sampler settings.
    let mut scfg = sampler::SamplerConfig::from_defaults(&meta.sampler)?;
    if let Some(s) = &a.sampler {
        scfg.kind = s.parse()?;
    }
    if let Some(n) = a.steps {
        scfg.steps = n;
    }
    if let Some(w) = a.cfg {
        scfg.cfg_scale = w;
    }
    if let Some(s) = a.shift {
        scfg.shift = s;
    }
    if let Some(iv) = &a.interval {
        scfg.interval = parse_interval(iv)?;
    }
    scfg.validate()?;

    // Noise.
    let shape = [k, cfg_m.in_channels, meta.height, meta.width];
    let noise = initial_noise(a, shape)?;

    // Output paths (checked before the expensive part).
    let out_paths = checked_output_paths(a, k)?;

    let mut runner = open_runner(a, remote.map(|(r, _)| r), meta.precision)?;

    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(scfg.steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("step {pos}/{len} [{bar:30}] {its} ETA {eta} ({elapsed})")
            .expect("valid template")
            .with_key("its", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.2} it/s", s.per_sec());
            })
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let backend = &mut runner;
    let x = sampler::sample(
        &mut |x, t, y| backend.run(x, t, y),
        noise,
        &labels,
        cfg_m.null_class(),
        &scfg,
        &mut |_| bar.inc(1),
    )?;
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();

    // Outputs: everything encoded first, then written atomically.
    let mut files = encode_outputs(a, &x, &out_paths, meta.width, meta.height)?;
    let calls = scfg.network_calls();
    let fwd_batch = if scfg.cfg_scale == 1.0 { k } else { 2 * k };
    if let Some(path) = &a.report_json {
        let report = serde_json::json!({
            "model": a.model.as_ref().map(|m| m.display().to_string()),
            "backend": runner.name(),
            "provider": runner.provider(),
            "precision": meta.precision.to_string(),
            "sampler": scfg.kind.to_string(),
            "steps": scfg.steps,
            "cfg_scale": scfg.cfg_scale,
            "interval": [scfg.interval.0, scfg.interval.1],
            "shift": scfg.shift,
            "classes": labels,
            "noise": match &a.noise {
                Some(p) => p.display().to_string(),
                None => format!("seed {}", a.seed),
            },
            "ms_per_step": elapsed * 1e3 / scfg.steps as f64,
            "total_s": elapsed,
            "forwards": calls,
            "forward_batch": fwd_batch,
            "outputs": files.iter().map(|(p, _)| p.display().to_string()).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&report).context("report JSON")? + "\n";
        files.push((path.clone(), text.into_bytes()));
    }
    io::write_all_atomic(&files)?;
    for (p, _) in &files {
        eprintln!("pixeldit-run: wrote {}", p.display());
    }
    println!(
        "backend {} | provider {} | precision {} | {} {} steps, cfg {} | {:.1} ms/step ({} forwards of batch {}, {:.2} s total)",
        runner.name(),
        runner.provider(),
        meta.precision,
        scfg.kind,
        scfg.steps,
        scfg.cfg_scale,
        elapsed * 1e3 / scfg.steps as f64,
        calls,
        fwd_batch,
        elapsed
    );
    Ok(())
}

/// `--triton URL --model NAME`: the remote backend, and the model's metadata from the server's configuration when
/// no local model file is given.
type Remote = (Box<dyn Backend>, Option<pixeldit_spec::ModelMetadata>);

#[cfg(feature = "triton")]
fn connect_triton(a: &SampleArgs) -> Result<Option<Remote>> {
    let (Some(url), Some(name)) = (&a.triton, &a.triton_model) else {
        return Ok(None);
    };
    let opts = backend::triton::TritonOptions {
        version: a.triton_version.clone(),
        ..Default::default()
    };
    let r = backend::triton::TritonBackend::connect(url, name, &opts)?;
    let meta = match a.model {
        Some(_) => None,
        None => Some(r.metadata()?.clone()),
    };
    Ok(Some((Box::new(r), meta)))
}

#[cfg(not(feature = "triton"))]
fn connect_triton(a: &SampleArgs) -> Result<Option<Remote>> {
    if a.triton.is_some() {
        return Err(RuntimeError::FeatureDisabled("triton").into());
    }
    Ok(None)
}

fn run_bench(a: &BenchArgs) -> Result<()> {
    let info = ModelInfo::read(&a.model)?;
    let meta = info.pixeldit_metadata()?;
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let opts = a.backend.options(meta.precision)?;
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
    let (date, machine) = (bench::today(), bench::machine());
    let mut rows = Vec::new();
    for c in candidates {
        let mut b = match backend::load_candidate(&a.model, c, &opts, !explicit) {
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
        let s = bench::bench_forward(b.as_mut(), &meta, a.batch, a.warmup, a.runs)?;
        let name = format!("{}/{}", b.name(), b.provider());
        println!(
            "{name}: batch {} median {:.2} ms, min {:.2} ms, max {:.2} ms over {} runs",
            a.batch, s.median_ms, s.min_ms, s.max_ms, s.runs
        );
        rows.push(bench::BenchRow {
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
    if !a.no_table {
        bench::append_rows(&a.table, &rows)?;
        eprintln!(
            "pixeldit-run: appended {} row(s) to {}",
            rows.len(),
            a.table.display()
        );
    }
    Ok(())
}

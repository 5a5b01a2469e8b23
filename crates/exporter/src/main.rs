//! `pixeldit-export`: writes a PixelDiT preset or checkpoint as ONNX.

use anyhow::{bail, Context, Result};
use clap::Parser;
use pixeldit_exporter::{ExportOptions, ExternalData, WeightsSpec};
use pixeldit_spec::{AttentionMode, ModelConfig, Precision, PRESET_NAMES};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

mod quant_cli;
mod triton_cli;

/// Export PixelDiT (arXiv 2511.20645) to ONNX.
///
/// Examples:
///   pixeldit-export --preset tiny --random-init --seed 0 -o tiny.onnx
///   pixeldit-export --preset XL --checkpoint imagenet256_xl.safetensors --precision fp16 -o xl.onnx
///   pixeldit-export --preset XL --checkpoint imagenet256_pixeldit_xl_epoch320.ckpt -o xl.onnx
///   pixeldit-export --preset t2i --checkpoint pixeldit_t2i_v1.pth -o t2i.onnx
///   pixeldit-export --preset digits --attention decomposed -o digits.onnx
///   pixeldit-export --preset digits --triton-repo models --max-batch-size 16   # Triton model repository
///   pixeldit-export --preset digits --precision fp8 --accuracy-report fp8.json -o digits-fp8.onnx
#[derive(Parser, Debug)]
#[command(name = "pixeldit-export", version, verbatim_doc_comment)]
struct Args {
    /// Model preset (tiny, digits, B, L, XL = XL-256, XL-512, t2i, t2i-tiny).
    #[arg(long, default_value = "digits")]
    preset: String,
    /// A model config JSON instead of a preset (same fields as graphs/*.json).
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Checkpoint with official key names: safetensors, or a torch.save archive (Lightning `.ckpt`, T2I `.pth`),
    /// detected from its first bytes. `ema_denoiser.`/`core.` prefixes are stripped, training-only tensors dropped.
    /// The `digits` preset defaults to its committed weights.
    #[arg(long, conflicts_with = "random_init")]
    checkpoint: Option<PathBuf>,
    /// Deterministic random weights instead of a checkpoint.
    #[arg(long)]
    random_init: bool,
    /// Seed for --random-init.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image height (multiple of 16); the preset's default when omitted.
    #[arg(long)]
    height: Option<usize>,
    /// Image width (multiple of 16); the preset's default when omitted.
    #[arg(long)]
    width: Option<usize>,
    /// Numeric precision: fp32, fp16, bf16, int8, fp8, int8-weights, fp8-weights.
    #[arg(long, default_value = "fp32")]
    precision: Precision,
    /// Attention lowering: custom (pixeldit.RotaryAttention), onnx23 (opset-23 ops), decomposed (opset 17)
    /// [default: custom; decomposed with --triton-repo].
    #[arg(long)]
    attention: Option<AttentionMode>,
    /// External data for weights: auto (past 512 MiB of weights), always, never.
    #[arg(long, default_value = "auto", value_parser = parse_external)]
    external_data: ExternalData,
    /// Output model path (external data goes to `<path>.data`).
    #[arg(short, long, default_value = "model.onnx")]
    output: PathBuf,
    /// Print the stable text dump of the graph instead of writing a model.
    #[arg(long)]
    dump: bool,
    /// No progress output.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    triton: triton_cli::TritonArgs,
    #[command(flatten)]
    quant: quant_cli::QuantArgs,
}

fn parse_external(s: &str) -> Result<ExternalData, String> {
    match s {
        "auto" => Ok(ExternalData::Auto),
        "always" => Ok(ExternalData::Always),
        "never" => Ok(ExternalData::Never),
        _ => Err(format!("expected auto, always or never, got '{s}'")),
    }
}

/// The committed weights of the embedded default model.
fn default_checkpoint(preset: &str) -> Option<PathBuf> {
    if preset != "digits" {
        return None;
    }
    let candidates = [
        PathBuf::from("graphs/digits.safetensors"),
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../graphs/digits.safetensors"
        )),
    ];
    candidates.into_iter().find(|p| p.exists())
}

fn run(args: Args) -> Result<()> {
    let config = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading config {}", p.display()))?;
            ModelConfig::from_json(&text).with_context(|| format!("config {}", p.display()))?
        }
        None => ModelConfig::preset(&args.preset)?,
    };
    let weights = if args.random_init {
        WeightsSpec::RandomInit { seed: args.seed }
    } else if let Some(p) = args
        .checkpoint
        .clone()
        .or_else(|| default_checkpoint(&config.name))
    {
        WeightsSpec::Checkpoint(p)
    } else {
        bail!(
            "no weights: pass --checkpoint FILE.safetensors or --random-init (presets: {})",
            PRESET_NAMES.join(", ")
        )
    };
    let mut opts = ExportOptions::new(config, weights);
    opts.height = args.height.unwrap_or(opts.height);
    opts.width = args.width.unwrap_or(opts.width);
    opts.precision = args.precision;
    opts.attention = args.attention.unwrap_or_else(|| args.triton.default_attention());
    opts.external_data = args.external_data;
    opts.config.check_size(opts.height, opts.width)?;

    if args.dump {
        let (weights, _) = pixeldit_exporter::load_weights(&opts)?;
        let g = args.quant.dump_graph(&opts, &weights)?;
        print!("{}", g.dump());
        return Ok(());
    }

    let quiet = args.quiet;
    let progress = move |i: usize, n: usize, name: &str| {
        if !quiet {
            eprint!("\r\x1b[2K[{:>4}/{n}] {name}", i + 1);
            let _ = std::io::stderr().flush();
        }
    };
    let triton = args.triton.plan(&opts)?;
    let output = match &triton {
        Some(t) => t.onnx_path()?,
        None => args.output.clone(),
    };
    let report = args
        .quant
        .export(&opts, &output, Some(&progress))
        .with_context(|| format!("exporting {}", output.display()))?;
    if !quiet {
        eprintln!("\r\x1b[2K");
        for k in &report.keys.unused {
            eprintln!("warning: unused checkpoint key '{k}'");
        }
        if !report.keys.dropped.is_empty() {
            eprintln!("dropped {} training-only key(s)", report.keys.dropped.len());
        }
    }
    let w = &report.write;
    println!(
        "wrote {} ({} nodes, {:.2}M parameters, {} {}, attention {}, {:.1} MB{})",
        output.display(),
        report.nodes,
        w.weight_params as f64 / 1e6,
        report.metadata.config.name,
        report.metadata.precision,
        report.metadata.attention,
        w.model_bytes as f64 / 1e6,
        w.external_path
            .as_ref()
            .map(|p| format!(" + {} {:.1} MB", p.display(), w.external_bytes as f64 / 1e6))
            .unwrap_or_default()
    );
    args.quant.report(&opts, &output)?;
    if let Some(t) = triton {
        t.finish(&report.metadata)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! `pixeldit-export`: writes a PixelDiT preset or checkpoint as ONNX, in any precision, optionally as a Triton
//! model repository.

use crate::progress;
use crate::quant_args::QuantArgs;
use crate::triton_args::TritonArgs;
use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use pixeldit_exporter::{ExportOptions, ExternalData, LoraSpec, WeightsSpec};
use pixeldit_graph::WriteProgress;
use pixeldit_spec::{
    AttentionMode, DynamicSize, ModelConfig, PatchCut, PixelOps, Precision, Preset, PRESETS,
};
use std::path::PathBuf;
use std::process::ExitCode;

/// Export PixelDiT (arXiv 2511.20645) to ONNX.
///
/// Examples:
///   pixeldit-export --preset tiny --random-init --seed 0 -o tiny.onnx
///   pixeldit-export --preset XL --checkpoint imagenet256_xl.safetensors --precision fp16 -o xl.onnx
///   pixeldit-export --preset XL --checkpoint imagenet256_pixeldit_xl_epoch320.ckpt -o xl.onnx
///   pixeldit-export --preset t2i --checkpoint pixeldit_t2i_v1.pth -o t2i.onnx
///   pixeldit-export --preset digits --attention decomposed -o digits.onnx
///   pixeldit-export --preset B --checkpoint b.safetensors --dynamic-size -o b-dyn.onnx   # any size 128..=512
///   pixeldit-export --preset digits --triton-repo models --max-batch-size 16   # Triton model repository
///   pixeldit-export --preset t2i --checkpoint pixeldit_1300m_1024px_mxfp8.safetensors -o t2i.onnx   # ComfyUI file
///   pixeldit-export --preset XL --checkpoint xl.ckpt --lora style.safetensors:0.8 -o xl-style.onnx
///   pixeldit-export --preset digits --precision fp8 --accuracy-report fp8.json -o digits-fp8.onnx
///   pixeldit-export --text-encoder gemma-2-2b-it/ --precision bf16 -o gemma.onnx   # the T2I text encoder
///   pixeldit-export --text-encoder gemma-2-2b --random-init --tokenizer tokenizer.json -o gemma.onnx
#[derive(Parser, Debug)]
#[command(name = "pixeldit-export", version, verbatim_doc_comment)]
pub struct ExportArgs {
    /// Model preset (tiny, digits, digits-t2i, B, L, XL = XL-256, XL-512, t2i, t2i-tiny).
    #[arg(long, default_value = "digits")]
    preset: String,
    /// A model config JSON instead of a preset (same fields as graphs/*.json).
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Checkpoint with official key names: safetensors, or a torch.save archive (Lightning `.ckpt`, T2I `.pth`),
    /// detected from its first bytes. `ema_denoiser.`/`core.`/`model.diffusion_model.`/`net.` prefixes are
    /// stripped, training-only tensors dropped. ComfyUI files are read as they are: bf16, MXFP8 and per-tensor
    /// float8 Linears (`comfy_quant` tags or `_quantization_metadata`, dequantized exactly), split PiT modulation.
    /// Post-modulation PiT blocks are detected from the adaLN row count. The `digits` preset defaults to its
    /// committed weights.
    #[arg(long, conflicts_with = "random_init")]
    checkpoint: Option<PathBuf>,
    /// Deterministic random weights instead of a checkpoint.
    #[arg(long)]
    random_init: bool,
    /// Merge a LoRA adapter into the checkpoint's Linear weights before anything else (repeatable, in order):
    /// `W + SCALE * alpha/rank * B @ A`, SCALE 1 by default. Layouts: pixeldit2-lora-v1 (the official fork's
    /// `<module>.lora_A/.lora_B` with `modules` metadata), PEFT (`lora_A.weight`/`lora_B.weight`, alpha = rank
    /// unless `<module>.alpha`), kohya (`lora_unet_*.lora_down/lora_up.weight` + `.alpha`). Keys that fit no
    /// Linear are an error listing each; the model's `pixeldit.adapters` metadata records what was merged.
    #[arg(long, value_name = "FILE[:SCALE]", conflicts_with = "random_init")]
    lora: Vec<LoraSpec>,
    /// Seed for --random-init.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image height (multiple of 16); the preset's default when omitted. With --dynamic-size: the default size.
    #[arg(long)]
    height: Option<usize>,
    /// Image width (multiple of 16); the preset's default when omitted. With --dynamic-size: the default size.
    #[arg(long)]
    width: Option<usize>,
    /// One model for every image size: height and width of x and v are symbolic, and the patch grid, the RoPE
    /// tables, the pixel positional embedding and patchify/unpatchify are computed in the graph (every preset and
    /// --attention). pixeldit-run then takes --height/--width/--aspect-ratio. The range, the
    /// default size and the --aspect-ratio buckets are stored in the metadata.
    #[arg(long)]
    dynamic_size: bool,
    /// With --dynamic-size: the smallest height and width accepted [default: half the preset's size].
    #[arg(long, value_name = "PX", requires = "dynamic_size")]
    min_size: Option<usize>,
    /// With --dynamic-size: the largest height and width accepted [default: twice the preset's size].
    #[arg(long, value_name = "PX", requires = "dynamic_size")]
    max_size: Option<usize>,
    /// With --dynamic-size: the size engines are tuned for (TensorRT opt profile), also the model's default size
    /// [default: --height x --width, else the preset's].
    #[arg(long, value_name = "HxW", requires = "dynamic_size", conflicts_with_all = ["height", "width"])]
    opt_size: Option<String>,
    /// Numeric precision.
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    precision: Precision,
    /// Attention lowering: custom (pixeldit.RotaryAttention), onnx23 (opset-23 ops), decomposed (opset 17)
    /// [default: custom; decomposed with --triton-repo].
    #[arg(long, value_enum)]
    attention: Option<AttentionMode>,
    /// The PiT blocks' per-pixel work (modulation, gated residuals, GELU MLP): standard ops, or fused
    /// (pixeldit.PixelModulate and pixeldit.PixelGatedMlp: one pass per pixel, the fastest on CPU, for pixeldit-run's
    /// ONNX Runtime and tract backends only; needs an fp32-based --precision, pre-modulation PiT blocks and
    /// --attention custom or decomposed). auto: fused where the export uses the custom attention op (already
    /// pixeldit-run only) and can be fused, else standard; standard with --triton-repo.
    #[arg(long, value_enum, default_value_t = PixelOpsArg::Auto)]
    pixel_ops: PixelOpsArg,
    /// External data for weights: auto (past 512 MiB of weights), always, never.
    #[arg(long, value_enum, default_value_t = ExternalDataArg::Auto)]
    external_data: ExternalDataArg,
    /// Where to split the model for the patch-level step cache (`pixeldit-run --patch-cache`): the whole model
    /// also outputs the cut tensor and the pixel level is written beside it as `<model>.pixel.onnx`. tokens: the
    /// patch tokens before SiLU(t_emb + s), so cached steps use their own timestep; cond: SiLU(t_emb + s) itself.
    #[arg(long, value_enum, default_value_t = PatchCut::Tokens, value_name = "CUT")]
    patch_split: PatchCut,
    /// One graph only: no patch-level split (the model cannot use `pixeldit-run --patch-cache`; with --triton-repo:
    /// no pixel-level model NAME_pixel, and the pipeline refuses cached requests).
    #[arg(long)]
    no_patch_split: bool,
    /// Output model path (external data goes to `<path>.data`).
    #[arg(short, long, default_value = "model.onnx")]
    output: PathBuf,
    /// Print the stable text dump of the graph instead of writing a model.
    #[arg(long)]
    dump: bool,
    /// Quiet: print nothing but errors (no progress, notes or summary).
    #[arg(short, long)]
    quiet: bool,
    /// Export the Gemma-2 text encoder of a text-to-image model instead of PixelDiT: a preset (gemma-2-2b,
    /// gemma-tiny), a Hugging Face config.json, a checkpoint directory with config.json (such as a download of
    /// Efficient-Large-Model/gemma-2-2b-it; it is then also the default --checkpoint, and its tokenizer.json the
    /// default --tokenizer), or a single .safetensors file such as ComfyUI's gemma_2_2b_it_elm_bf16.safetensors or
    /// _fp8_scaled.safetensors (float8 weights dequantized exactly; the preset whose shapes it has; pass
    /// --tokenizer). Inputs input_ids and attention_mask [B, S] int64, output last_hidden_state [B, S, D];
    /// --precision fp32, fp16 or bf16 (matrices and embedding table; norms and softmax stay f32).
    #[arg(long, value_name = "PRESET|CONFIG|DIR|FILE", conflicts_with_all = ["preset", "config", "triton_repo", "dump"])]
    text_encoder: Option<String>,
    /// With --text-encoder: the tokenizer.json of the prompt recipe, which fixes the sequence length at
    /// len(tokenize(CHI)) + 298 tokens and must have the embedding table's vocabulary.
    #[arg(long, value_name = "FILE", requires = "text_encoder")]
    tokenizer: Option<PathBuf>,
    /// With --text-encoder: the sequence length, instead of the one --tokenizer implies.
    #[arg(long, value_name = "N", requires = "text_encoder")]
    seq_len: Option<usize>,
    #[command(flatten)]
    triton: TritonArgs,
    #[command(flatten)]
    quant: QuantArgs,
}

/// `--pixel-ops`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PixelOpsArg {
    /// Fused where the export uses the custom attention op and can be fused, else standard.
    Auto,
    /// Standard ops: every consumer runs them.
    Standard,
    /// pixeldit.PixelModulate and pixeldit.PixelGatedMlp (pixeldit-run's ORT and tract backends).
    Fused,
}

/// `--external-data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExternalDataArg {
    /// External data past 512 MiB of weights.
    Auto,
    /// Always external data.
    Always,
    /// Never (fails past protobuf's 2 GiB limit).
    Never,
}

impl From<ExternalDataArg> for ExternalData {
    fn from(a: ExternalDataArg) -> Self {
        match a {
            ExternalDataArg::Auto => ExternalData::Auto,
            ExternalDataArg::Always => ExternalData::Always,
            ExternalDataArg::Never => ExternalData::Never,
        }
    }
}

/// The committed weights (in `graphs/`) of a preset that ships them ([`pixeldit_spec::Preset::weights`]: `digits`,
/// `digits-t2i`).
fn default_checkpoint(preset: &str) -> Option<PathBuf> {
    let weights = Preset::find(PRESETS, preset)?.weights?;
    crate::workspace_file(&format!("graphs/{weights}"))
}

/// The export options of the command line.
fn export_options(args: &ExportArgs) -> Result<ExportOptions> {
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
            Preset::list(PRESETS)
        )
    };
    let mut opts = ExportOptions::new(config, weights);
    opts.height = args.height.unwrap_or(opts.height);
    opts.width = args.width.unwrap_or(opts.width);
    opts.precision = args.precision;
    opts.attention = args.attention.unwrap_or_else(|| args.triton.default_attention());
    match args.pixel_ops {
        PixelOpsArg::Standard => opts.pixel_ops = PixelOps::Standard,
        PixelOpsArg::Fused => opts.pixel_ops = PixelOps::Fused,
        // Triton's backends run standard ops only (the repository's own check refuses fused ones).
        PixelOpsArg::Auto => opts.auto_pixel_ops = args.triton.triton_repo.is_none(),
    }
    opts.external_data = args.external_data.into();
    opts.loras = args.lora.clone();
    // Triton repositories serve the split on the onnxruntime platform only (the pixel level as its own model).
    let split = !args.no_patch_split && args.triton.serves_patch_split();
    opts.patch_cut = split.then_some(args.patch_split);
    if let Some(opt) = &args.opt_size {
        let (h, w) = parse_size(opt).with_context(|| format!("--opt-size {opt}"))?;
        opts.height = h;
        opts.width = w;
    }
    opts.config.check_size(opts.height, opts.width)?;
    if args.dynamic_size {
        let mut d = DynamicSize::for_config(&opts.config);
        d.min = args.min_size.unwrap_or(d.min);
        d.max = args.max_size.unwrap_or(d.max);
        d.opt = [opts.height, opts.width];
        let range = d.clone();
        d.buckets.retain(|&[h, w]| range.check(h, w).is_ok());
        d.validate().context("--min-size/--max-size/--opt-size")?;
        opts.dynamic = Some(d);
    }
    Ok(opts)
}

/// Parses `HxW` (pixels).
pub(crate) fn parse_size(s: &str) -> Result<(usize, usize)> {
    let (h, w) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| anyhow::anyhow!("expected HxW, such as 256x384"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| anyhow::anyhow!("'{v}' is not a pixel count (expected HxW, such as 256x384)"))
    };
    Ok((num(h)?, num(w)?))
}

/// Runs `pixeldit-export` with parsed arguments.
pub fn run(args: ExportArgs) -> Result<()> {
    if let Some(encoder) = &args.text_encoder {
        if args.quant.is_set() {
            bail!("the text encoder is exported in fp32, fp16 or bf16; quantization flags do not apply");
        }
        if args.height.is_some() || args.width.is_some() {
            bail!("--height/--width do not apply to the text encoder");
        }
        if !args.lora.is_empty() {
            bail!("--lora applies to the PixelDiT checkpoint, not to the text encoder");
        }
        return crate::encoder_export::run(&crate::encoder_export::EncoderRequest {
            encoder: encoder.clone(),
            checkpoint: args.checkpoint.clone(),
            random_seed: args.random_init.then_some(args.seed),
            tokenizer: args.tokenizer.clone(),
            seq_len: args.seq_len,
            precision: args.precision,
            output: args.output.clone(),
            quiet: args.quiet,
        });
    }
    let opts = export_options(&args)?;
    let quant = args.quant.config(opts.precision)?;
    let mut calib = args.quant.calib_inputs()?;
    crate::calibrate::check_sizes(&opts, "--calib-sizes", &calib.sizes)?;
    crate::calibrate::check_sizes(&opts, "--eval-sizes", &args.quant.eval_sizes()?)?;
    if let (Some(_), Some(text)) = (&quant, &opts.config.text) {
        // Prompts are encoded once, for the calibration and the accuracy report.
        calib.text = calib.text.encoded(text, &opts.config.name)?;
    }

    if args.dump {
        let (weights, _) = pixeldit_exporter::load_weights(&opts)?;
        let g = match &quant {
            Some(q) => crate::variant::build_quantized_graph(&opts, q, &weights, &calib)?.0,
            None => pixeldit_exporter::build_graph(&opts, &weights)?,
        };
        print!("{}", g.dump());
        return Ok(());
    }

    let triton = args.triton.plan(&opts)?;
    let output = match &triton {
        Some(t) => t.onnx_path()?,
        None => args.output.clone(),
    };
    let bar = progress::bytes(0, args.quiet);
    let on_tensor = |p: WriteProgress<'_>| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(p.name.to_string());
    };
    let exported =
        crate::variant::export_variant_with(&opts, quant.as_ref(), &calib, &output, Some(&on_tensor))
            .with_context(|| format!("exporting {}", output.display()))?;
    bar.finish_and_clear();
    let report = &exported.report;
    if !args.quiet {
        for k in &report.keys.unused {
            crate::note!("warning: unused checkpoint key '{k}'");
        }
        if !report.keys.dropped.is_empty() {
            crate::note!("dropped {} training-only key(s)", report.keys.dropped.len());
        }
        if !args.lora.is_empty() {
            crate::note!("weights: {}", report.metadata.weights_source);
        }
    }
    if let (Some(q), Some(summary), Some(path)) = (&quant, &exported.summary, &exported.summary_path) {
        if let Some(c) = &summary.calibration {
            let conditions = if c.prompts.is_empty() {
                format!("classes {:?}", c.classes)
            } else {
                format!("{} prompt(s)", c.prompts.len())
            };
            crate::note!(
                "calibrated {} layer(s): {} forwards over {} timesteps ({conditions}, seeds {:?}, {}, {}) in {:.1} s",
                summary.quantized.len(),
                c.forwards,
                c.timesteps.len(),
                c.seeds,
                c.sampler,
                c.backend,
                c.seconds
            );
        }
        crate::note!(
            "{}: {} Linear layer(s) rewritten, {} kept in f32; settings and scales in {}",
            q.precision,
            summary.quantized.len(),
            summary.kept.len(),
            path.display()
        );
    }
    let w = &report.write;
    crate::say!(
        "wrote {} ({} nodes, {:.2}M parameters, {} {}, attention {}{}, {:.1} MB{})",
        output.display(),
        report.nodes,
        w.weight_params as f64 / 1e6,
        report.metadata.config.name,
        report.metadata.precision,
        report.metadata.attention,
        if report.metadata.pixel_ops.is_standard() {
            ""
        } else {
            ", fused pixel ops"
        },
        w.model_bytes as f64 / 1e6,
        w.external_path
            .as_ref()
            .map(|p| format!(" + {} {:.1} MB", p.display(), w.external_bytes as f64 / 1e6))
            .unwrap_or_default()
    );
    if let Some(p) = &report.pixel_level {
        crate::say!(
            "wrote {} (the pixel level alone, for --patch-cache; {:.1} MB{})",
            p.model_path.display(),
            p.model_bytes as f64 / 1e6,
            p.external_path
                .as_ref()
                .map(|e| format!(" + {} {:.1} MB", e.display(), p.external_bytes as f64 / 1e6))
                .unwrap_or_default()
        );
    }
    args.quant.report(&opts, &output, &calib)?;
    if let Some(t) = triton {
        t.finish(&report.metadata)?;
    }
    Ok(())
}

/// `main` of `pixeldit-export`: errors print their whole chain and exit 2.
pub fn main() -> ExitCode {
    let args = ExportArgs::parse();
    crate::log::set_quiet(args.quiet);
    crate::exit_code(run(args), "pixeldit-export")
}

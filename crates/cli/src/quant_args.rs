//! The quantization options of `pixeldit-export` (the work is [`crate::variant`], [`crate::calibrate`] and the
//! `pixeldit-quantize` crate).

use crate::accuracy::{accuracy_report, EvalConfig};
use crate::calibrate::{CalibInputs, TextCalibration};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use pixeldit_exporter::ExportOptions;
use pixeldit_quantize::{CalibMethod, QuantConfig};
use std::path::{Path, PathBuf};

/// Quantization (bf16, int8, fp8, int8-weights, fp8-weights).
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Quantization (bf16, int8, fp8, int8-weights, fp8-weights)")]
pub struct QuantArgs {
    /// Quantize the Linear layers whose scope (checkpoint module path, e.g. patch_blocks.3.attn.qkv) matches
    /// GLOB (fnmatch: * ? [..]), even ones excluded by default. Repeatable; wins over --quant-exclude.
    /// int8/fp8 keep t_embedder.*, y_embedder.*, s_embedder.*, pixel_embedder.*, final_layer.* and
    /// pixel_blocks.*.mlp.* in f32 by default; bf16 converts every Linear. Norms, softmax, RoPE and attention
    /// always stay f32.
    #[arg(long, value_name = "GLOB")]
    pub quant_include: Vec<String>,
    /// Keep the Linear layers whose scope matches GLOB in f32. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub quant_exclude: Vec<String>,
    /// Text-to-image calibration: a file of prompts (one per line), encoded by --calib-text-encoder with the
    /// official recipe [default without --calib-embeddings: synthetic N(0, 1) embeddings, with a warning].
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "calib_embeddings",
        requires = "calib_text_encoder"
    )]
    pub calib_prompts: Option<PathBuf>,
    /// Text-to-image calibration: the negative prompt for CFG with --calib-prompts.
    #[arg(long, value_name = "TEXT", default_value = "", requires = "calib_prompts")]
    pub calib_negative_prompt: String,
    /// Text-to-image calibration: the exported text encoder (`pixeldit-export --text-encoder`) for --calib-prompts.
    #[arg(long, value_name = "FILE.onnx", requires = "calib_prompts")]
    pub calib_text_encoder: Option<PathBuf>,
    /// The encoder's tokenizer.json [default: tokenizer.json next to --calib-text-encoder].
    #[arg(long, value_name = "FILE", requires = "calib_text_encoder")]
    pub calib_tokenizer: Option<PathBuf>,
    /// Text-to-image calibration: prompt embedding files or directories, comma-separated ([300, D] or [K, 300, D];
    /// .npy f32 or safetensors; a directory stands for its .npy and .safetensors files in name order, except the
    /// --calib-negative file), e.g. made by tools/gemma_text_embeddings.py or `pixeldit-run encode`.
    #[arg(long, value_delimiter = ',', value_name = "FILE|DIR,..")]
    pub calib_embeddings: Vec<PathBuf>,
    /// Text-to-image calibration: the negative prompt's embeddings for CFG with --calib-embeddings (without it the
    /// calibration runs the prompt branch only).
    #[arg(long, value_name = "FILE", requires = "calib_embeddings")]
    pub calib_negative: Option<PathBuf>,
    /// Calibration classes, comma-separated [default: up to 8 spread over the model's classes].
    #[arg(long, value_delimiter = ',', value_name = "C,..")]
    pub calib_classes: Vec<i64>,
    /// Calibration noise seeds, comma-separated (one sampler run each, all classes batched).
    #[arg(long, value_delimiter = ',', value_name = "S,..", default_value = "0,1")]
    pub calib_seeds: Vec<u64>,
    /// Image sizes the calibration samples at, comma-separated HxW (every seed at every size; a --dynamic-size
    /// model's sizes must be in its range, a static model takes only its own size) [default: the model's size].
    #[arg(long, value_delimiter = ',', value_name = "HxW,..")]
    pub calib_sizes: Vec<String>,
    /// Calibration sampler steps [default: the model's, at most 25]. Every step's forward is observed, so the
    /// statistics cover the sampler's time grid from t = 0 (noise) to its last step. XL on a CPU: e.g.
    /// --calib-classes 0 --calib-seeds 0 --calib-steps 2 (about a minute).
    #[arg(long, value_name = "N")]
    pub calib_steps: Option<usize>,
    /// How activation ranges are chosen: max, or percentile:P (largest per-forward P-th percentile of |x|)
    /// [default: int8 percentile:99.99, fp8 max]. With SmoothQuant the range is the largest smoothed per-channel
    /// maximum instead.
    #[arg(long, value_name = "METHOD")]
    pub calib_method: Option<CalibMethod>,
    /// SmoothQuant migration strength alpha in [0, 1], or off (int8/fp8 with activations): activation channel
    /// ranges move into the per-channel weight scales, s_j = max|x_j|^alpha / max|w_j|^(1-alpha); the stored
    /// weights (and the metadata's weights_sha256) are then those of W*diag(s) [default: int8 0.5, fp8 off].
    #[arg(long, value_name = "ALPHA|off", value_parser = parse_alpha)]
    pub smoothquant: Option<Alpha>,
    /// INT8 weight range: reduced (+-63, 7 bits: ONNX Runtime's fused u8s8 kernels cannot saturate on AVX2 CPUs
    /// without VNNI) or full (+-127, for TensorRT / VNNI CPUs) [default: reduced for int8, full for int8-weights].
    #[arg(long, value_name = "RANGE", value_enum)]
    pub int8_weight_range: Option<Int8WeightRange>,
    /// Operands of the custom attention op's two products (QK^T and PV): bf16 (q, k, the softmax probabilities and
    /// v rounded to bf16, sums in f32: about 30% faster attention on CPUs with AVX512-BF16) or f32. Only
    /// --attention custom exports have the op [default: bf16 for int8 and fp8, f32 otherwise].
    #[arg(long, value_name = "PRECISION", value_enum)]
    pub attention_matmul: Option<AttentionMatmul>,
    /// After exporting, compare the model with an fp32 export of the same weights on the CPU (relative error of
    /// v at t = 0, 0.25, 0.5, 0.75, 0.95 and PSNR of full samples), print it and write it as JSON to FILE.
    /// Works for every precision.
    #[arg(long, value_name = "FILE.json")]
    pub accuracy_report: Option<PathBuf>,
    /// Seeds of the accuracy report (kept apart from the calibration seeds).
    #[arg(long, value_delimiter = ',', value_name = "S,..", default_value = "100,101")]
    pub eval_seeds: Vec<u64>,
    /// Image sizes of the accuracy report, comma-separated HxW (every seed at every size; a --dynamic-size model's
    /// range) [default: the model's size].
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "HxW,..",
        requires = "accuracy_report"
    )]
    pub eval_sizes: Vec<String>,
    /// Sampler steps of the accuracy report [default: the model's].
    #[arg(long, value_name = "N")]
    pub eval_steps: Option<usize>,
}

/// `--attention-matmul`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AttentionMatmul {
    /// bf16 operands, f32 sums.
    Bf16,
    /// f32 throughout.
    F32,
}

/// `--int8-weight-range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Int8WeightRange {
    /// +-63 (7 bits).
    Reduced,
    /// +-127.
    Full,
}

/// `--smoothquant` value: `off` or alpha.
#[derive(Debug, Clone, Copy)]
pub struct Alpha(Option<f32>);

fn parse_alpha(s: &str) -> Result<Alpha, String> {
    if s == "off" {
        return Ok(Alpha(None));
    }
    match s.parse::<f32>() {
        Ok(a) if (0.0..=1.0).contains(&a) => Ok(Alpha(Some(a))),
        _ => Err(format!("expected off or an alpha in [0, 1], got '{s}'")),
    }
}

/// `paths` with every directory replaced by its `.npy` and `.safetensors` files in name order (leaving out
/// `negative`); a directory without any is an error.
fn embedding_files(paths: &[PathBuf], negative: Option<&Path>) -> Result<Vec<PathBuf>> {
    let negative = negative.and_then(|n| n.canonicalize().ok());
    let mut files = Vec::new();
    for path in paths {
        if !path.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path)
            .with_context(|| format!("--calib-embeddings: reading directory {}", path.display()))?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("npy" | "safetensors")
                    )
            })
            .filter(|p| negative.is_none() || p.canonicalize().ok() != negative)
            .collect();
        if found.is_empty() {
            bail!(
                "--calib-embeddings: directory {} has no .npy or .safetensors files",
                path.display()
            );
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

impl QuantArgs {
    /// The calibration's text conditions (text-to-image models) from the flags; the backend is the default.
    pub fn calib_inputs(&self) -> Result<CalibInputs> {
        let text = if let Some(file) = &self.calib_prompts {
            let prompts = crate::read_prompts_file(file)?;
            let encoder = self
                .calib_text_encoder
                .clone()
                .context("--calib-prompts needs --calib-text-encoder")?;
            let tokenizer = self
                .calib_tokenizer
                .clone()
                .unwrap_or_else(|| encoder.with_file_name("tokenizer.json"));
            TextCalibration::Prompts {
                prompts,
                negative: self.calib_negative_prompt.clone(),
                encoder,
                tokenizer,
            }
        } else if !self.calib_embeddings.is_empty() {
            TextCalibration::Files {
                prompts: embedding_files(&self.calib_embeddings, self.calib_negative.as_deref())?,
                negative: self.calib_negative.clone(),
            }
        } else {
            TextCalibration::Synthetic
        };
        let sizes = self
            .calib_sizes
            .iter()
            .map(|s| crate::export_cli::parse_size(s).with_context(|| format!("--calib-sizes {s}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(CalibInputs {
            text,
            sizes,
            ..Default::default()
        })
    }

    /// Whether any quantization or accuracy-report flag was given (the calibration and evaluation seeds have
    /// defaults and do not count).
    pub fn is_set(&self) -> bool {
        !self.quant_include.is_empty()
            || !self.quant_exclude.is_empty()
            || !self.calib_classes.is_empty()
            || !self.calib_sizes.is_empty()
            || self.calib_prompts.is_some()
            || !self.calib_embeddings.is_empty()
            || self.calib_steps.is_some()
            || self.calib_method.is_some()
            || self.smoothquant.is_some()
            || self.int8_weight_range.is_some()
            || self.attention_matmul.is_some()
            || self.accuracy_report.is_some()
            || !self.eval_sizes.is_empty()
            || self.eval_steps.is_some()
    }

    /// The quantizer settings for `precision` (`None` for fp32 and fp16).
    pub fn config(&self, precision: pixeldit_spec::Precision) -> Result<Option<QuantConfig>> {
        let Some(mut q) = QuantConfig::for_precision(precision) else {
            if self.attention_matmul.is_some() {
                bail!(
                    "--attention-matmul applies to the quantized precisions (bf16, int8, fp8 and their weight-only \
                     forms); {precision} keeps f32 attention"
                );
            }
            return Ok(None);
        };
        q.include = self.quant_include.clone();
        q.exclude = self.quant_exclude.clone();
        q.calib.classes = self.calib_classes.clone();
        q.calib.seeds = self.calib_seeds.clone();
        q.calib.steps = self.calib_steps;
        if let Some(m) = self.calib_method {
            q.method = m;
            if let CalibMethod::Percentile(p) = m {
                q.calib.percentile = p;
            }
        }
        if let Some(Alpha(a)) = self.smoothquant {
            q.smoothquant = a;
        }
        match self.int8_weight_range {
            Some(Int8WeightRange::Full) => q.int8_weight_qmax = pixeldit_quantize::config::INT8_MAX,
            Some(Int8WeightRange::Reduced) => {
                q.int8_weight_qmax = pixeldit_quantize::config::INT8_REDUCED_MAX
            }
            None => {}
        }
        if let Some(a) = self.attention_matmul {
            q.attention_bf16 = a == AttentionMatmul::Bf16;
        }
        q.validate()?;
        Ok(Some(q))
    }

    /// The parsed `--eval-sizes`.
    pub fn eval_sizes(&self) -> Result<Vec<(usize, usize)>> {
        self.eval_sizes
            .iter()
            .map(|s| crate::export_cli::parse_size(s).with_context(|| format!("--eval-sizes {s}")))
            .collect()
    }

    /// Writes and prints the accuracy report when `--accuracy-report` was given, on the text conditions of the
    /// calibration (`calib`, from [`QuantArgs::calib_inputs`]).
    pub fn report(&self, opts: &ExportOptions, model: &Path, calib: &CalibInputs) -> Result<()> {
        let Some(out) = &self.accuracy_report else {
            return Ok(());
        };
        let sizes = self.eval_sizes()?;
        let eval = EvalConfig {
            seeds: self.eval_seeds.clone(),
            steps: self.eval_steps,
            text: calib.text.clone(),
            sizes,
            ..Default::default()
        };
        let r = accuracy_report(opts, model, &eval).context("accuracy report")?;
        crate::say!("{}", r.line());
        let text = serde_json::to_string_pretty(&r).expect("report serializes") + "\n";
        pixeldit_runtime::io::write_atomic(out, text.as_bytes())
            .with_context(|| format!("writing {}", out.display()))?;
        crate::say!("accuracy report written to {}", out.display());
        Ok(())
    }
}

//! The calibration driver: writes the fp32 graph with every selected Linear input tapped as an extra output, runs
//! it through the runtime's generation API (the model's sampler, CFG batches on its time grid) and folds every
//! forward into `pixeldit_quantize`'s statistics, over seeds and the conditions of [`sampling_run`]: classes for
//! class-conditional models, text conditions (prompts through the exported encoder, embedding files, or synthetic)
//! for text-to-image models. Statistics are keyed by the graph's own `t` input (flow time, or `1000 sigma`).

use anyhow::{bail, Context, Result};
use ndarray::{Array3, ArrayD, ArrayView4, Axis};
use pixeldit_exporter::{write_graph, ExportOptions, Weights};
use pixeldit_graph::Graph;
use pixeldit_quantize::calib::{add_taps, spread_classes, Calibration, TensorStats};
use pixeldit_quantize::{CalibConfig, Linear};
use pixeldit_runtime::generate::{generate, ImageShape, Noise, Request};
use pixeldit_runtime::prompt::{PromptKind, PromptTokenizer};
use pixeldit_runtime::text_encoder::{self, TextEncoder};
use pixeldit_runtime::{
    backend, io, model, BackendKind, CondRows, Conditions, Denoiser, Device, RuntimeError, SamplerConfig,
    SamplerOverrides, Time,
};
use pixeldit_spec::{ModelKind, ModelMetadata, Precision, TextConfig};
use std::path::PathBuf;
use std::time::Instant;

/// The text conditions of a text-to-image calibration.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum TextCalibration {
    /// Seeded N(0, 1) embeddings for [`SYNTHETIC_PROMPTS`] prompts and the negative (when no real ones are given:
    /// right for the layers' shapes and the sampler's time grid, not for a real text distribution).
    #[default]
    Synthetic,
    /// Embedding files (`[300, D]` or `[K, 300, D]`, .npy or safetensors) and, for CFG, the negative's.
    Files {
        /// Prompt embeddings.
        prompts: Vec<PathBuf>,
        /// Negative-prompt embeddings (without it the calibration samples without CFG).
        negative: Option<PathBuf>,
    },
    /// Prompts encoded by an exported text encoder with its tokenizer (the official recipe).
    Prompts {
        /// The prompts.
        prompts: Vec<String>,
        /// The negative prompt for CFG.
        negative: String,
        /// `pixeldit-export --text-encoder` output.
        encoder: PathBuf,
        /// Its `tokenizer.json`.
        tokenizer: PathBuf,
    },
    /// Embeddings already in memory (e.g. [`TextCalibration::Prompts`] encoded once by
    /// [`TextCalibration::encoded`], for the calibration and the accuracy report).
    Encoded {
        /// Prompt embeddings `[K, L, E]`.
        cond: Array3<f32>,
        /// Negative-prompt embeddings `[K, L, E]` for CFG.
        uncond: Option<Array3<f32>>,
        /// One label per prompt.
        labels: Vec<String>,
    },
}

impl TextCalibration {
    /// Runs the text encoder of [`TextCalibration::Prompts`] now, for a model with text input `text`, and keeps the
    /// embeddings, so that later uses (calibration, accuracy report) do not load and run the encoder again.
    /// Other sources are returned as they are.
    pub fn encoded(self, text: &TextConfig, model: &str) -> Result<Self> {
        if !matches!(self, TextCalibration::Prompts { .. }) {
            return Ok(self);
        }
        let TextConditions { cond, uncond, labels } =
            text_conditions(&self, text, model, SYNTHETIC_CALIB_SEED)?;
        Ok(TextCalibration::Encoded { cond, uncond, labels })
    }
}

/// Prompts of a [`TextCalibration::Synthetic`] calibration.
pub const SYNTHETIC_PROMPTS: usize = 4;
/// Noise seed of the synthetic calibration embeddings (the negative's is the next one).
pub const SYNTHETIC_CALIB_SEED: u64 = 0x7e47;
/// Noise seed of the synthetic evaluation embeddings (`--accuracy-report`), apart from the calibration's.
pub const SYNTHETIC_EVAL_SEED: u64 = 0x7e57;

/// How a calibration runs besides the quantizer's settings: the backend of the fp32 model (CPU) and, for
/// text-to-image models, the text conditions.
#[derive(Debug, Clone, Default)]
pub struct CalibInputs {
    /// Backend of the tapped fp32 model.
    pub backend: BackendKind,
    /// Text conditions (text-to-image models).
    pub text: TextCalibration,
    /// Image sizes `(height, width)` to sample at, every seed at each (`--calib-sizes`); empty: the model's size.
    pub sizes: Vec<(usize, usize)>,
}

/// Checks the sizes of `flag` (`--calib-sizes`, `--eval-sizes`) against the export: inside a dynamic model's
/// range, else the export's own size.
pub fn check_sizes(opts: &ExportOptions, flag: &str, sizes: &[(usize, usize)]) -> Result<()> {
    for &(h, w) in sizes {
        match &opts.dynamic {
            Some(d) => d.check(h, w).with_context(|| format!("{flag} {h}x{w}"))?,
            None if (h, w) == (opts.height, opts.width) => {}
            None => bail!(
                "{flag} {h}x{w}: the model is exported at the fixed size {}x{} (other sizes need \
                 --dynamic-size)",
                opts.height,
                opts.width
            ),
        }
    }
    Ok(())
}

/// Text embeddings `[K, L, E]` for the prompts and, for CFG, the negative `[K, L, E]`, with one label per prompt.
pub(crate) struct TextConditions {
    pub cond: Array3<f32>,
    pub uncond: Option<Array3<f32>>,
    pub labels: Vec<String>,
}

/// Concatenates `[k_i, L, E]` arrays along the first axis.
fn stack(parts: &[Array3<f32>]) -> Array3<f32> {
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views).expect("same [L, E]")
}

/// `[1, L, E]` repeated `k` times.
fn repeat(a: &Array3<f32>, k: usize) -> Array3<f32> {
    stack(&vec![a.clone(); k])
}

/// Resolves `src` for a model with text input `text`; synthetic embeddings are drawn with `synthetic_seed`.
pub(crate) fn text_conditions(
    src: &TextCalibration,
    text: &TextConfig,
    model: &str,
    synthetic_seed: u64,
) -> Result<TextConditions> {
    let (l, e) = (text.max_length, text.embed_dim);
    Ok(match src {
        TextCalibration::Synthetic => {
            crate::note!(
                "pixeldit-export: synthetic N(0, 1) text embeddings ({SYNTHETIC_PROMPTS} prompts, seed \
                 {synthetic_seed:#x}): pass --calib-prompts (with --calib-text-encoder) or --calib-embeddings for \
                 real activation ranges"
            );
            let noise = |seed: u64, k: usize| {
                io::seeded_noise(seed, [k, l, e, 1])
                    .into_shape_with_order((k, l, e))
                    .expect("same element count")
            };
            TextConditions {
                cond: noise(synthetic_seed, SYNTHETIC_PROMPTS),
                uncond: Some(repeat(&noise(synthetic_seed + 1, 1), SYNTHETIC_PROMPTS)),
                labels: (0..SYNTHETIC_PROMPTS)
                    .map(|i| format!("synthetic N(0,1) #{i}"))
                    .collect(),
            }
        }
        TextCalibration::Files { prompts, negative } => {
            if prompts.is_empty() {
                bail!("--calib-embeddings: no files");
            }
            let parts = prompts
                .iter()
                .map(|p| io::read_text_embeddings(p, l, e))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let cond = stack(&parts);
            let k = cond.shape()[0];
            let uncond = match negative {
                Some(p) => {
                    let n = io::read_text_embeddings(p, l, e)?;
                    if n.shape()[0] != 1 {
                        bail!("{}: the negative embeddings must hold one prompt", p.display());
                    }
                    Some(repeat(&n, k))
                }
                None => {
                    crate::note!(
                        "pixeldit-export: no --calib-negative: calibrating without CFG (the prompt branch only)"
                    );
                    None
                }
            };
            let labels = prompts
                .iter()
                .zip(&parts)
                .flat_map(|(p, a)| (0..a.shape()[0]).map(move |i| format!("{}[{i}]", p.display())))
                .collect();
            TextConditions { cond, uncond, labels }
        }
        TextCalibration::Prompts {
            prompts,
            negative,
            encoder,
            tokenizer,
        } => {
            if prompts.is_empty() {
                bail!("--calib-prompts: no prompts");
            }
            let meta = text_encoder::read_metadata(encoder)?;
            let load = crate::load_options().with_device(Device::Cpu);
            let sel = backend::load(encoder, &load)?;
            let tok = PromptTokenizer::from_file(tokenizer)?;
            let mut enc = TextEncoder::new(sel.backend, encoder, meta, tok)?;
            enc.check_model(text, model)?;
            enc.check_prompt_length()?;
            let cond = enc.encode(PromptKind::Prompt, prompts)?.embeddings;
            let uncond = enc
                .encode(PromptKind::Negative, &vec![negative.clone(); prompts.len()])?
                .embeddings;
            TextConditions {
                cond,
                uncond: Some(uncond),
                labels: prompts.clone(),
            }
        }
        TextCalibration::Encoded { cond, uncond, labels } => {
            let shape = &cond.shape()[1..];
            if shape != [l, e] || uncond.as_ref().is_some_and(|u| u.shape() != cond.shape()) {
                bail!(
                    "text embeddings {:?} (negative {:?}) do not fit model '{model}' ([K, {l}, {e}])",
                    cond.shape(),
                    uncond.as_ref().map(|u| u.shape().to_vec())
                );
            }
            TextConditions {
                cond: cond.clone(),
                uncond: uncond.clone(),
                labels: labels.clone(),
            }
        }
    })
}

/// What a calibration or accuracy run samples: the conditions, their labels (prompts; empty for classes) and the
/// sampler settings.
pub(crate) struct SamplingRun {
    pub conditions: Conditions,
    pub prompts: Vec<String>,
    pub sampler: SamplerConfig,
}

/// The conditions of a run of `meta`'s model and its sampler settings.
///
/// Conditions: for class-conditional models `classes` (else `default_classes` spread over the model's classes),
/// checked; for text-to-image models the text conditions of `text` (synthetic embeddings drawn with
/// `synthetic_seed`). Sampler: the model's defaults, `steps` (else the default capped at `max_default_steps`),
/// `cfg_scale`; no CFG when there is no negative.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sampling_run(
    meta: &ModelMetadata,
    classes: &[i64],
    default_classes: usize,
    text: &TextCalibration,
    synthetic_seed: u64,
    steps: Option<usize>,
    max_default_steps: usize,
    cfg_scale: Option<f32>,
) -> Result<SamplingRun> {
    let (conditions, prompts) = match (meta.config.kind, &meta.config.text) {
        (ModelKind::T2i, Some(text_cfg)) => {
            if !classes.is_empty() {
                bail!(
                    "--calib-classes is for class-conditional models; {} is text-to-image",
                    meta.config.name
                );
            }
            let t = text_conditions(text, text_cfg, &meta.config.name, synthetic_seed)?;
            (Conditions::text(t.cond, t.uncond), t.labels)
        }
        _ => {
            let chosen = if classes.is_empty() {
                spread_classes(meta.config.num_classes, default_classes)
            } else {
                classes.to_vec()
            };
            (Conditions::classes(chosen, meta.config.null_class()), Vec::new())
        }
    };
    conditions.check(&meta.config)?;
    let defaults = SamplerConfig::from_metadata(&meta.sampler)?;
    let overrides = SamplerOverrides {
        steps: Some(steps.unwrap_or(defaults.steps.min(max_default_steps))),
        cfg_scale: match conditions.has_negative() {
            true => cfg_scale,
            false => Some(1.0),
        },
        ..Default::default()
    };
    Ok(SamplingRun {
        sampler: defaults.with_overrides(&overrides)?,
        conditions,
        prompts,
    })
}

/// Folds one forward's taps into the statistics.
fn observe(
    stats: &mut [TensorStats],
    taps: &[ArrayD<f32>],
    names: &[String],
    t: f32,
    percentile: f64,
) -> pixeldit_runtime::Result<()> {
    for ((s, tap), name) in stats.iter_mut().zip(taps).zip(names) {
        let width = s.channel_amax.len().max(1);
        let data = tap.as_slice().filter(|d| d.len() % width == 0).ok_or_else(|| {
            RuntimeError::Shape(format!(
                "tap '{name}' has shape {:?}, expected [rows, {width}]",
                tap.shape()
            ))
        })?;
        s.observe(data, t, percentile);
    }
    Ok(())
}

/// Runs the calibration of `layers` on the fp32 graph `g` of `opts` (which is not modified): writes a tapped copy
/// into a temporary directory, loads it on the CPU and samples: class-conditional models with the flow sampler over
/// classes and seeds, text-to-image models with DPM-Solver++ (CFG with the negative) over the text conditions of
/// `inputs` and the seeds.
pub fn calibrate(
    g: &Graph,
    layers: &[&Linear],
    cfg: &CalibConfig,
    opts: &ExportOptions,
    weights: &Weights,
    inputs: &CalibInputs,
) -> Result<Calibration> {
    let start = Instant::now();
    check_sizes(opts, "--calib-sizes", &inputs.sizes)?;
    let sizes = if inputs.sizes.is_empty() {
        vec![(opts.height, opts.width)]
    } else {
        inputs.sizes.clone()
    };
    let input_names: Vec<&str> = g.inputs().iter().map(|v| g.info(*v).name.as_str()).collect();
    if !matches!(input_names.as_slice(), ["x", "t", "y"] | ["x", "t", "text"]) {
        bail!(
            "activation calibration runs the model's sampler on inputs (x, t, y) or (x, t, text); this graph has \
             inputs {input_names:?}; use bf16, int8-weights or fp8-weights"
        );
    }
    let mut tapped = g.clone();
    let (names, of_scope) = add_taps(&mut tapped, layers)?;
    let dir = tempfile::Builder::new()
        .prefix("pixeldit-calib.")
        .tempdir()
        .context("creating a temporary directory for the calibration model")?;
    let path = dir.path().join("calibration.onnx");
    let mut fp32 = opts.clone();
    fp32.precision = Precision::Fp32;
    fp32.patch_cut = None; // the calibration runs the whole model only
    write_graph(&tapped, &fp32, weights, &path, None, None)?;
    drop(tapped);
    let meta = model::read_metadata(&path)?;
    let load = crate::load_options()
        .with_backend(inputs.backend)
        .with_device(Device::Cpu);
    let sel = backend::load(&path, &load)?;
    let backend_name = sel.candidate.to_string();
    let mut denoiser = Denoiser::new(sel.backend, &meta);

    let mut channels = vec![0; names.len()];
    for l in layers {
        channels[of_scope[&l.scope]] = l.in_features;
    }
    let mut stats: Vec<TensorStats> = channels.iter().map(|c| TensorStats::new(*c)).collect();
    let mut forwards = 0usize;
    let mut timesteps: Vec<f32> = Vec::new();
    let mut record = |t: f32, forwards: &mut usize| {
        if !timesteps.contains(&t) {
            timesteps.push(t);
        }
        *forwards += 1;
    };
    let run = sampling_run(
        &meta,
        &cfg.classes,
        8,
        &inputs.text,
        SYNTHETIC_CALIB_SEED,
        cfg.steps,
        25,
        cfg.cfg_scale,
    )?;
    for (&seed, &(height, width)) in cfg.seeds.iter().flat_map(|s| sizes.iter().map(move |z| (s, z))) {
        let request = Request {
            conditions: run.conditions.clone(),
            sampler: run.sampler.clone(),
            image: ImageShape {
                height,
                width,
                ..ImageShape::of(&meta)
            },
            noise: Noise::seeded(seed),
        };
        let mut model = |x: ArrayView4<f32>, time: Time, rows: CondRows<'_>| {
            let (v, taps) = denoiser.velocity_with_outputs(x, time, rows, &names)?;
            let t = denoiser.model_time(time);
            observe(&mut stats, &taps, &names, t, cfg.percentile)?;
            record(t, &mut forwards);
            Ok(v)
        };
        generate(&mut model, &request, &mut |_| {})?;
    }
    for s in &mut stats {
        s.per_t.sort_by(|a, b| a.t.total_cmp(&b.t));
    }
    timesteps.sort_by(f32::total_cmp);
    let layers_out = layers
        .iter()
        .map(|l| (l.scope.clone(), stats[of_scope[&l.scope]].clone()))
        .collect();
    Ok(Calibration {
        classes: run.conditions.labels().to_vec(),
        prompts: run.prompts,
        seeds: cfg.seeds.clone(),
        sizes: inputs.sizes.iter().map(|&(h, w)| [h, w]).collect(),
        steps: run.sampler.steps,
        sampler: run.sampler.kind.to_string(),
        cfg_scale: run.sampler.cfg_scale,
        time_shift: run.sampler.shift,
        percentile: cfg.percentile,
        backend: backend_name,
        forwards,
        timesteps,
        seconds: start.elapsed().as_secs_f64(),
        layers: layers_out,
    })
}

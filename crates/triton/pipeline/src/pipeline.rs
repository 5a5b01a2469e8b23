//! [`Pipeline`]: one served model's sampler, which turns one [`Request`] into one image with every forward sent
//! through [`CallbackBackend`]s.

use crate::callback::CallbackBackend;
use crate::config::PipelineConfig;
use crate::ffi::Callbacks;
use crate::request::{sampler_config, Request};
use crate::{PipelineError, Result, MAX_PROMPT_BYTES};
use ndarray::{Array3, ArrayD, Axis};
use pixeldit_runtime::backend::Backend;
use pixeldit_runtime::generate::{self, ImageShape, Noise, Request as GenerationRequest, VelocityModel};
use pixeldit_runtime::patch_cache::{CachePolicy, CachedDenoiser, Reuse};
use pixeldit_runtime::prompt::{PromptKind, PromptTokenizer};
use pixeldit_runtime::tensor::Feed;
use pixeldit_runtime::text_encoder::TextEncoder;
use pixeldit_runtime::{io, Conditions, Denoiser, RuntimeError};
use pixeldit_spec::text_encoder::{TextEncoderMetadata, ATTENTION_MASK, INPUT_IDS, LAST_HIDDEN_STATE};
use pixeldit_spec::{ModelKind, ModelMetadata, PatchSplit};
use std::path::Path;
use std::sync::Mutex;

/// The text side of a text-to-image pipeline: the encoder's model name and the tokenizer + recipe (its backend is
/// swapped in per request).
struct TextSide {
    encoder_name: String,
    encoder: Mutex<TextEncoder>,
}

/// A served model's pipeline: its metadata, the Triton name of its denoiser and, for text-to-image models, the text
/// side.
pub struct Pipeline {
    meta: ModelMetadata,
    denoiser: String,
    /// The denoiser batches (`max_batch_size > 0`): its batch-only inputs are sent as `[B, 1]`.
    denoiser_batches: bool,
    text: Option<TextSide>,
    /// The pixel-level model of the patch cache, when the repository has one.
    pixel_model: Option<String>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("model", &self.meta.config.name)
            .field("denoiser", &self.denoiser)
            .field("text_encoder", &self.text.as_ref().map(|t| &t.encoder_name))
            .field("pixel_model", &self.pixel_model)
            .finish()
    }
}

/// What one request produces.
#[derive(Debug, Clone)]
pub struct Generated {
    /// `[3, H, W]` 8-bit pixels (grey-scale models repeat their channel), as `pixeldit-run` writes them to PNG.
    pub image: Vec<u8>,
    /// `[C, H, W]` final sample.
    pub x: Array3<f32>,
}

/// A backend that is not connected (the text encoder between requests).
struct Detached;

impl Backend for Detached {
    fn name(&self) -> &'static str {
        "detached"
    }
    fn provider(&self) -> String {
        "none".into()
    }
    fn run(&mut self, _: &[Feed<'_, '_>], _: &[&str]) -> pixeldit_runtime::Result<Vec<ArrayD<f32>>> {
        Err(RuntimeError::InvalidArgument(
            "the text encoder is not connected".into(),
        ))
    }
    fn input_names(&self) -> Vec<String> {
        vec![INPUT_IDS.into(), ATTENTION_MASK.into()]
    }
    fn output_names(&self) -> Vec<String> {
        vec![LAST_HIDDEN_STATE.into()]
    }
}

impl Pipeline {
    /// A pipeline for the served model described by `cfg`.
    pub fn new(cfg: &PipelineConfig) -> Result<Self> {
        let meta = ModelMetadata::from_json(&cfg.metadata)?;
        crate::callback::check_model_name(&cfg.denoiser)?;
        let text = match meta.config.kind {
            ModelKind::C2i => None,
            ModelKind::T2i => {
                let missing =
                    |what: &str| PipelineError::Config(format!("a text-to-image pipeline needs {what}"));
                let name = cfg
                    .text_encoder
                    .clone()
                    .ok_or_else(|| missing("'text_encoder'"))?;
                crate::callback::check_model_name(&name)?;
                let enc_meta = cfg
                    .text_encoder_metadata
                    .as_deref()
                    .ok_or_else(|| missing("'text_encoder_metadata'"))?;
                let enc_meta = TextEncoderMetadata::from_json(enc_meta)?;
                let tok_path = cfg.tokenizer.clone().ok_or_else(|| missing("'tokenizer'"))?;
                let tokenizer = PromptTokenizer::from_file(&tok_path)?;
                let encoder = TextEncoder::new(Box::new(Detached), Path::new(&name), enc_meta, tokenizer)?;
                let text_cfg = meta
                    .config
                    .text
                    .clone()
                    .ok_or_else(|| missing("a model with a text section"))?;
                encoder.check_model(&text_cfg, &meta.config.name)?;
                encoder.check_prompt_length()?;
                Some(TextSide {
                    encoder_name: name,
                    encoder: Mutex::new(encoder),
                })
            }
        };
        if let Some(p) = &cfg.pixel_model {
            crate::callback::check_model_name(p)?;
            if meta.patch_split.is_none() {
                return Err(PipelineError::Config(format!(
                    "pixel-level model '{p}' given, but {} has no patch-level split",
                    meta.config.name
                )));
            }
        }
        Ok(Pipeline {
            meta,
            denoiser: cfg.denoiser.clone(),
            denoiser_batches: cfg.denoiser_max_batch_size > 0,
            text,
            pixel_model: cfg.pixel_model.clone(),
        })
    }

    /// `[C, H, W]` of the sample at the model's default size.
    pub fn sample_shape(&self) -> [usize; 3] {
        [self.meta.config.in_channels, self.meta.height, self.meta.width]
    }

    /// `[C, H, W]` of the sample `req` asks for (`height`/`width`, each defaulting to the model's), checked
    /// against the model (a dynamic-size model's range, a static model's own size).
    pub fn sample_shape_for(&self, req: &Request) -> Result<[usize; 3]> {
        let size = |v: Option<u64>, default: usize| usize::try_from(v.unwrap_or(default as u64)).unwrap_or(0);
        let (h, w) = (
            size(req.height, self.meta.height),
            size(req.width, self.meta.width),
        );
        self.meta
            .check_size(h, w)
            .map_err(|e| PipelineError::Request(e.to_string()))?;
        Ok([self.meta.config.in_channels, h, w])
    }

    /// Checks `req` and samples its image; every network forward goes through `calls`. The request's fields are
    /// checked before any forward (text-to-image: before the prompt is encoded).
    pub fn generate(&self, req: &Request, calls: &Callbacks) -> Result<Generated> {
        let [_, h, w] = self.sample_shape_for(req)?;
        let sampler = sampler_config(&self.meta, req)?;
        let cache = self.cache_setup(req)?;
        let noise = Noise::Seeded {
            seed: req.seed,
            first_index: req.index,
        };
        // Before any forward (text-to-image: before the prompt is encoded).
        noise.check()?;
        let (inputs, outputs) =
            pixeldit_spec::io::model_io(&self.meta.config, self.meta.height, self.meta.width);
        let input_names: Vec<&str> = inputs.iter().map(|t| t.name).collect();
        let mut output_names: Vec<&str> = outputs.iter().map(|t| t.name).collect();
        if let Some((split, _, _, _)) = &cache {
            output_names.push(split.tensor.as_str());
        }
        let backend = CallbackBackend::new(*calls, &self.denoiser, &input_names, &output_names)?
            .with_batch_inputs_2d(self.denoiser_batches);
        let denoiser = Denoiser::new(Box::new(backend), &self.meta);
        let mut model: Box<dyn VelocityModel> = match cache {
            None => Box::new(denoiser),
            Some((split, pixel_model, policy, reuse)) => {
                let (x, t, _) = denoiser.input_names();
                let pixel_inputs = [x.as_str(), t.as_str(), split.tensor.as_str()];
                let pixel = CallbackBackend::new(*calls, pixel_model, &pixel_inputs, &output_names[..1])?
                    .with_batch_inputs_2d(self.denoiser_batches);
                Box::new(CachedDenoiser::new(
                    denoiser,
                    Box::new(pixel),
                    split,
                    policy,
                    reuse,
                )?)
            }
        };
        let conditions = match &self.text {
            None => self.class_conditions(req)?,
            Some(text) => {
                let enc = CallbackBackend::new(
                    *calls,
                    &text.encoder_name,
                    &[INPUT_IDS, ATTENTION_MASK],
                    &[LAST_HIDDEN_STATE],
                )?;
                self.text_conditions(req, text, Box::new(enc), sampler.cfg_scale != 1.0)?
            }
        };
        let request = GenerationRequest {
            conditions,
            sampler,
            image: ImageShape {
                height: h,
                width: w,
                ..ImageShape::of(&self.meta)
            },
            noise,
        };
        let x = generate::generate(model.as_mut(), &request, &mut |_| {})?
            .x
            .index_axis_move(Axis(0), 0);
        let hwc = io::image_rgb8(x.view());
        let mut image = vec![0u8; 3 * h * w];
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for ch in 0..3 {
                image[ch * h * w + i] = px[ch];
            }
        }
        Ok(Generated { image, x })
    }

    /// The patch cache a request asks for, checked against what the repository serves: the split, the pixel-level
    /// model's name, the policy and the reuse (`None`: uncached).
    fn cache_setup(&self, req: &Request) -> Result<Option<(&PatchSplit, &str, CachePolicy, Reuse)>> {
        let Some((policy, reuse)) = req.patch_cache()? else {
            return Ok(None);
        };
        let refuse = |why: &str| {
            PipelineError::Request(format!(
                "patch cache ({policy}) requested, but {why}: pixeldit-export --triton-repo writes the \
                 pixel-level model {} for onnxruntime_onnx repositories without --no-patch-split",
                pixel_model_name(&self.denoiser)
            ))
        };
        let split = self
            .meta
            .patch_split
            .as_ref()
            .ok_or_else(|| refuse(&format!("{} has no patch-level split", self.meta.config.name)))?;
        let pixel = self
            .pixel_model
            .as_deref()
            .ok_or_else(|| refuse("the repository has no pixel-level model"))?;
        Ok(Some((split, pixel, policy, reuse)))
    }

    /// The class of a request to a class-conditional model, checked.
    fn class_conditions(&self, req: &Request) -> Result<Conditions> {
        if req.prompt.is_some() || req.negative_prompt.is_some() {
            return Err(PipelineError::Request(format!(
                "{} is class-conditional: send 'class', not a prompt",
                self.meta.config.name
            )));
        }
        let class = req
            .class
            .ok_or_else(|| PipelineError::Request("'class' is required".into()))?;
        let conditions = Conditions::classes(vec![class], self.meta.config.null_class());
        conditions.check(&self.meta.config)?;
        Ok(conditions)
    }

    /// The prompt (and, with CFG, the negative prompt) of a request to a text-to-image model, encoded by the text
    /// encoder behind `encoder_backend`.
    fn text_conditions(
        &self,
        req: &Request,
        text: &TextSide,
        encoder_backend: Box<dyn Backend>,
        guided: bool,
    ) -> Result<Conditions> {
        if req.class.is_some() {
            return Err(PipelineError::Request(format!(
                "{} is text-to-image: send 'prompt', not a class",
                self.meta.config.name
            )));
        }
        let prompt = req
            .prompt
            .clone()
            .ok_or_else(|| PipelineError::Request("'prompt' is required".into()))?;
        for (what, text) in [
            ("prompt", Some(&prompt)),
            ("negative_prompt", req.negative_prompt.as_ref()),
        ] {
            if let Some(t) = text.filter(|t| t.len() > MAX_PROMPT_BYTES) {
                return Err(PipelineError::Request(format!(
                    "{what} is {} bytes long; at most {MAX_PROMPT_BYTES}",
                    t.len()
                )));
            }
        }
        let mut encoder = text.encoder.lock().unwrap_or_else(|p| p.into_inner());
        encoder.replace_backend(encoder_backend)?;
        let encoded = (|| -> pixeldit_runtime::Result<_> {
            let cond = encoder.encode(PromptKind::Prompt, &[prompt])?;
            let uncond = if guided {
                let negative = req.negative_prompt.clone().unwrap_or_default();
                Some(encoder.encode(PromptKind::Negative, &[negative])?.embeddings)
            } else {
                None
            };
            Ok((cond.embeddings, uncond))
        })();
        // Never keep the request's callback past the request.
        encoder.replace_backend(Box::new(Detached))?;
        drop(encoder);
        let (cond, uncond) = encoded?;
        Ok(Conditions::text(cond, uncond))
    }
}

/// The pixel-level model's name for a denoiser, `<denoiser>_pixel` (as `pixeldit_triton::config::pixel_model_name`
/// writes it; only for messages here).
fn pixel_model_name(denoiser: &str) -> String {
    format!("{denoiser}_pixel")
}

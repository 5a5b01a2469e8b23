//! The sampler of a Triton pipeline model (`NAME_pipeline`, written by `pixeldit-export --triton-repo`): one request
//! in (class or prompt, seed, optional sampler settings), one image out, with every network forward (denoiser and,
//! for text-to-image models, the text encoder) sent back to Triton.
//!
//! Triton's python backend runs `model.py` (`crates/triton/pipeline/model.py`), which loads this library with
//! `ctypes` and calls [`pixeldit_pipeline_generate`] once per request. The library owns everything that must equal a
//! local `pixeldit-run` exactly, by reusing the runtime: the seeded noise stream ([`pixeldit_runtime::io`]), the
//! samplers, the checks of the request and the conversion to 8-bit pixels. Each forward goes through a
//! [`CallbackBackend`], a [`Backend`] whose `run` calls the [`RunFn`] that `model.py` passes in; `model.py` turns it
//! into a BLS request to the denoiser model, so the denoiser's dynamic batcher sees the steps of concurrent
//! pipeline requests. There is one sampler implementation, the runtime's.
//!
//! The C ABI (all functions catch panics; errors are written as UTF-8 into the caller's buffer):
//! * [`pixeldit_pipeline_new`] / [`pixeldit_pipeline_free`]: a [`Pipeline`] for a [`PipelineConfig`] (JSON: the
//!   model's metadata, the denoiser's Triton name; text-to-image: the encoder's name and metadata, the tokenizer);
//! * [`pixeldit_pipeline_image_shape`]: `[C, H, W]` of the outputs;
//! * [`pixeldit_pipeline_generate`]: one request (JSON, see [`Request`]) -> `image` u8 `[3, H, W]` and `x` f32
//!   `[C, H, W]` (the final sample before quantization).

use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use std::path::Path;
use std::sync::Mutex;

use ndarray::{Array3, ArrayD, Axis, IxDyn};
use pixeldit_runtime::backend::{check_feeds, Backend};
use pixeldit_runtime::prompt::{PromptKind, PromptTokenizer};
use pixeldit_runtime::samplers::dpm_solver::{self, DpmSolverConfig};
use pixeldit_runtime::samplers::flow::{self, FlowSamplerConfig};
use pixeldit_runtime::tensor::{Feed, TensorRef};
use pixeldit_runtime::text_encoder::TextEncoder;
use pixeldit_runtime::{io, Denoiser, RuntimeError};
use pixeldit_spec::text_encoder::{TextEncoderMetadata, ATTENTION_MASK, INPUT_IDS, LAST_HIDDEN_STATE};
use pixeldit_spec::{ModelKind, ModelMetadata};
use serde::Deserialize;

/// Largest `steps` a request may ask for.
pub const MAX_STEPS: usize = 1000;
/// Largest `index` (position in the seed's noise stream) a request may ask for.
pub const MAX_INDEX: u64 = 1024;
/// Longest prompt or negative prompt a request may send, in bytes. Shorter prompts past the recipe's token limit
/// are truncated as the official recipe (and `pixeldit-run`) does.
pub const MAX_PROMPT_BYTES: usize = 16384;

/// Errors of the pipeline: a bad request, or a failed forward.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The request is invalid (type, range, model kind); the message says which field and what is allowed.
    #[error("bad request: {0}")]
    Request(String),
    /// The runtime (sampler, a forward through Triton) failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The model metadata given at start-up does not parse.
    #[error("model metadata: {0}")]
    Metadata(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, PipelineError>;

/// One image request, as `model.py` forwards it (JSON; absent fields take the model's defaults).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Class label (class-conditional models), `0..num_classes`.
    pub class: Option<i64>,
    /// The prompt (text-to-image models), encoded by the official recipe.
    pub prompt: Option<String>,
    /// The negative prompt for CFG (text-to-image models) [default: ""].
    pub negative_prompt: Option<String>,
    /// Noise seed: the stream of `pixeldit-run --seed`.
    #[serde(default)]
    pub seed: u64,
    /// Position of the image in the seed's noise stream (`pixeldit-run --classes a,b,c` draws images 0, 1, 2 of
    /// one stream).
    #[serde(default)]
    pub index: u64,
    /// Sampler steps.
    pub steps: Option<i64>,
    /// CFG weight.
    pub cfg: Option<f32>,
    /// `flow_dpm`, `euler` or `heun`.
    pub sampler: Option<String>,
    /// Guidance interval `[lo, hi]`.
    pub interval: Option<[f64; 2]>,
    /// Time shift.
    pub shift: Option<f64>,
}

/// A request's `steps`, checked against `min..=MAX_STEPS`.
fn checked_steps(steps: Option<i64>, min: usize) -> Result<Option<usize>> {
    match steps {
        Some(n) if n < min as i64 || n > MAX_STEPS as i64 => Err(PipelineError::Request(format!(
            "steps {n}: expected {min}..={MAX_STEPS}"
        ))),
        n => Ok(n.map(|n| n as usize)),
    }
}

/// The sampler settings of a request: the model's defaults, then the request's fields (as `pixeldit-run` applies
/// its flags), checked.
pub fn sampler_config(meta: &ModelMetadata, req: &Request) -> Result<FlowSamplerConfig> {
    let mut cfg = FlowSamplerConfig::from_defaults(&meta.sampler)?;
    if let Some(s) = &req.sampler {
        cfg.kind = s.parse().map_err(|_| {
            PipelineError::Request(format!("sampler '{s}': expected flow_dpm, euler or heun"))
        })?;
    }
    cfg.steps = checked_steps(req.steps, 1)?.unwrap_or(cfg.steps);
    cfg.cfg_scale = req.cfg.unwrap_or(cfg.cfg_scale);
    cfg.shift = req.shift.unwrap_or(cfg.shift);
    if let Some([lo, hi]) = req.interval {
        cfg.interval = (lo, hi);
    }
    cfg.validate()
        .map_err(|e| PipelineError::Request(e.to_string()))?;
    Ok(cfg)
}

/// How a pipeline is set up: what `model.py` reads from the pipeline's config parameters, as JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The denoiser's `pixeldit.metadata` JSON.
    pub metadata: String,
    /// The denoiser's Triton model name.
    pub denoiser: String,
    /// Text-to-image: the text encoder's Triton model name.
    #[serde(default)]
    pub text_encoder: Option<String>,
    /// Text-to-image: the encoder's `pixeldit.text_encoder` metadata JSON.
    #[serde(default)]
    pub text_encoder_metadata: Option<String>,
    /// Text-to-image: path of `tokenizer.json`.
    #[serde(default)]
    pub tokenizer: Option<String>,
}

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
    text: Option<TextSide>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("model", &self.meta.config.name)
            .field("denoiser", &self.denoiser)
            .field("text_encoder", &self.text.as_ref().map(|t| &t.encoder_name))
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
        let meta =
            ModelMetadata::from_json(&cfg.metadata).map_err(|e| PipelineError::Metadata(e.to_string()))?;
        let text = match meta.config.kind {
            ModelKind::C2i => None,
            ModelKind::T2i => {
                let missing =
                    |what: &str| PipelineError::Metadata(format!("a text-to-image pipeline needs {what}"));
                let name = cfg
                    .text_encoder
                    .clone()
                    .ok_or_else(|| missing("'text_encoder'"))?;
                let enc_meta = cfg
                    .text_encoder_metadata
                    .as_deref()
                    .ok_or_else(|| missing("'text_encoder_metadata'"))?;
                let enc_meta = TextEncoderMetadata::from_json(enc_meta)
                    .map_err(|e| PipelineError::Metadata(e.to_string()))?;
                let tok_path = cfg.tokenizer.clone().ok_or_else(|| missing("'tokenizer'"))?;
                let tokenizer = PromptTokenizer::from_file(Path::new(&tok_path))?;
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
        Ok(Pipeline {
            meta,
            denoiser: cfg.denoiser.clone(),
            text,
        })
    }

    /// `[C, H, W]` of the sample.
    pub fn sample_shape(&self) -> [usize; 3] {
        [self.meta.config.in_channels, self.meta.height, self.meta.width]
    }

    /// The request's noise: image `index` of the stream of `seed`.
    fn noise(&self, req: &Request) -> Result<ndarray::Array4<f32>> {
        if req.index > MAX_INDEX {
            return Err(PipelineError::Request(format!(
                "index {}: expected 0..={MAX_INDEX}",
                req.index
            )));
        }
        let [c, h, w] = self.sample_shape();
        let stream = io::seeded_noise(req.seed, [req.index as usize + 1, c, h, w]);
        Ok(stream
            .slice_axis(Axis(0), (req.index as usize..).into())
            .to_owned())
    }

    /// Checks `req` and samples its image; every network forward is `run(user, model, ...)`.
    ///
    /// # Safety
    /// `run` must be callable with `user` during the call and follow [`RunFn`].
    pub unsafe fn generate(&self, req: &Request, run: RunFn, user: *mut c_void) -> Result<Generated> {
        let (inputs, outputs) =
            pixeldit_spec::io::model_io(&self.meta.config, self.meta.height, self.meta.width);
        let input_names: Vec<&str> = inputs.iter().map(|t| t.name).collect();
        let output_names: Vec<&str> = outputs.iter().map(|t| t.name).collect();
        // SAFETY: forwarded from this function's contract.
        let backend = unsafe { CallbackBackend::new(run, user, &self.denoiser, &input_names, &output_names) };
        let mut denoiser = Denoiser::new(Box::new(backend), &self.meta);
        let x = match &self.text {
            None => self.sample_class(req, &mut denoiser)?,
            Some(text) => {
                // SAFETY: as above.
                let enc = unsafe {
                    CallbackBackend::new(
                        run,
                        user,
                        &text.encoder_name,
                        &[INPUT_IDS, ATTENTION_MASK],
                        &[LAST_HIDDEN_STATE],
                    )
                };
                self.sample_text(req, text, Box::new(enc), &mut denoiser)?
            }
        };
        let [_, h, w] = self.sample_shape();
        let hwc = io::image_rgb8(x.view());
        let mut image = vec![0u8; 3 * h * w];
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for ch in 0..3 {
                image[ch * h * w + i] = px[ch];
            }
        }
        Ok(Generated { image, x })
    }

    fn sample_class(&self, req: &Request, denoiser: &mut Denoiser) -> Result<Array3<f32>> {
        if req.prompt.is_some() || req.negative_prompt.is_some() {
            return Err(PipelineError::Request(format!(
                "{} is class-conditional: send 'class', not a prompt",
                self.meta.config.name
            )));
        }
        let num_classes = self.meta.config.num_classes;
        let class = req
            .class
            .ok_or_else(|| PipelineError::Request("'class' is required".into()))?;
        if class < 0 || class >= num_classes as i64 {
            return Err(PipelineError::Request(format!(
                "class {class} is out of range 0..{num_classes}"
            )));
        }
        let noise = self.noise(req)?;
        let cfg = sampler_config(&self.meta, req)?;
        let x = flow::sample(
            &mut |x, t, y| denoiser.class_velocity(x, t, y),
            noise,
            &[class],
            self.meta.config.null_class(),
            &cfg,
            &mut |_| {},
        )?;
        Ok(x.index_axis_move(Axis(0), 0))
    }

    fn sample_text(
        &self,
        req: &Request,
        text: &TextSide,
        encoder_backend: Box<dyn Backend>,
        denoiser: &mut Denoiser,
    ) -> Result<Array3<f32>> {
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
        let noise = self.noise(req)?;
        let cfg = text_sampler_config(&self.meta, req)?;
        let mut encoder = text.encoder.lock().unwrap_or_else(|p| p.into_inner());
        encoder.replace_backend(encoder_backend)?;
        let encoded = (|| -> pixeldit_runtime::Result<_> {
            let cond = encoder.encode(PromptKind::Prompt, &[prompt])?;
            let uncond = if cfg.cfg_scale != 1.0 {
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
        let x = dpm_solver::sample(
            &mut |x, t, txt| denoiser.text_velocity(x, t, txt),
            noise,
            cond.view(),
            uncond.as_ref().map(|u| u.view()),
            &cfg,
            &mut |_| {},
        )?;
        Ok(x.index_axis_move(Axis(0), 0))
    }
}

/// The DPM-Solver++ settings of a text-to-image request: the model's defaults, then the request's fields.
pub fn text_sampler_config(meta: &ModelMetadata, req: &Request) -> Result<DpmSolverConfig> {
    let mut cfg = DpmSolverConfig::from_defaults(&meta.sampler)?;
    if let Some(s) = req.sampler.as_deref().filter(|s| *s != dpm_solver::SAMPLER_NAME) {
        return Err(PipelineError::Request(format!(
            "sampler '{s}': a text-to-image model samples with {}",
            dpm_solver::SAMPLER_NAME
        )));
    }
    cfg.steps = checked_steps(req.steps, 2)?.unwrap_or(cfg.steps);
    cfg.cfg_scale = req.cfg.unwrap_or(cfg.cfg_scale);
    cfg.shift = req.shift.unwrap_or(cfg.shift);
    if let Some([lo, hi]) = req.interval {
        cfg.interval = (lo, hi);
    }
    cfg.validate()
        .map_err(|e| PipelineError::Request(e.to_string()))?;
    Ok(cfg)
}

/// Element types of [`RunFn`] inputs.
pub const DTYPE_F32: i32 = 0;
/// `int64`.
pub const DTYPE_I64: i32 = 1;

/// Receives one output of a forward: `name`, `rank` dims at `shape`, f32 values at `data` (row-major). Returns 0
/// when taken.
pub type OutputSink = unsafe extern "C" fn(
    ctx: *mut c_void,
    name: *const c_char,
    rank: usize,
    shape: *const i64,
    data: *const f32,
) -> i32;

/// Runs one forward of Triton model `model`: `n` inputs (names, [`DTYPE_F32`]/[`DTYPE_I64`], ranks, shapes, data),
/// then hands each of the `n_out` requested outputs to `sink(sink_ctx, ...)`. Returns 0 on success; on failure the
/// caller (`model.py`) keeps its own error message.
pub type RunFn = unsafe extern "C" fn(
    user: *mut c_void,
    model: *const c_char,
    n: usize,
    names: *const *const c_char,
    dtypes: *const i32,
    ranks: *const usize,
    shapes: *const *const i64,
    data: *const *const c_void,
    n_out: usize,
    out_names: *const *const c_char,
    sink: OutputSink,
    sink_ctx: *mut c_void,
) -> i32;

/// A [`Backend`] whose forwards are calls of a [`RunFn`] (a BLS request in `model.py`).
pub struct CallbackBackend {
    run: RunFn,
    user: *mut c_void,
    model: CString,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl CallbackBackend {
    /// Forwards of Triton model `model` with the given graph input and output names through `run(user, ...)`.
    ///
    /// # Safety
    /// `run` must be callable with `user` for as long as the backend is used, and must follow [`RunFn`].
    pub unsafe fn new(run: RunFn, user: *mut c_void, model: &str, inputs: &[&str], outputs: &[&str]) -> Self {
        CallbackBackend {
            run,
            user,
            model: CString::new(model).unwrap_or_default(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Outputs collected by [`collect_output`].
#[derive(Default)]
struct Collected {
    outputs: Vec<(String, ArrayD<f32>)>,
}

unsafe extern "C" fn collect_output(
    ctx: *mut c_void,
    name: *const c_char,
    rank: usize,
    shape: *const i64,
    data: *const f32,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `ctx` is the `Collected` that `CallbackBackend::run` passed for this call; the pointers follow
        // the OutputSink contract.
        let collected = unsafe { &mut *(ctx as *mut Collected) };
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        let dims: Vec<usize> = (0..rank)
            .map(|i| unsafe { *shape.add(i) }.max(0) as usize)
            .collect();
        let n: usize = dims.iter().product();
        let values = unsafe { std::slice::from_raw_parts(data, n) }.to_vec();
        match ArrayD::from_shape_vec(IxDyn(&dims), values) {
            Ok(a) => {
                collected.outputs.push((name, a));
                0
            }
            Err(_) => 1,
        }
    }));
    result.unwrap_or(1)
}

impl Backend for CallbackBackend {
    fn name(&self) -> &'static str {
        "triton-bls"
    }

    fn provider(&self) -> String {
        format!("BLS {}", self.model.to_string_lossy())
    }

    fn run(
        &mut self,
        feeds: &[Feed<'_, '_>],
        outputs: &[&str],
    ) -> pixeldit_runtime::Result<Vec<ArrayD<f32>>> {
        check_feeds(&self.inputs, feeds)?;
        let fail = |message: String| RuntimeError::Triton {
            url: format!("BLS {}", self.model.to_string_lossy()),
            message,
        };
        // Contiguous copies in the order of the feeds.
        enum Owned {
            F32(Vec<f32>),
            I64(Vec<i64>),
        }
        let mut names = Vec::with_capacity(feeds.len());
        let mut dtypes = Vec::with_capacity(feeds.len());
        let mut ranks = Vec::with_capacity(feeds.len());
        let mut shapes: Vec<Vec<i64>> = Vec::with_capacity(feeds.len());
        let mut owned = Vec::with_capacity(feeds.len());
        for (name, t) in feeds {
            names.push(CString::new(*name).map_err(|e| fail(e.to_string()))?);
            let shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
            ranks.push(shape.len());
            shapes.push(shape);
            match t {
                TensorRef::F32(a) => {
                    dtypes.push(DTYPE_F32);
                    owned.push(Owned::F32(a.iter().copied().collect()));
                }
                TensorRef::I64(a) => {
                    dtypes.push(DTYPE_I64);
                    owned.push(Owned::I64(a.iter().copied().collect()));
                }
            }
        }
        let name_ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
        let shape_ptrs: Vec<*const i64> = shapes.iter().map(|s| s.as_ptr()).collect();
        let data_ptrs: Vec<*const c_void> = owned
            .iter()
            .map(|o| match o {
                Owned::F32(v) => v.as_ptr() as *const c_void,
                Owned::I64(v) => v.as_ptr() as *const c_void,
            })
            .collect();
        let out_names: Vec<CString> = outputs
            .iter()
            .map(|n| CString::new(*n).map_err(|e| fail(e.to_string())))
            .collect::<pixeldit_runtime::Result<_>>()?;
        let out_ptrs: Vec<*const c_char> = out_names.iter().map(|n| n.as_ptr()).collect();
        let mut collected = Collected::default();
        // SAFETY: every pointer stays valid for the call; `run`/`user` are valid per `CallbackBackend::new`.
        let rc = unsafe {
            (self.run)(
                self.user,
                self.model.as_ptr(),
                feeds.len(),
                name_ptrs.as_ptr(),
                dtypes.as_ptr(),
                ranks.as_ptr(),
                shape_ptrs.as_ptr(),
                data_ptrs.as_ptr(),
                out_ptrs.len(),
                out_ptrs.as_ptr(),
                collect_output,
                &mut collected as *mut Collected as *mut c_void,
            )
        };
        if rc != 0 {
            return Err(fail(format!("the forward failed (code {rc})")));
        }
        outputs
            .iter()
            .map(|want| {
                let i = collected
                    .outputs
                    .iter()
                    .position(|(n, _)| n == want)
                    .ok_or_else(|| fail(format!("no output '{want}' came back")))?;
                Ok(collected.outputs.swap_remove(i).1)
            })
            .collect()
    }

    fn input_names(&self) -> Vec<String> {
        self.inputs.clone()
    }

    fn output_names(&self) -> Vec<String> {
        self.outputs.clone()
    }
}

/// Writes `msg` as a NUL-terminated UTF-8 string into `err[..len]` (truncated).
fn write_error(err: *mut c_char, len: usize, msg: &str) {
    if err.is_null() || len == 0 {
        return;
    }
    let bytes = msg.as_bytes();
    let n = bytes.len().min(len - 1);
    // SAFETY: the caller provides `len` writable bytes at `err`.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), err as *mut u8, n);
        *err.add(n) = 0;
    }
}

/// Reads a C string argument.
///
/// # Safety
/// `p` is null or a NUL-terminated string.
unsafe fn arg(p: *const c_char, what: &str) -> std::result::Result<String, String> {
    if p.is_null() {
        return Err(format!("{what} is null"));
    }
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map(str::to_string)
        .map_err(|_| format!("{what} is not UTF-8"))
}

/// Creates a pipeline from `config_json` (a [`PipelineConfig`]); null on error (message in `err`).
///
/// # Safety
/// `config_json` is NUL-terminated; `err` has `err_len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn pixeldit_pipeline_new(
    config_json: *const c_char,
    err: *mut c_char,
    err_len: usize,
) -> *mut Pipeline {
    let result = catch_unwind(|| -> std::result::Result<Pipeline, String> {
        let text = unsafe { arg(config_json, "pipeline configuration") }?;
        let cfg: PipelineConfig =
            serde_json::from_str(&text).map_err(|e| format!("pipeline configuration: {e}"))?;
        Pipeline::new(&cfg).map_err(|e| e.to_string())
    });
    match result {
        Ok(Ok(p)) => Box::into_raw(Box::new(p)),
        Ok(Err(e)) => {
            write_error(err, err_len, &e);
            std::ptr::null_mut()
        }
        Err(_) => {
            write_error(err, err_len, "panic while creating the pipeline");
            std::ptr::null_mut()
        }
    }
}

/// Frees a pipeline from [`pixeldit_pipeline_new`].
///
/// # Safety
/// `p` is null or came from [`pixeldit_pipeline_new`] and is not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn pixeldit_pipeline_free(p: *mut Pipeline) {
    if !p.is_null() {
        drop(unsafe { Box::from_raw(p) });
    }
}

/// Writes `[C, H, W]` of the sample to `out[0..3]`.
///
/// # Safety
/// `p` is a live pipeline; `out` has 3 writable `usize`.
#[no_mangle]
pub unsafe extern "C" fn pixeldit_pipeline_image_shape(p: *const Pipeline, out: *mut usize) {
    if p.is_null() || out.is_null() {
        return;
    }
    let s = unsafe { &*p }.sample_shape();
    for (i, v) in s.iter().enumerate() {
        unsafe { *out.add(i) = *v };
    }
}

/// Samples one image for `request_json` (see [`Request`]). Every forward is `run(user, denoiser, ...)`. Writes
/// `3*H*W` bytes to `image` and `C*H*W` floats to `x`. Returns 0; 1 for a bad request, 2 for a failed forward or
/// sampler, 3 for a panic, with the message in `err`.
///
/// # Safety
/// `p` is a live pipeline; `request_json` is NUL-terminated; `image`, `x` and `err` have the sizes above; `run`
/// follows [`RunFn`] for `user` during the call.
#[no_mangle]
pub unsafe extern "C" fn pixeldit_pipeline_generate(
    p: *const Pipeline,
    request_json: *const c_char,
    run: RunFn,
    user: *mut c_void,
    image: *mut u8,
    x: *mut f32,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| -> (i32, String) {
        if p.is_null() || image.is_null() || x.is_null() {
            return (1, "null pipeline or output buffer".into());
        }
        let pipeline = unsafe { &*p };
        let text = match unsafe { arg(request_json, "request") } {
            Ok(t) => t,
            Err(e) => return (1, e),
        };
        let req: Request = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => return (1, format!("bad request: {e}")),
        };
        // SAFETY: forwarded from this function's contract.
        match unsafe { pipeline.generate(&req, run, user) } {
            Ok(g) => {
                unsafe {
                    std::ptr::copy_nonoverlapping(g.image.as_ptr(), image, g.image.len());
                    let xs: Vec<f32> = g.x.iter().copied().collect();
                    std::ptr::copy_nonoverlapping(xs.as_ptr(), x, xs.len());
                }
                (0, String::new())
            }
            Err(e @ PipelineError::Request(_)) => (1, e.to_string()),
            Err(PipelineError::Runtime(RuntimeError::ClassOutOfRange { class, num_classes })) => (
                1,
                format!("bad request: class {class} is out of range 0..{num_classes}"),
            ),
            Err(PipelineError::Runtime(RuntimeError::InvalidArgument(m))) => (1, format!("bad request: {m}")),
            Err(e) => (2, e.to_string()),
        }
    }));
    let (rc, msg) = result.unwrap_or((3, "panic while sampling".into()));
    if rc != 0 {
        write_error(err, err_len, &msg);
    }
    rc
}

#[cfg(test)]
mod tests {
    use super::*;
    use pixeldit_spec::{AttentionMode, ModelConfig, Precision};

    fn meta() -> ModelMetadata {
        let config = ModelConfig::preset("tiny").unwrap();
        ModelMetadata {
            format_version: pixeldit_spec::META_FORMAT_VERSION,
            sampler: config.sampler.clone(),
            height: config.default_height,
            width: config.default_width,
            config,
            precision: Precision::Fp32,
            attention: AttentionMode::Decomposed,
            weights_sha256: String::new(),
            weights_source: "test".into(),
            exporter_version: "0".into(),
            quantization: None,
        }
    }

    /// A "denoiser" in Rust: v = -x + y/10, through the C ABI's callback path.
    unsafe extern "C" fn fake_denoiser(
        _user: *mut c_void,
        _model: *const c_char,
        n: usize,
        names: *const *const c_char,
        dtypes: *const i32,
        ranks: *const usize,
        shapes: *const *const i64,
        data: *const *const c_void,
        _n_out: usize,
        out_names: *const *const c_char,
        sink: OutputSink,
        sink_ctx: *mut c_void,
    ) -> i32 {
        let mut x: Option<(Vec<i64>, Vec<f32>)> = None;
        let mut y: Vec<i64> = Vec::new();
        for i in 0..n {
            let name = unsafe { CStr::from_ptr(*names.add(i)) }.to_str().unwrap();
            let rank = unsafe { *ranks.add(i) };
            let shape: Vec<i64> = (0..rank).map(|k| unsafe { *(*shapes.add(i)).add(k) }).collect();
            let len: usize = shape.iter().product::<i64>() as usize;
            match (name, unsafe { *dtypes.add(i) }) {
                ("x", DTYPE_F32) => {
                    let v = unsafe { std::slice::from_raw_parts(*data.add(i) as *const f32, len) };
                    x = Some((shape, v.to_vec()));
                }
                ("y", DTYPE_I64) => {
                    y = unsafe { std::slice::from_raw_parts(*data.add(i) as *const i64, len) }.to_vec();
                }
                _ => {}
            }
        }
        let (shape, xv) = x.unwrap();
        let per = xv.len() / shape[0] as usize;
        let v: Vec<f32> = xv
            .iter()
            .enumerate()
            .map(|(i, a)| -a + y[i / per] as f32 / 10.0)
            .collect();
        unsafe { sink(sink_ctx, *out_names, shape.len(), shape.as_ptr(), v.as_ptr()) }
    }

    fn generate(req: &str) -> (i32, String, Vec<u8>) {
        let m = meta();
        let cfg = serde_json::json!({"metadata": m.to_json(), "denoiser": "pixeldit_tiny"}).to_string();
        let cfg = CString::new(cfg).unwrap();
        let mut err = vec![0 as c_char; 512];
        let p = unsafe { pixeldit_pipeline_new(cfg.as_ptr(), err.as_mut_ptr(), err.len()) };
        assert!(!p.is_null());
        let mut shape = [0usize; 3];
        unsafe { pixeldit_pipeline_image_shape(p, shape.as_mut_ptr()) };
        let mut image = vec![0u8; 3 * shape[1] * shape[2]];
        let mut x = vec![0f32; shape.iter().product()];
        let req = CString::new(req).unwrap();
        let rc = unsafe {
            pixeldit_pipeline_generate(
                p,
                req.as_ptr(),
                fake_denoiser,
                std::ptr::null_mut(),
                image.as_mut_ptr(),
                x.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        unsafe { pixeldit_pipeline_free(p) };
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        (rc, msg, image)
    }

    /// The C ABI gives the image the runtime's sampler gives for the same noise and model.
    #[test]
    fn generate_matches_the_runtime_sampler() {
        let (rc, msg, image) = generate(r#"{"class": 3, "seed": 7, "index": 1}"#);
        assert_eq!(rc, 0, "{msg}");
        let m = meta();
        let cfg = FlowSamplerConfig::from_defaults(&m.sampler).unwrap();
        let [c, h, w] = [m.config.in_channels, m.height, m.width];
        let stream = io::seeded_noise(7, [2, c, h, w]);
        let noise = stream.slice_axis(Axis(0), (1..).into()).to_owned();
        let x = flow::sample(
            &mut |x: ndarray::ArrayView4<f32>, _t, y: ndarray::ArrayView1<i64>| {
                let per = x.len() / x.shape()[0];
                let flat: Vec<f32> = x
                    .iter()
                    .enumerate()
                    .map(|(i, a)| -a + y[i / per] as f32 / 10.0)
                    .collect();
                Ok(ndarray::Array4::from_shape_vec(x.raw_dim(), flat).unwrap())
            },
            noise,
            &[3],
            m.config.null_class(),
            &cfg,
            &mut |_| {},
        )
        .unwrap();
        let hwc = io::image_rgb8(x.index_axis(Axis(0), 0));
        for (i, px) in hwc.chunks_exact(3).enumerate() {
            for ch in 0..3 {
                assert_eq!(image[ch * h * w + i], px[ch]);
            }
        }
    }

    #[test]
    fn bad_requests_are_named() {
        for (req, want) in [
            (r#"{"class": 10}"#, "class 10 is out of range 0..10"),
            (r#"{"class": -1}"#, "class -1 is out of range"),
            (r#"{"seed": 1}"#, "'class' is required"),
            (r#"{"class": 1, "steps": 0}"#, "steps 0: expected 1..=1000"),
            (r#"{"class": 1, "steps": 100000}"#, "steps 100000"),
            (r#"{"class": 1, "sampler": "ddim"}"#, "sampler 'ddim'"),
            (r#"{"class": 1, "colour": 2}"#, "unknown field `colour`"),
            (r#"{"class": "three"}"#, "bad request"),
            (r#"{"class": 1, "index": 5000}"#, "index 5000"),
            (r#"{"class": 1, "prompt": "a 7"}"#, "send 'class', not a prompt"),
        ] {
            let (rc, msg, _) = generate(req);
            assert_eq!(rc, 1, "{req}: {msg}");
            assert!(msg.contains(want), "{req}: '{msg}' lacks '{want}'");
        }
    }
}

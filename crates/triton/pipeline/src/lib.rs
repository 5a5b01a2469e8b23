//! The sampler of a Triton pipeline model (`NAME_pipeline`, written by `pixeldit-export --triton-repo`): one request
//! in (class or prompt, seed, optional sampler settings), one image out, with every network forward (denoiser and,
//! for text-to-image models, the text encoder) sent back to Triton.
//!
//! Triton's python backend runs `model.py` (`crates/triton/python/model.py`, embedded by `pixeldit-triton`), which
//! loads this library with `ctypes` and calls [`pixeldit_pipeline_generate`] once per request. The library owns
//! everything that must equal a local `pixeldit-run` exactly, by reusing the runtime: the seeded noise stream
//! ([`pixeldit_runtime::io`]), the samplers, the checks of the request and the conversion to 8-bit pixels. Each
//! forward goes through a [`CallbackBackend`], a [`pixeldit_runtime::Backend`] whose `run` calls the [`RunFn`] that
//! `model.py` passes in; `model.py` turns it into a BLS request to the denoiser model, so the denoiser's dynamic
//! batcher sees the steps of concurrent pipeline requests. There is one sampler implementation, the runtime's.
//!
//! Modules:
//! * [`request`]: [`Request`], one request as JSON, and its sampler settings;
//! * [`config`]: [`PipelineConfig`], read from the Triton model configuration's `pixeldit.*` parameters;
//! * [`pipeline`]: [`Pipeline`], which samples one image per request;
//! * [`callback`]: [`CallbackBackend`], the forwards through `model.py`'s callback;
//! * [`ffi`]: the C ABI, the only module with `unsafe` code.
//!
//! The C ABI (version [`PIXELDIT_ABI_VERSION`], from [`pixeldit_pipeline_abi_version`]; every function catches
//! panics; errors are written as UTF-8 into the caller's buffer; return codes [`PIXELDIT_OK`] ... in
//! [`RETURN_CODES`], mirrored by `model.py`):
//! * [`pixeldit_pipeline_new`] / [`pixeldit_pipeline_free`]: a [`Pipeline`] for Triton's model configuration (JSON)
//!   and the model's version folder;
//! * [`pixeldit_pipeline_image_shape`]: `[C, H, W]` of the outputs;
//! * [`pixeldit_pipeline_generate`]: one request (JSON, see [`Request`]) -> `image` u8 `[3, H, W]` and `x` f32
//!   `[C, H, W]` (the final sample before quantization), into buffers of those lengths.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod callback;
pub mod config;
pub mod ffi;
pub mod pipeline;
pub mod request;

pub use callback::{CallbackBackend, OutputSink, RunFn, DTYPE_F32, DTYPE_I64};
pub use config::PipelineConfig;
pub use ffi::{
    pixeldit_pipeline_abi_version, pixeldit_pipeline_free, pixeldit_pipeline_generate,
    pixeldit_pipeline_image_shape, pixeldit_pipeline_new, Callbacks, PIXELDIT_ABI_VERSION,
    PIXELDIT_BAD_ARGUMENT, PIXELDIT_BAD_REQUEST, PIXELDIT_BUFFER, PIXELDIT_FAILED, PIXELDIT_OK,
    PIXELDIT_PANIC, RETURN_CODES,
};
pub use pipeline::{Generated, Pipeline};
pub use request::{sampler_config, Request};

use pixeldit_runtime::RuntimeError;

/// Largest `index` (position in the seed's noise stream) a request may ask for.
pub use pixeldit_runtime::generate::MAX_NOISE_INDEX as MAX_INDEX;
/// Largest `steps` a request may ask for (the runtime's limit, the same as `pixeldit-run`'s).
pub use pixeldit_runtime::generate::MAX_STEPS;
/// Longest prompt or negative prompt a request may send, in bytes. Shorter prompts past the recipe's token limit
/// are truncated as the official recipe (and `pixeldit-run`) does.
pub const MAX_PROMPT_BYTES: usize = 16384;

/// Errors of the pipeline: a bad request, a bad configuration, or a failed forward.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The request is invalid (type, range, model kind); the message says which field and what is allowed.
    #[error("bad request: {0}")]
    Request(String),
    /// The runtime (sampler, a forward through Triton) failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The pipeline's configuration (Triton's model configuration, its `pixeldit.*` parameters) is incomplete or
    /// invalid.
    #[error("pipeline configuration: {0}")]
    Config(String),
    /// The model metadata given at start-up does not parse.
    #[error("model metadata: {source}")]
    Metadata {
        #[from]
        source: pixeldit_spec::SpecError,
    },
    /// A forward through `model.py`'s callback failed (`model.py` adds its own message); the source of a
    /// [`RuntimeError::Backend`].
    #[error("BLS {model}: {message}")]
    Forward { model: String, message: String },
}

impl PipelineError {
    /// Whether the request is at fault ("bad request", HTTP 400) rather than the model, the server or this library.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            PipelineError::Request(_) => true,
            PipelineError::Runtime(e) => e.is_invalid_input(),
            _ => false,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, PipelineError>;

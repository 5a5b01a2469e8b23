//! Triton Inference Server for PixelDiT, in one place.
//!
//! Module map:
//! * [`pb`]: Triton's `inference.ModelConfig` as Rust types, generated from the vendored `model_config.proto`.
//! * [`pbtxt`]: `config.pbtxt` read and written through prost-reflect's text format over those types.
//! * [`config`]: the `ModelConfig` of an exported model, from its metadata and `pixeldit_spec::io` ([`TritonOptions`]).
//! * [`repository`]: the repository layout ([`write_model_config`]) and the checks Triton's schema does not make
//!   ([`validate_repository`]).
//! * [`pipeline`]: the `NAME_pipeline` model beside a denoiser (python backend `python/model.py`, embedded, + the
//!   sampler library of the crate `pixeldit-triton-pipeline`): one request, one image, forwards as BLS requests to
//!   the denoiser (and, for requests with a patch cache, to the pixel-level model `NAME_pixel`,
//!   [`config::pixel_model_config`], [`repository::write_pixel_model`]). Its file names and config parameter keys are
//!   in [`config`].
//! * [`kserve`]: the KServe v2 wire format (typed request and response bodies, binary tensor extension).
//! * [`client`]: [`TritonModel`], a served model behind the runtime's `Backend` trait (KServe v2 HTTP, binary
//!   tensors).
//!
//! The crate takes the runtime without its backends (no ONNX Runtime, no tract): it needs only the `Backend` trait,
//! tensors, the prompt tokenizer and the text encoder's metadata reader.
//!
//! Errors are one enum, [`TritonError`].

pub mod client;
pub mod config;
mod error;
pub mod kserve;
pub mod pb;
pub mod pbtxt;
pub mod pipeline;
pub mod repository;

pub use client::{ClientOptions, PipelineRequest, RemoteTensor, TritonModel};
pub use config::{InstanceKind, Platform, TritonOptions};
pub use error::{Result, TritonError};
pub use pipeline::{PipelineOptions, TextPipeline};
pub use repository::{validate_model_dir, validate_repository, write_model_config, RepositoryReport};

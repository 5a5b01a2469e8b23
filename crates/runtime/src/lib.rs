//! Runs exported PixelDiT models (`pixeldit-export` ONNX files) and samples images from them.
//!
//! Module map:
//! * [`backend`]: the [`Backend`] trait (named tensors in, named f32 outputs out) with ONNX Runtime (`ort`: CPU,
//!   CUDA, TensorRT; library loaded at run time) and tract (pure Rust) implementations, and [`backend::load`],
//!   whose `auto` mode tries TensorRT, CUDA, ORT CPU and tract and records why each skipped one was skipped.
//! * [`denoiser`]: the model adapter that owns a denoiser's input/output names (`x`, `t`, `y`|`text` -> `v`).
//! * [`tensor`]: [`TensorRef`], the borrowed f32/i64 input tensors of a forward.
//! * [`ops`]: the custom ops `pixeldit.RotaryAttention` and `pixeldit.JointRotaryAttention`, one module each
//!   (kernel), their ORT and tract adapters, and the one registry both backends read.
//! * [`lowp`]: BFLOAT16/FLOAT8 decoding and rounding for tract's load-time rewrite (tract has no such types).
//! * [`generate`]: the generation API for every model kind: [`generate::Request`] (conditions, sampler settings
//!   checked in one place, image shape, noise) and [`generate::generate`].
//! * [`samplers`]: the [`samplers::Sampler`] trait and one module per sampler (`flow_dpm`, `euler`, `heun`,
//!   `dpmpp_2m`), each usable with every model kind.
//! * [`patch_cache`]: the patch-level step cache ([`patch_cache::CachedDenoiser`]: the whole model on full
//!   forwards, the exported pixel-level graph on the kept patch tokens in between).
//! * [`model`]: reads the `pixeldit.metadata` JSON and the node list of a model file without a backend.
//! * [`prompt`]: the Gemma-2 tokenizer (`tokenizer.json`) and the official text-to-image prompt recipe.
//! * [`text_encoder`]: the exported Gemma-2 encoder with its tokenizer: texts -> `[K, 300, D]` text embeddings,
//!   checked against the tokenizer and the T2I model.
//! * [`io`]: seeded noise, `.npy`, text embeddings, PNG, atomic writes.
//! * [`bench`]: per-forward latency measurement.
//!
//! ```no_run
//! use pixeldit_runtime::generate::{self, Conditions, ImageShape, Noise, Request, SamplerConfig};
//! use pixeldit_runtime::{backend, io, model, Denoiser};
//! # fn main() -> pixeldit_runtime::Result<()> {
//! let path = std::path::Path::new("tiny.onnx");
//! let meta = model::read_metadata(path)?;
//! let sel = backend::load(path, &backend::LoadOptions::default())?;
//! let mut denoiser = Denoiser::new(sel.backend, &meta);
//! let req = Request {
//!     conditions: Conditions::classes(vec![1], meta.config.null_class()),
//!     sampler: SamplerConfig::from_metadata(&meta.sampler)?,
//!     image: ImageShape::of(&meta),
//!     noise: Noise::seeded(0),
//! };
//! let x = generate::generate(&mut denoiser, &req, &mut |_| {})?.x;
//! let out = std::path::Path::new("out.png");
//! let rgb = io::image_rgb8(x.index_axis(ndarray::Axis(0), 0));
//! io::write_atomic(out, &io::png_bytes(out, &rgb, meta.width, meta.height)?)?;
//! # Ok(()) }
//! ```
//!
//! Errors are one enum, [`RuntimeError`].

pub mod backend;
pub mod bench;
pub mod denoiser;
mod error;
pub mod generate;
pub mod io;
pub mod lowp;
pub mod model;
pub mod ops;
pub mod patch_cache;
pub mod prompt;
pub mod samplers;
pub mod tensor;
pub mod text_encoder;

pub use backend::{Backend, BackendKind, Device, LoadOptions};
pub use denoiser::{CondRows, Conditioning, Denoiser};
pub use error::{BoxError, Result, RuntimeError};
pub use generate::{Conditions, SamplerConfig, SamplerOverrides, Time};
pub use samplers::SamplerKind;
pub use tensor::TensorRef;

impl From<ops::KernelShapeError> for RuntimeError {
    fn from(e: ops::KernelShapeError) -> Self {
        RuntimeError::Shape(e.to_string())
    }
}

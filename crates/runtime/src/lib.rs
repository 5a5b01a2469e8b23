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
//! * [`samplers`]: the class-conditional flow sampler and the text-to-image DPM-Solver++ 2M, as pure functions.
//! * [`model`]: reads the `pixeldit.metadata` JSON and the node list of a model file without a backend.
//! * [`prompt`]: the Gemma-2 tokenizer (`tokenizer.json`) and the official text-to-image prompt recipe.
//! * [`text_encoder`]: the exported Gemma-2 encoder with its tokenizer: texts -> `[K, 300, D]` text embeddings,
//!   checked against the tokenizer and the T2I model.
//! * [`io`]: seeded noise, `.npy`, text embeddings, PNG, atomic writes.
//! * [`bench`]: per-forward latency measurement.
//!
//! ```no_run
//! use pixeldit_runtime::{backend, io, model, samplers::flow, Denoiser};
//! # fn main() -> pixeldit_runtime::Result<()> {
//! let path = std::path::Path::new("tiny.onnx");
//! let meta = model::read_metadata(path)?;
//! let sel = backend::load(path, &backend::LoadOptions::default())?;
//! let mut denoiser = Denoiser::new(sel.backend, &meta);
//! let cfg = flow::FlowSamplerConfig::from_defaults(&meta.sampler)?;
//! let noise = io::seeded_noise(0, [1, 3, meta.height, meta.width]);
//! let x = flow::sample(
//!     &mut |x, t, y| denoiser.class_velocity(x, t, y),
//!     noise,
//!     &[1],
//!     meta.config.null_class(),
//!     &cfg,
//!     &mut |_| {},
//! )?;
//! io::write_atomic(std::path::Path::new("out.png"), &io::png_bytes(
//!     std::path::Path::new("out.png"), &io::image_rgb8(x.index_axis(ndarray::Axis(0), 0)), meta.width, meta.height)?)?;
//! # Ok(()) }
//! ```
//!
//! Errors are one enum, [`RuntimeError`].

pub mod backend;
pub mod bench;
pub mod denoiser;
mod error;
pub mod io;
pub mod lowp;
pub mod model;
pub mod ops;
pub mod prompt;
pub mod samplers;
pub mod tensor;
pub mod text_encoder;

pub use backend::{Backend, BackendKind, Device, LoadOptions};
pub use denoiser::{Conditioning, Denoiser};
pub use error::{BoxError, Result, RuntimeError};
pub use samplers::dpm_solver::DpmSolverConfig;
pub use samplers::flow::{FlowSamplerConfig, SamplerKind};
pub use tensor::TensorRef;

impl From<ops::KernelShapeError> for RuntimeError {
    fn from(e: ops::KernelShapeError) -> Self {
        RuntimeError::Shape(e.to_string())
    }
}

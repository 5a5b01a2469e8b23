//! Runs exported PixelDiT models (`pixeldit-export` ONNX files) and samples images from them.
//!
//! * [`backend`]: the [`Backend`] trait with ONNX Runtime (`ort`, CPU / CUDA / TensorRT execution providers, library
//!   loaded at run time) and tract (pure Rust) implementations, and [`backend::load`], whose `auto` mode tries
//!   TensorRT, CUDA, ORT CPU and tract in that order and records why each one it passed over was skipped.
//! * [`kernel`]: the f32 kernel of the custom op `pixeldit.RotaryAttention`, registered in both backends.
//! * [`lowp`]: BFLOAT16/FLOAT8 decoding and rounding, used by tract's load-time rewrite
//!   ([`backend::tract::rewrite_low_precision`]) because tract has no such types.
//! * [`sampler`]: time grid, `flow_dpm` / `euler` / `heun` updates and batched classifier-free guidance, as pure
//!   functions.
//! * [`model`]: reads the `pixeldit.metadata` JSON and the node list of a model file without a backend.
//! * [`prompt`]: the Gemma-2 tokenizer (`tokenizer.json`) and the official text-to-image prompt recipe.
//! * [`io`]: seeded noise, `.npy`, PNG, atomic writes. [`bench`]: latency measurement and `BENCHMARKS.md` rows.
//!
//! ```no_run
//! use pixeldit_runtime::{backend, io, model, sampler};
//! # fn main() -> pixeldit_runtime::Result<()> {
//! let path = std::path::Path::new("tiny.onnx");
//! let meta = model::read_metadata(path)?;
//! let mut sel = backend::load(path, &backend::LoadOptions::default())?;
//! let cfg = sampler::SamplerConfig::from_defaults(&meta.sampler)?;
//! let noise = io::seeded_noise(0, [1, 3, meta.height, meta.width]);
//! let x = sampler::sample(
//!     &mut |x, t, y| sel.backend.run(x, t, y),
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
//! Errors are one enum, [`RuntimeError`]; the `pixeldit-run` binary wraps them with `anyhow`.

pub mod backend;
pub mod bench;
mod error;
pub mod io;
pub mod kernel;
pub mod kernel_joint;
pub mod lowp;
pub mod model;
pub mod prompt;
pub mod sampler;
pub mod t2i;

pub use backend::{Backend, BackendKind, Device, LoadOptions};
pub use error::{Result, RuntimeError};
pub use sampler::{SamplerConfig, SamplerKind};

impl From<kernel::KernelShapeError> for RuntimeError {
    fn from(e: kernel::KernelShapeError) -> Self {
        RuntimeError::Shape(e.to_string())
    }
}

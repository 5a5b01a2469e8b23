//! The model adapter: owns the input and output names of an exported PixelDiT denoiser (from
//! [`pixeldit_spec::io::model_io`]) and turns the samplers' calls into named [`Backend::run`]s.

use crate::backend::Backend;
use crate::error::{Result, RuntimeError};
use crate::tensor::TensorRef;
use ndarray::{Array4, ArrayD, ArrayView1, ArrayView3, ArrayView4};
use pixeldit_spec::{ModelKind, ModelMetadata};

/// What conditions the denoiser: class labels or text-encoder hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditioning {
    /// `y [B] int64` class labels (class-conditional models).
    Class,
    /// `text [B, L, E] float32` hidden states (text-to-image models).
    Text,
}

/// An exported denoiser on a backend: `(x, t, y|text) -> v`.
pub struct Denoiser {
    backend: Box<dyn Backend>,
    x: String,
    t: String,
    cond: String,
    conditioning: Conditioning,
    v: String,
}

impl Denoiser {
    /// Wraps `backend`, which runs the model described by `meta`.
    pub fn new(backend: Box<dyn Backend>, meta: &ModelMetadata) -> Self {
        let (inputs, outputs) = pixeldit_spec::io::model_io(&meta.config, meta.height, meta.width);
        let conditioning = if meta.config.kind == ModelKind::T2i && meta.config.text.is_some() {
            Conditioning::Text
        } else {
            Conditioning::Class
        };
        Denoiser {
            backend,
            x: inputs[0].name.to_string(),
            t: inputs[1].name.to_string(),
            cond: inputs[2].name.to_string(),
            conditioning,
            v: outputs[0].name.to_string(),
        }
    }

    /// Class labels or text.
    pub fn conditioning(&self) -> Conditioning {
        self.conditioning
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The backend, mutably (for raw named runs).
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    /// Gives the backend back.
    pub fn into_backend(self) -> Box<dyn Backend> {
        self.backend
    }

    fn expect(&self, want: Conditioning) -> Result<()> {
        if self.conditioning == want {
            return Ok(());
        }
        Err(RuntimeError::InvalidArgument(format!(
            "this model is conditioned on {}, not {}",
            describe(self.conditioning),
            describe(want)
        )))
    }

    /// One forward of a class-conditional model: `x [B,3,H,W]`, `t [B]` in `[0, 1]`, `y [B]` -> `v`.
    pub fn class_velocity(
        &mut self,
        x: ArrayView4<f32>,
        t: ArrayView1<f32>,
        y: ArrayView1<i64>,
    ) -> Result<Array4<f32>> {
        Ok(self.class_velocity_with_outputs(x, t, y, &[])?.0)
    }

    /// [`Denoiser::class_velocity`] that also returns the f32 graph outputs named in `extra` (debug or calibration
    /// taps added at export), in that order.
    pub fn class_velocity_with_outputs(
        &mut self,
        x: ArrayView4<f32>,
        t: ArrayView1<f32>,
        y: ArrayView1<i64>,
        extra: &[String],
    ) -> Result<(Array4<f32>, Vec<ArrayD<f32>>)> {
        self.expect(Conditioning::Class)?;
        let feeds = [
            (self.x.as_str(), TensorRef::from(x.view())),
            (self.t.as_str(), TensorRef::from(t.view())),
            (self.cond.as_str(), TensorRef::from(y.view())),
        ];
        run_v(self.backend.as_mut(), &self.v, &feeds, extra)
    }

    /// One forward of a text-to-image model: `x [B,3,H,W]`, `t [B]` = sigma * 1000, `text [B,L,E]` -> `v`.
    pub fn text_velocity(
        &mut self,
        x: ArrayView4<f32>,
        t: ArrayView1<f32>,
        text: ArrayView3<f32>,
    ) -> Result<Array4<f32>> {
        Ok(self.text_velocity_with_outputs(x, t, text, &[])?.0)
    }

    /// [`Denoiser::text_velocity`] that also returns the f32 graph outputs named in `extra` (calibration taps), in
    /// that order.
    pub fn text_velocity_with_outputs(
        &mut self,
        x: ArrayView4<f32>,
        t: ArrayView1<f32>,
        text: ArrayView3<f32>,
        extra: &[String],
    ) -> Result<(Array4<f32>, Vec<ArrayD<f32>>)> {
        self.expect(Conditioning::Text)?;
        let feeds = [
            (self.x.as_str(), TensorRef::from(x.view())),
            (self.t.as_str(), TensorRef::from(t.view())),
            (self.cond.as_str(), TensorRef::from(text.view())),
        ];
        run_v(self.backend.as_mut(), &self.v, &feeds, extra)
    }
}

/// Runs `feeds` and returns the output `v` as `[B,3,H,W]` plus the outputs named in `extra`.
fn run_v(
    backend: &mut dyn Backend,
    v: &str,
    feeds: &[(&str, TensorRef<'_>)],
    extra: &[String],
) -> Result<(Array4<f32>, Vec<ArrayD<f32>>)> {
    let mut names: Vec<&str> = vec![v];
    names.extend(extra.iter().map(String::as_str));
    let mut outs = backend.run(feeds, &names)?.into_iter();
    let out = outs
        .next()
        .ok_or_else(|| RuntimeError::Shape(format!("the backend returned no output '{v}'")))?;
    let shape = out.shape().to_vec();
    let out = out
        .into_dimensionality()
        .map_err(|_| RuntimeError::Shape(format!("output '{v}' has shape {shape:?}, expected 4-D")))?;
    Ok((out, outs.collect()))
}

fn describe(c: Conditioning) -> &'static str {
    match c {
        Conditioning::Class => "class labels",
        Conditioning::Text => "text embeddings",
    }
}

//! The model adapter: owns the input and output names of an exported PixelDiT denoiser (from
//! [`pixeldit_spec::io::model_io`]) and its time and velocity conventions, and turns calls into named
//! [`Backend::run`]s.
//!
//! Two ways in:
//! * [`Denoiser::forward`]: one network forward with the model's own inputs (`t` as the graph takes it), for golden
//!   forward tests and benchmarks;
//! * [`Denoiser::velocity`] (the [`VelocityModel`] the generation API samples): one [`Time`] convention for every
//!   model kind, converted here: class-conditional models take the flow time `t` and predict `v = x0 - noise`;
//!   text-to-image models take `1000 * sigma` (`sigma = 1 - t`) and predict `noise - x0`, which is negated.

use crate::backend::Backend;
use crate::error::{Result, RuntimeError};
use crate::generate::{Time, VelocityModel};
use crate::tensor::TensorRef;
use ndarray::{Array1, Array4, ArrayD, ArrayView1, ArrayView3, ArrayView4};
use pixeldit_spec::{ModelKind, ModelMetadata};

/// What conditions the denoiser: class labels or text-encoder hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditioning {
    /// `y [B] int64` class labels (class-conditional models).
    Class,
    /// `text [B, L, E] float32` hidden states (text-to-image models).
    Text,
}

impl Conditioning {
    /// What the condition is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Conditioning::Class => "class labels",
            Conditioning::Text => "text embeddings",
        }
    }
}

/// The condition rows of one forward, one per image of the batch.
#[derive(Debug, Clone, Copy)]
pub enum CondRows<'a> {
    /// `y [B]` class labels.
    Class(ArrayView1<'a, i64>),
    /// `text [B, L, E]` hidden states.
    Text(ArrayView3<'a, f32>),
}

impl CondRows<'_> {
    /// Rows (batch size).
    pub fn len(&self) -> usize {
        match self {
            CondRows::Class(y) => y.len(),
            CondRows::Text(t) => t.shape()[0],
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Class labels or text.
    pub fn conditioning(&self) -> Conditioning {
        match self {
            CondRows::Class(_) => Conditioning::Class,
            CondRows::Text(_) => Conditioning::Text,
        }
    }

    fn tensor(&self) -> TensorRef<'_> {
        match self {
            CondRows::Class(y) => TensorRef::from(y.view()),
            CondRows::Text(t) => TensorRef::from(t.view()),
        }
    }
}

impl<'a> From<ArrayView1<'a, i64>> for CondRows<'a> {
    fn from(y: ArrayView1<'a, i64>) -> Self {
        CondRows::Class(y)
    }
}

impl<'a> From<ArrayView3<'a, f32>> for CondRows<'a> {
    fn from(t: ArrayView3<'a, f32>) -> Self {
        CondRows::Text(t)
    }
}

/// An exported denoiser on a backend: `(x, t, y|text) -> v`.
pub struct Denoiser {
    backend: Box<dyn Backend>,
    x: String,
    t: String,
    cond: String,
    /// Also the graph's time convention: class-conditional graphs take the flow time `t` and predict
    /// `x0 - noise`; the text-to-image graph takes `1000 sigma` and predicts `noise - x0`.
    conditioning: Conditioning,
    v: String,
}

impl Denoiser {
    /// Wraps `backend`, which runs the model described by `meta`.
    pub fn new(backend: Box<dyn Backend>, meta: &ModelMetadata) -> Self {
        let (inputs, outputs) = pixeldit_spec::io::model_io(&meta.config, meta.height, meta.width);
        let text = meta.config.kind == ModelKind::T2i && meta.config.text.is_some();
        let conditioning = if text {
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

    /// The graph's input names: image, time, condition.
    pub fn input_names(&self) -> (String, String, String) {
        (self.x.clone(), self.t.clone(), self.cond.clone())
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

    /// The graph's `t` input for `time`: the flow time for class-conditional models, `1000 * sigma` for
    /// text-to-image models (rounded to f32 once).
    pub fn model_time(&self, time: Time) -> f32 {
        match self.conditioning {
            Conditioning::Class => time.t() as f32,
            Conditioning::Text => (time.sigma() * 1000.0) as f32,
        }
    }

    /// One network forward with the graph's own inputs: `x [B,3,H,W]`, `t [B]` as the graph takes it (see
    /// [`Denoiser::model_time`]), the condition rows -> the graph's `v`.
    pub fn forward(
        &mut self,
        x: ArrayView4<f32>,
        t: ArrayView1<f32>,
        cond: CondRows<'_>,
    ) -> Result<Array4<f32>> {
        Ok(self.forward_with_outputs(x, t, cond, &[])?.0)
    }

    /// [`Denoiser::forward`] that also returns the f32 graph outputs named in `extra` (debug or calibration taps
    /// added at export), in that order.
    pub fn forward_with_outputs(
        &mut self,
        x: ArrayView4<f32>,
        t: ArrayView1<f32>,
        cond: CondRows<'_>,
        extra: &[String],
    ) -> Result<(Array4<f32>, Vec<ArrayD<f32>>)> {
        if cond.conditioning() != self.conditioning {
            return Err(RuntimeError::InvalidArgument(format!(
                "this model is conditioned on {}, not {}",
                self.conditioning.describe(),
                cond.conditioning().describe()
            )));
        }
        let feeds = [
            (self.x.as_str(), TensorRef::from(x.view())),
            (self.t.as_str(), TensorRef::from(t.view())),
            (self.cond.as_str(), cond.tensor()),
        ];
        run_v(self.backend.as_mut(), &self.v, &feeds, extra)
    }

    /// The velocity `v = x0 - noise` at `time` for every row, plus the outputs named in `extra`.
    pub fn velocity_with_outputs(
        &mut self,
        x: ArrayView4<f32>,
        time: Time,
        cond: CondRows<'_>,
        extra: &[String],
    ) -> Result<(Array4<f32>, Vec<ArrayD<f32>>)> {
        let t = Array1::from_elem(x.shape()[0], self.model_time(time));
        let (mut v, taps) = self.forward_with_outputs(x, t.view(), cond, extra)?;
        self.graph_output_to_velocity(&mut v);
        Ok((v, taps))
    }

    /// Turns the graph's output into the velocity `x0 - noise` in place (the text-to-image graph predicts
    /// `noise - x0`: negated, exactly in floating point). Also for the graphs cut from this model.
    pub(crate) fn graph_output_to_velocity(&self, v: &mut Array4<f32>) {
        if self.conditioning == Conditioning::Text {
            v.mapv_inplace(|a| -a);
        }
    }
}

impl VelocityModel for Denoiser {
    fn velocity(&mut self, x: ArrayView4<f32>, time: Time, cond: CondRows<'_>) -> Result<Array4<f32>> {
        Ok(self.velocity_with_outputs(x, time, cond, &[])?.0)
    }
}

/// Runs `feeds` and returns the output `v` as `[B,3,H,W]` plus the outputs named in `extra`.
pub(crate) fn run_v(
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

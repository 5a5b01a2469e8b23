//! Forwards through `model.py`: the callback types of the C ABI ([`RunFn`], [`OutputSink`]) and
//! [`CallbackBackend`], a [`Backend`] whose `run` is one call of the [`RunFn`] (a BLS request in `model.py`). The
//! raw calls themselves are in [`crate::ffi`].

use crate::ffi::Callbacks;
use crate::{PipelineError, Result};
use ndarray::{ArrayD, IxDyn};
use pixeldit_runtime::backend::{check_feeds, Backend};
use pixeldit_runtime::tensor::{Feed, TensorRef};
use pixeldit_runtime::RuntimeError;
use std::ffi::{c_char, c_void, CString};

/// Element types of [`RunFn`] inputs: `float32`.
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

/// A model name as a C string; a NUL byte in it is an error.
pub(crate) fn check_model_name(model: &str) -> Result<CString> {
    CString::new(model)
        .map_err(|_| PipelineError::Config(format!("model name {model:?} contains a NUL byte")))
}

/// Values of one forward input, contiguous.
pub(crate) enum InputData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One input of a forward, as the [`RunFn`] gets it.
pub(crate) struct ForwardInput {
    pub name: CString,
    pub shape: Vec<i64>,
    pub data: InputData,
}

impl ForwardInput {
    /// The [`RunFn`] element type.
    pub fn dtype(&self) -> i32 {
        match self.data {
            InputData::F32(_) => DTYPE_F32,
            InputData::I64(_) => DTYPE_I64,
        }
    }
}

/// The outputs of one forward, as the [`OutputSink`] hands them over.
#[derive(Default)]
pub(crate) struct Collected {
    pub outputs: Vec<(String, ArrayD<f32>)>,
}

/// Takes one output into `collected`; `data` holds the `shape`'s values. Returns 0 when taken, 1 when the values do
/// not fit the shape.
pub(crate) fn collect_output(collected: &mut Collected, name: String, shape: &[usize], data: &[f32]) -> i32 {
    match ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()) {
        Ok(a) => {
            collected.outputs.push((name, a));
            0
        }
        Err(_) => 1,
    }
}

/// A [`Backend`] whose forwards are calls of a [`RunFn`] (a BLS request in `model.py`).
pub struct CallbackBackend {
    calls: Callbacks,
    model: CString,
    inputs: Vec<String>,
    outputs: Vec<String>,
    batch_inputs_2d: bool,
}

impl std::fmt::Debug for CallbackBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackBackend")
            .field("model", &self.model)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl CallbackBackend {
    /// Forwards of Triton model `model` with the given graph input and output names through `calls`. A NUL byte in
    /// `model` is an error.
    pub fn new(calls: Callbacks, model: &str, inputs: &[&str], outputs: &[&str]) -> Result<Self> {
        Ok(CallbackBackend {
            calls,
            model: check_model_name(model)?,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            batch_inputs_2d: false,
        })
    }

    /// Sends 1-D (batch-only) inputs as `[B, 1]`, as a Triton model with `max_batch_size > 0` declares them
    /// (dims `[1]`, reshape `[]`).
    pub fn with_batch_inputs_2d(mut self, on: bool) -> Self {
        self.batch_inputs_2d = on;
        self
    }

    fn fail(&self, message: String) -> RuntimeError {
        RuntimeError::Backend {
            backend: "triton-bls",
            source: Box::new(PipelineError::Forward {
                model: self.model.to_string_lossy().into_owned(),
                message,
            }),
        }
    }
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
        // Contiguous copies in the order of the feeds.
        let mut inputs = Vec::with_capacity(feeds.len());
        for (name, t) in feeds {
            let mut shape: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
            if self.batch_inputs_2d && shape.len() == 1 {
                shape.push(1);
            }
            inputs.push(ForwardInput {
                name: CString::new(*name).map_err(|e| self.fail(e.to_string()))?,
                shape,
                data: match t {
                    TensorRef::F32(a) => InputData::F32(a.iter().copied().collect()),
                    TensorRef::I64(a) => InputData::I64(a.iter().copied().collect()),
                },
            });
        }
        let out_names: Vec<CString> = outputs
            .iter()
            .map(|n| CString::new(*n).map_err(|e| self.fail(e.to_string())))
            .collect::<pixeldit_runtime::Result<_>>()?;
        let mut collected = Collected::default();
        let rc = self
            .calls
            .forward(&self.model, &inputs, &out_names, &mut collected);
        if rc != 0 {
            return Err(self.fail(format!("the forward failed (code {rc})")));
        }
        outputs
            .iter()
            .map(|want| {
                let i = collected
                    .outputs
                    .iter()
                    .position(|(n, _)| n == want)
                    .ok_or_else(|| self.fail(format!("no output '{want}' came back")))?;
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

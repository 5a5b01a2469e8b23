//! tract backend (`tract-onnx` 0.23.9, pure Rust, CPU), with kernels for `pixeldit.RotaryAttention` and for the
//! f32 rounding that replaces FLOAT8/BFLOAT16 casts (see [`rewrite_low_precision`]).
//!
//! * this module: [`TractBackend`] (load, check ops, optimize, run);
//! * `round_op`: the [`ROUND_OP`] kernel (f32 rounded to bf16 / float8 and back);
//! * `lowp_rewrite`: the ONNX graph pass that makes FLOAT8/BFLOAT16 models all-f32 for tract.

mod lowp_rewrite;
mod round_op;

pub use lowp_rewrite::rewrite_low_precision;
pub use round_op::ROUND_OP;

use super::Backend;
use crate::error::{Result, RuntimeError};
use crate::tensor::{Feed, TensorRef};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

/// A model loaded and optimized by tract.
pub struct TractBackend {
    plan: Arc<TypedRunnableModel>,
    /// tract's executor for this model's matrix products: a rayon pool of `threads`, or single-threaded.
    executor: Executor,
    inputs: Vec<String>,
    outputs: Vec<String>,
    notes: Vec<String>,
}

/// A tract error (an `anyhow::Error`, whose context chain the box keeps as its sources).
fn tract_err(e: TractError) -> RuntimeError {
    RuntimeError::Tract { source: e.into() }
}

/// The tract ONNX framework with this crate's custom ops registered.
pub fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::ops::tract::register(&mut onnx);
    onnx.op_register.insert(ROUND_OP, round_op::float_round_builder);
    onnx
}

impl TractBackend {
    /// Loads, rewrites (FLOAT8/BF16), checks ops, and optimizes `path`; runs on one thread per available core.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_threads(path, None)
    }

    /// [`TractBackend::open`] with `threads` threads for tract's matrix products (`None`: one per available core).
    pub fn open_with_threads(path: &Path, threads: Option<usize>) -> Result<Self> {
        let threads = threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let executor = if threads == 1 {
            Executor::SingleThread
        } else {
            Executor::multithread_with_name(threads, "pixeldit-tract")
        };
        if !path.exists() {
            return Err(RuntimeError::ModelNotFound {
                path: path.to_path_buf(),
            });
        }
        let onnx = framework();
        let mut proto = onnx
            .proto_model_for_path(path)
            .map_err(|e| RuntimeError::InvalidModel {
                path: path.to_path_buf(),
                reason: "tract cannot read it".into(),
                source: Some(e.into()),
            })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let notes = rewrite_low_precision(&mut proto, dir)?;
        let graph = proto
            .graph
            .as_ref()
            .ok_or_else(|| RuntimeError::invalid_model(path, "the model has no graph"))?;
        for n in &graph.node {
            if !onnx.op_register.0.contains_key(&n.op_type) {
                return Err(RuntimeError::UnsupportedOp {
                    backend: "tract",
                    op: n.op_type.clone(),
                    domain: n.domain.clone(),
                    node: n.name.clone(),
                });
            }
        }
        let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<String> = graph
            .input
            .iter()
            .filter(|i| !inits.contains(i.name.as_str()))
            .map(|i| i.name.clone())
            .collect();
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        let parsed = onnx.parse(&proto, dir.to_str()).map_err(tract_err)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(RuntimeError::invalid_model(
                path,
                format!("unresolved inputs {:?}", parsed.unresolved_inputs),
            ));
        }
        let plan = parsed
            .model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(tract_err)?;
        Ok(TractBackend {
            plan,
            executor,
            inputs,
            outputs,
            notes,
        })
    }

    /// What the loader changed in the model (FLOAT8/BF16 rewrites), one line each.
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Runs the plan on this backend's executor.
    fn run_plan(&self, feeds: TVec<TValue>) -> Result<TVec<TValue>> {
        multithread_tract_scope(self.executor.clone(), || self.plan.run(feeds)).map_err(tract_err)
    }
}

fn to_tensor<T: Datum + Copy>(a: ArrayViewD<T>) -> Tensor {
    let a = a.as_standard_layout();
    Tensor::from_shape(a.shape(), a.as_slice().expect("standard layout")).expect("shape matches data")
}

fn from_tensor(t: &Tensor) -> Result<ArrayD<f32>> {
    let data = t
        .try_as_plain_ram()
        .and_then(|v| v.as_slice::<f32>().map(|s| s.to_vec()))
        .map_err(tract_err)?;
    ArrayD::from_shape_vec(IxDyn(t.shape()), data).map_err(|source| RuntimeError::ArrayShape {
        what: format!("a tract output of shape {:?}", t.shape()),
        source,
    })
}

impl Backend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn provider(&self) -> String {
        "tract-cpu".to_string()
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn input_names(&self) -> Vec<String> {
        self.inputs.clone()
    }

    fn output_names(&self) -> Vec<String> {
        self.outputs.clone()
    }

    fn run(&mut self, inputs: &[Feed<'_, '_>], outputs: &[&str]) -> Result<Vec<ArrayD<f32>>> {
        super::check_feeds(&self.inputs, inputs)?;
        let feeds: TVec<TValue> = self
            .inputs
            .iter()
            .map(|name| {
                let (_, t) = inputs.iter().find(|(n, _)| n == name).expect("checked feeds");
                match t {
                    TensorRef::F32(a) => to_tensor(a.view()),
                    TensorRef::I64(a) => to_tensor(a.view()),
                }
                .into_tvalue()
            })
            .collect();
        let outs = self.run_plan(feeds)?;
        outputs
            .iter()
            .map(|name| {
                let i =
                    self.outputs.iter().position(|o| o == name).ok_or_else(|| {
                        RuntimeError::Shape(format!("the model has no output named '{name}'"))
                    })?;
                from_tensor(&outs[i])
            })
            .collect()
    }
}

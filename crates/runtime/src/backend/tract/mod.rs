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
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::prelude::tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// A model loaded and optimized by tract.
pub struct TractBackend {
    plans: Plans,
    /// tract's executor for this model's matrix products: a rayon pool of `threads`, or single-threaded.
    executor: Executor,
    inputs: Vec<String>,
    outputs: Vec<String>,
    notes: Vec<String>,
}

/// The optimized plan of a fixed-size model, or the plans of a dynamic-size one per image size.
enum Plans {
    /// One plan (batch stays symbolic).
    Fixed(Arc<TypedRunnableModel>),
    /// A dynamic-size model (`height`/`width` dims, `pixeldit-export --dynamic-size`): tract cannot simplify the
    /// in-graph size arithmetic symbolically, so the model is concretized (batch, height, width) and optimized per
    /// input shape, on first use.
    PerSize {
        /// The parsed model, with symbolic input facts.
        model: Box<InferenceModel>,
        /// Per input: its index and its symbolic axes.
        sized: Vec<(usize, Vec<usize>)>,
        /// Plans by the concrete sizes of those axes (a CFG run uses two batch sizes: two plans per image size).
        cache: HashMap<Vec<usize>, Arc<TypedRunnableModel>>,
    },
}

/// For a dynamic-size model (an input axis named `height` or `width`): every symbolic input axis (batch included,
/// so that tract folds the whole in-graph shape arithmetic into constants), per input; empty for other models.
fn sized_axes(model: &InferenceModel) -> Result<Vec<(usize, Vec<usize>)>> {
    let names = [pixeldit_spec::io::HEIGHT_DIM, pixeldit_spec::io::WIDTH_DIM];
    let mut out = Vec::new();
    let mut dynamic_size = false;
    for i in 0..model.inputs.len() {
        let fact = model.input_fact(i).map_err(tract_err)?;
        let mut axes = Vec::new();
        for (a, d) in fact.shape.dims().enumerate() {
            let d = d.concretize();
            if d.as_ref()
                .is_some_and(|d| names.contains(&d.to_string().as_str()))
            {
                dynamic_size = true;
            }
            if d.as_ref().is_none_or(|d| d.to_i64().is_err()) {
                axes.push(a);
            }
        }
        if !axes.is_empty() {
            out.push((i, axes));
        }
    }
    Ok(if dynamic_size { out } else { Vec::new() })
}

/// `model` with the sized axes of its inputs set to `sizes` (in [`sized_axes`] order), optimized.
fn concretized_plan(
    model: &InferenceModel,
    sized: &[(usize, Vec<usize>)],
    sizes: &[usize],
) -> Result<Arc<TypedRunnableModel>> {
    let mut m = model.clone();
    let mut next = sizes.iter();
    for (i, axes) in sized {
        let fact = m.input_fact(*i).map_err(tract_err)?.clone();
        let mut dims: TVec<TDim> = fact
            .shape
            .concretize()
            .ok_or_else(|| RuntimeError::Shape(format!("input {i} of the model has an open shape")))?;
        for a in axes {
            dims[*a] = (*next.next().expect("one size per sized axis") as i64).into();
        }
        let dt = fact.datum_type.concretize().unwrap_or(f32::datum_type());
        m.set_input_fact(*i, InferenceFact::dt_shape(dt, dims))
            .map_err(tract_err)?;
    }
    m.into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(tract_err)
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
        let sized = sized_axes(&parsed.model)?;
        let plans = if sized.is_empty() {
            Plans::Fixed(
                parsed
                    .model
                    .into_optimized()
                    .and_then(|m| m.into_runnable())
                    .map_err(tract_err)?,
            )
        } else {
            Plans::PerSize {
                model: Box::new(parsed.model),
                sized,
                cache: HashMap::new(),
            }
        };
        Ok(TractBackend {
            plans,
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

    /// Whether the model has a dynamic image size (optimized per size, see [`TractBackend::plan_for`]).
    pub fn is_per_size(&self) -> bool {
        matches!(self.plans, Plans::PerSize { .. })
    }

    /// The plan for these feeds: the fixed one, or the one of their image size (optimized and cached on first
    /// use).
    fn plan_for(&mut self, feeds: &TVec<TValue>) -> Result<Arc<TypedRunnableModel>> {
        match &mut self.plans {
            Plans::Fixed(p) => Ok(p.clone()),
            Plans::PerSize { model, sized, cache } => {
                let mut key = Vec::new();
                for (i, axes) in sized.iter() {
                    let shape = feeds[*i].shape();
                    for a in axes {
                        key.push(*shape.get(*a).ok_or_else(|| {
                            RuntimeError::Shape(format!(
                                "input '{}' has rank {}, the model expects more axes",
                                self.inputs[*i],
                                shape.len()
                            ))
                        })?);
                    }
                }
                if let Some(p) = cache.get(&key) {
                    return Ok(p.clone());
                }
                let plan = concretized_plan(model, sized, &key)?;
                cache.insert(key, plan.clone());
                Ok(plan)
            }
        }
    }

    /// Runs the plan for `feeds` on this backend's executor.
    fn run_plan(&mut self, feeds: TVec<TValue>) -> Result<TVec<TValue>> {
        let plan = self.plan_for(&feeds)?;
        multithread_tract_scope(self.executor.clone(), || plan.run(feeds)).map_err(tract_err)
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

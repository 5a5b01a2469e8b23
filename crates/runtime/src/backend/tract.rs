//! tract backend (`tract-onnx` 0.23.9, pure Rust, CPU), with kernels for `pixeldit.RotaryAttention` and for the
//! f32 rounding that replaces FLOAT8/BFLOAT16 casts (see [`rewrite_low_precision`]).

use super::Backend;
use crate::error::{Result, RuntimeError};
use crate::lowp::LowFloat;
use crate::tensor::{Feed, TensorRef};
use ndarray::{ArrayD, ArrayViewD, IxDyn};
use pixeldit_onnx_proto::dtype::FLOAT;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb;
use tract_onnx::prelude::tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// Op type of the rounding op the rewrite inserts (domain `pixeldit`, attributes `to`, `saturate`). It exists
/// only between the rewrite and tract; exported files never contain it.
pub const ROUND_OP: &str = "PixelditFloatRound";

/// A model loaded and optimized by tract.
pub struct TractBackend {
    plan: Arc<TypedRunnableModel>,
    /// tract's executor for this model's matrix products: a rayon pool of `threads`, or single-threaded.
    executor: Executor,
    inputs: Vec<String>,
    outputs: Vec<String>,
    notes: Vec<String>,
}

fn tract_err(e: impl std::fmt::Display) -> RuntimeError {
    // `{:#}` keeps anyhow's context chain on one line.
    RuntimeError::Tract {
        message: format!("{e:#}"),
    }
}

/// The tract ONNX framework with this crate's custom ops registered.
pub fn framework() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    crate::ops::tract::register(&mut onnx);
    onnx.op_register.insert(ROUND_OP, float_round_builder);
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
                reason: format!("{e:#}"),
            })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let notes = rewrite_low_precision(&mut proto, dir)?;
        let graph = proto.graph.as_ref().ok_or_else(|| RuntimeError::InvalidModel {
            path: path.to_path_buf(),
            reason: "the model has no graph".into(),
        })?;
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
            return Err(RuntimeError::InvalidModel {
                path: path.to_path_buf(),
                reason: format!("unresolved inputs {:?}", parsed.unresolved_inputs),
            });
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
    ArrayD::from_shape_vec(IxDyn(t.shape()), data).map_err(|e| RuntimeError::Shape(e.to_string()))
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

// ---------------------------------------------------------------------------------------------------------------
// PixelditFloatRound: f32 -> (bf16 | float8) -> f32

fn float_round_builder(
    _ctx: &ParsingContext,
    node: &pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let to: i64 = node.get_attr("to")?;
    let format = LowFloat::from_onnx(to as i32).with_context(|| format!("{ROUND_OP}: bad 'to' {to}"))?;
    let saturate = node.get_attr_opt::<i64>("saturate")?.unwrap_or(1) != 0;
    Ok((expand(FloatRoundOp { format, saturate }), vec![]))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FloatRoundOp {
    format: LowFloat,
    saturate: bool,
}

impl Expansion for FloatRoundOp {
    fn name(&self) -> StaticName {
        ROUND_OP.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for FloatRoundOp {
    fn name(&self) -> StaticName {
        ROUND_OP.into()
    }

    op_as_typed_op!();
}

impl EvalOp for FloatRoundOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let mut t = inputs[0].clone().into_tensor();
        {
            let mut view = t.try_as_plain_ram_mut()?;
            self.format
                .round_slice(view.as_slice_mut::<f32>()?, self.saturate);
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for FloatRoundOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }

    as_op!();
}

// ---------------------------------------------------------------------------------------------------------------
// FLOAT8 / BFLOAT16 rewrite

/// Rewrites everything tract cannot read (BFLOAT16 and FLOAT8 element types) so the graph is all f32, keeping
/// every value the original model computes:
///
/// * low-precision initializers (and `Constant` values) are decoded exactly to f32;
/// * `DequantizeLinear` of such an initializer is folded into an f32 initializer `(x - zp) * scale` (per tensor,
///   per axis or blocked);
/// * `QuantizeLinear` to a FLOAT8 type becomes `Div(x, scale)` + [`ROUND_OP`], and the `DequantizeLinear` that
///   reads it becomes `Mul(q, scale)`;
/// * `Cast(to = BF16/FLOAT8)` becomes [`ROUND_OP`] (f32 values rounded to the target format), and declared value
///   types of those formats become FLOAT.
///
/// Only the arithmetic after the rounding differs: it runs in f32. Returns one note per kind of change.
pub fn rewrite_low_precision(model: &mut pb::ModelProto, model_dir: &Path) -> Result<Vec<String>> {
    let Some(graph) = model.graph.as_mut() else {
        return Ok(vec![]);
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut bump = |k: String| *counts.entry(k).or_default() += 1;

    // 1. initializers
    let mut low_inits: HashMap<String, LowFloat> = HashMap::new();
    for t in graph.initializer.iter_mut() {
        if let Some(fmt) = LowFloat::from_onnx(t.data_type) {
            convert_tensor(t, fmt, model_dir)?;
            low_inits.insert(t.name.clone(), fmt);
            bump(format!("{} initializers decoded to f32", fmt.name()));
        }
    }
    let ranks = known_ranks(graph);
    // Values of the Q/DQ operands only (scales, zero points, converted weights): decoding every f32 initializer
    // would read all weights of a multi-GB model.
    let operands: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear")
        .flat_map(|n| n.input.iter().map(String::as_str))
        .collect();
    let mut values: HashMap<String, (Vec<usize>, Vec<f32>)> = HashMap::new();
    for t in &graph.initializer {
        if t.data_type == FLOAT && operands.contains(t.name.as_str()) {
            if let Some(v) = float_values(t, model_dir)? {
                values.insert(t.name.clone(), (t.dims.iter().map(|&d| d as usize).collect(), v));
            }
        }
    }

    // 2. nodes
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut new_inits: Vec<pb::TensorProto> = Vec::new();
    let mut quantized: HashSet<String> = HashSet::new(); // outputs of rewritten QuantizeLinear
    let old_nodes = std::mem::take(&mut graph.node);
    for mut node in old_nodes {
        let nname = if node.name.is_empty() {
            node.output.first().cloned().unwrap_or_default()
        } else {
            node.name.clone()
        };
        let (op_type, domain) = (node.op_type.clone(), node.domain.clone());
        let bad = |m: String| RuntimeError::UnsupportedOp {
            backend: "tract",
            op: format!("{op_type} ({m})"),
            domain: domain.clone(),
            node: nname.clone(),
        };
        let attr_i = |n: &pb::NodeProto, key: &str| n.attribute.iter().find(|a| a.name == key).map(|a| a.i);
        match op_type.as_str() {
            "Cast" => {
                let to = attr_i(&node, "to").unwrap_or(0) as i32;
                if let Some(fmt) = LowFloat::from_onnx(to) {
                    let sat = attr_i(&node, "saturate").unwrap_or(1);
                    node = round_node(&node.name, &node.input[0], &node.output[0], fmt, sat);
                    bump(format!("Cast to {} replaced by f32 rounding", fmt.name()));
                }
                nodes.push(node);
            }
            "Constant" => {
                for a in node.attribute.iter_mut() {
                    if let Some(t) = a.t.as_mut() {
                        if let Some(fmt) = LowFloat::from_onnx(t.data_type) {
                            convert_tensor(t, fmt, model_dir)?;
                            bump(format!("{} constants decoded to f32", fmt.name()));
                        }
                    }
                }
                nodes.push(node);
            }
            "QuantizeLinear" => {
                let zp_fmt = node.input.get(2).and_then(|z| low_inits.get(z).copied());
                let out_fmt = attr_i(&node, "output_dtype").and_then(|d| LowFloat::from_onnx(d as i32));
                let Some(fmt) = zp_fmt.or(out_fmt) else {
                    nodes.push(node);
                    continue;
                };
                if let Some(zp) = node.input.get(2).filter(|z| !z.is_empty()) {
                    check_zero(zp, &values).map_err(bad)?;
                }
                if attr_i(&node, "block_size").unwrap_or(0) > 0 {
                    return Err(bad("blocked FLOAT8 QuantizeLinear of an activation".into()));
                }
                let scale = broadcast_scale(&node, &values, &ranks, &mut new_inits).map_err(bad)?;
                let scaled = format!("{}__scaled", node.output[0]);
                nodes.push(pb::NodeProto {
                    name: format!("{nname}__div"),
                    op_type: "Div".into(),
                    input: vec![node.input[0].clone(), scale],
                    output: vec![scaled.clone()],
                    ..Default::default()
                });
                let sat = attr_i(&node, "saturate").unwrap_or(1);
                nodes.push(round_node(&nname, &scaled, &node.output[0], fmt, sat));
                quantized.insert(node.output[0].clone());
                bump(format!(
                    "QuantizeLinear to {} replaced by Div + f32 rounding",
                    fmt.name()
                ));
            }
            "DequantizeLinear" => {
                let x = node.input[0].clone();
                let zp = node.input.get(2).filter(|z| !z.is_empty()).cloned();
                let low_zp = zp.as_ref().is_some_and(|z| low_inits.contains_key(z));
                if low_inits.contains_key(&x) {
                    if let Some(z) = &zp {
                        check_zero(z, &values).map_err(bad)?;
                    }
                    let (dims, folded) = fold_dequantize(&node, &values).map_err(bad)?;
                    let dims64 = dims.iter().map(|&d| d as i64).collect();
                    new_inits.push(f32_tensor(&node.output[0], dims64, &folded));
                    values.insert(node.output[0].clone(), (dims, folded));
                    bump("DequantizeLinear of low-precision weights folded into f32 initializers".into());
                } else if quantized.contains(&x) || low_zp {
                    if let Some(z) = &zp {
                        check_zero(z, &values).map_err(bad)?;
                    }
                    if attr_i(&node, "block_size").unwrap_or(0) > 0 {
                        return Err(bad("blocked FLOAT8 DequantizeLinear of an activation".into()));
                    }
                    let scale = broadcast_scale(&node, &values, &ranks, &mut new_inits).map_err(bad)?;
                    nodes.push(pb::NodeProto {
                        name: nname.clone(),
                        op_type: "Mul".into(),
                        input: vec![x, scale],
                        output: vec![node.output[0].clone()],
                        ..Default::default()
                    });
                    bump("DequantizeLinear of FLOAT8 activations replaced by Mul".into());
                } else {
                    nodes.push(node);
                }
            }
            "Gemm" => lower_gemm(node, &nname, &mut nodes),
            _ => nodes.push(node),
        }
    }
    graph.node = nodes;
    graph.initializer.extend(new_inits);

    // 3. declared types
    for vi in graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut())
    {
        if let Some(pb::type_proto::Value::TensorType(t)) = vi.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if LowFloat::from_onnx(t.elem_type).is_some() {
                t.elem_type = FLOAT;
            }
        }
    }
    let mut notes: Vec<String> = counts.into_iter().map(|(k, n)| format!("{n} {k}")).collect();
    notes.sort();
    Ok(notes)
}

/// `Gemm(A, B, C)` with `alpha = beta = 1`, `transA = 0` as `MatMul(A, B or B^T) + C`: tract 0.23's Gemm
/// expansion mis-types f16 graphs ("expected F16 got F32"); MatMul + Add is the same computation for every type.
fn lower_gemm(node: pb::NodeProto, name: &str, nodes: &mut Vec<pb::NodeProto>) {
    let attr = |k: &str| node.attribute.iter().find(|a| a.name == k);
    let (alpha, beta) = (
        attr("alpha").map_or(1.0, |a| a.f),
        attr("beta").map_or(1.0, |a| a.f),
    );
    let (trans_a, trans_b) = (
        attr("transA").map_or(0, |a| a.i),
        attr("transB").map_or(0, |a| a.i),
    );
    if alpha != 1.0 || beta != 1.0 || trans_a != 0 || node.input.len() < 2 {
        nodes.push(node);
        return;
    }
    let simple = |op: &str, suffix: &str, input: Vec<String>, output: String| pb::NodeProto {
        name: format!("{name}__{suffix}"),
        op_type: op.into(),
        input,
        output: vec![output],
        ..Default::default()
    };
    let mut b = node.input[1].clone();
    if trans_b != 0 {
        let bt = format!("{}__{name}_T", node.input[1]);
        let mut t = simple("Transpose", "transpose_b", vec![b], bt.clone());
        t.attribute.push(pb::AttributeProto {
            name: "perm".into(),
            r#type: pb::attribute_proto::AttributeType::Ints as i32,
            ints: vec![1, 0],
            ..Default::default()
        });
        nodes.push(t);
        b = bt;
    }
    let out = node.output[0].clone();
    match node.input.get(2).filter(|c| !c.is_empty()) {
        Some(c) => {
            let mm = format!("{out}__matmul");
            nodes.push(simple(
                "MatMul",
                "matmul",
                vec![node.input[0].clone(), b],
                mm.clone(),
            ));
            nodes.push(simple("Add", "add_c", vec![mm, c.clone()], out));
        }
        None => nodes.push(simple("MatMul", "matmul", vec![node.input[0].clone(), b], out)),
    }
}

fn round_node(name: &str, input: &str, output: &str, fmt: LowFloat, saturate: i64) -> pb::NodeProto {
    let int_attr = |n: &str, v: i64| pb::AttributeProto {
        name: n.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    };
    pb::NodeProto {
        name: format!("{name}__round"),
        op_type: ROUND_OP.into(),
        domain: pixeldit_spec::CUSTOM_DOMAIN.into(),
        input: vec![input.into()],
        output: vec![output.into()],
        attribute: vec![
            int_attr("to", i64::from(fmt.onnx_code())),
            int_attr("saturate", saturate),
        ],
        ..Default::default()
    }
}

/// Ranks declared for graph inputs, outputs and value_info, plus initializer ranks.
fn known_ranks(g: &pb::GraphProto) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for vi in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let Some(pb::type_proto::Value::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            if let Some(s) = &t.shape {
                m.insert(vi.name.clone(), s.dim.len());
            }
        }
    }
    for t in &g.initializer {
        m.insert(t.name.clone(), t.dims.len());
    }
    m
}

fn check_zero(zp: &str, values: &HashMap<String, (Vec<usize>, Vec<f32>)>) -> std::result::Result<(), String> {
    match values.get(zp) {
        Some((_, v)) if v.iter().all(|&z| z == 0.0) => Ok(()),
        Some(_) => Err(format!("non-zero FLOAT8 zero point '{zp}'")),
        None => Err(format!("zero point '{zp}' is not an initializer")),
    }
}

/// The scale operand for a Div/Mul replacing a per-tensor or per-axis Q/DQ: scalars as is, 1-D scales reshaped to
/// broadcast along `axis` (needs the input rank).
fn broadcast_scale(
    node: &pb::NodeProto,
    values: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    ranks: &HashMap<String, usize>,
    new_inits: &mut Vec<pb::TensorProto>,
) -> std::result::Result<String, String> {
    let scale = node.input.get(1).cloned().ok_or("missing scale")?;
    let (dims, v) = values
        .get(&scale)
        .ok_or_else(|| format!("scale '{scale}' is not an f32 initializer"))?;
    if dims.iter().product::<usize>() == 1 {
        return Ok(scale);
    }
    let rank = *ranks
        .get(&node.input[0])
        .ok_or_else(|| format!("rank of '{}' is unknown", node.input[0]))?;
    let axis = node
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(1, |a| a.i);
    let axis = if axis < 0 { axis + rank as i64 } else { axis } as usize;
    if dims.len() != 1 || axis >= rank {
        return Err(format!(
            "scale of shape {dims:?} with axis {axis} for rank {rank}"
        ));
    }
    let name = format!("{scale}__axis{axis}_rank{rank}");
    if !new_inits.iter().any(|t| t.name == name) {
        let mut shape = vec![1i64; rank];
        shape[axis] = dims[0] as i64;
        new_inits.push(f32_tensor(&name, shape, v));
    }
    Ok(name)
}

fn f32_tensor(name: &str, dims: Vec<i64>, v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims,
        data_type: FLOAT,
        raw_data: v.iter().flat_map(|f| f.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// `(x - 0) * scale` for a converted low-precision initializer `x`, per tensor / per axis / blocked.
fn fold_dequantize(
    node: &pb::NodeProto,
    values: &HashMap<String, (Vec<usize>, Vec<f32>)>,
) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    let (xd, xv) = values
        .get(&node.input[0])
        .ok_or("quantized input has no values")?;
    let scale = node.input.get(1).ok_or("missing scale")?;
    let (sd, sv) = values
        .get(scale)
        .ok_or_else(|| format!("scale '{scale}' is not an f32 initializer"))?;
    let rank = xd.len();
    let axis = node
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(1, |a| a.i);
    let axis = if axis < 0 { axis + rank as i64 } else { axis } as usize;
    let block = node
        .attribute
        .iter()
        .find(|a| a.name == "block_size")
        .map_or(0, |a| a.i) as usize;
    let strides: Vec<usize> = (0..rank).map(|i| xd[i + 1..].iter().product()).collect();
    let out: Vec<f32> = if sv.len() == 1 {
        xv.iter().map(|q| q * sv[0]).collect()
    } else if block == 0 {
        if sd.len() != 1 || axis >= rank || sd[0] != xd[axis] {
            return Err(format!(
                "per-axis scale {sd:?} does not match input {xd:?} on axis {axis}"
            ));
        }
        xv.iter()
            .enumerate()
            .map(|(i, q)| q * sv[(i / strides[axis]) % xd[axis]])
            .collect()
    } else {
        if sd.len() != rank || axis >= rank || sd[axis] != xd[axis].div_ceil(block) {
            return Err(format!(
                "blocked scale {sd:?} does not match input {xd:?} (axis {axis}, block {block})"
            ));
        }
        let sstrides: Vec<usize> = (0..rank).map(|i| sd[i + 1..].iter().product()).collect();
        xv.iter()
            .enumerate()
            .map(|(i, q)| {
                let si: usize = (0..rank)
                    .map(|d| {
                        let idx = (i / strides[d]) % xd[d];
                        (if d == axis { idx / block } else { idx }) * sstrides[d]
                    })
                    .sum();
                q * sv[si]
            })
            .collect()
    };
    Ok((xd.clone(), out))
}

/// Reads the raw bytes of an initializer (inline or external data).
fn tensor_bytes(t: &pb::TensorProto, model_dir: &Path) -> Result<Vec<u8>> {
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) {
        let get = |k: &str| {
            t.external_data
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.clone())
        };
        let loc = get("location").ok_or_else(|| RuntimeError::InvalidModel {
            path: model_dir.to_path_buf(),
            reason: format!("initializer '{}' has external data without a location", t.name),
        })?;
        let path = model_dir.join(loc);
        // Read just this tensor's byte range.
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&path).map_err(|e| RuntimeError::io(&path, e))?;
        let size = f.metadata().map_err(|e| RuntimeError::io(&path, e))?.len();
        let off: u64 = get("offset").and_then(|s| s.parse().ok()).unwrap_or(0);
        let len: u64 = get("length")
            .and_then(|s| s.parse().ok())
            .unwrap_or(size.saturating_sub(off));
        if off.checked_add(len).is_none_or(|end| end > size) {
            return Err(RuntimeError::InvalidModel {
                path: path.clone(),
                reason: format!("external data of '{}' is out of bounds", t.name),
            });
        }
        let mut buf = vec![0u8; len as usize];
        f.seek(SeekFrom::Start(off))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| RuntimeError::io(&path, e))?;
        return Ok(buf);
    }
    Ok(t.raw_data.clone())
}

fn float_values(t: &pb::TensorProto, model_dir: &Path) -> Result<Option<Vec<f32>>> {
    if t.data_type != FLOAT {
        return Ok(None);
    }
    if !t.float_data.is_empty() {
        return Ok(Some(t.float_data.clone()));
    }
    let raw = tensor_bytes(t, model_dir)?;
    Ok(Some(
        raw.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

/// Decodes a BF16/FLOAT8 tensor in place into FLOAT.
fn convert_tensor(t: &mut pb::TensorProto, fmt: LowFloat, model_dir: &Path) -> Result<()> {
    let n: usize = t.dims.iter().map(|&d| d.max(0) as usize).product();
    let codes: Vec<u16> = if !t.int32_data.is_empty() {
        t.int32_data.iter().map(|&v| v as u16).collect()
    } else {
        let raw = tensor_bytes(t, model_dir)?;
        if fmt.size() == 2 {
            raw.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        } else {
            raw.iter().map(|&b| u16::from(b)).collect()
        }
    };
    if codes.len() != n {
        return Err(RuntimeError::InvalidModel {
            path: model_dir.to_path_buf(),
            reason: format!(
                "{} tensor '{}' has {} values for dims {:?}",
                fmt.name(),
                t.name,
                codes.len(),
                t.dims
            ),
        });
    }
    let vals: Vec<f32> = codes.iter().map(|&c| fmt.decode(c)).collect();
    *t = f32_tensor(&t.name, t.dims.clone(), &vals);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dq(axis: i64, block: i64) -> pb::NodeProto {
        let int = |n: &str, v: i64| pb::AttributeProto {
            name: n.into(),
            i: v,
            r#type: 2,
            ..Default::default()
        };
        pb::NodeProto {
            op_type: "DequantizeLinear".into(),
            input: vec!["q".into(), "s".into()],
            output: vec!["w".into()],
            attribute: vec![int("axis", axis), int("block_size", block)],
            ..Default::default()
        }
    }

    #[test]
    fn fold_dequantize_per_axis_and_blocked() {
        // q [2, 4] = 1..8
        let q: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        let mut values = HashMap::new();
        values.insert("q".to_string(), (vec![2, 4], q));
        values.insert("s".to_string(), (vec![2], vec![10.0, 100.0]));
        let (_, w) = fold_dequantize(&dq(0, 0), &values).unwrap();
        assert_eq!(w, vec![10.0, 20.0, 30.0, 40.0, 500.0, 600.0, 700.0, 800.0]);
        // blocked along axis 1 with block 2: scale [2, 2]
        values.insert("s".to_string(), (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]));
        let (_, w) = fold_dequantize(&dq(1, 2), &values).unwrap();
        assert_eq!(w, vec![1.0, 2.0, 6.0, 8.0, 15.0, 18.0, 28.0, 32.0]);
        // per-axis scale of the wrong length
        values.insert("s".to_string(), (vec![3], vec![1.0, 2.0, 3.0]));
        assert!(fold_dequantize(&dq(1, 0), &values).is_err());
    }

    #[test]
    fn broadcast_scale_reshapes_along_axis() {
        let mut values = HashMap::new();
        values.insert("s".to_string(), (vec![3], vec![1.0, 2.0, 3.0]));
        let mut ranks = HashMap::new();
        ranks.insert("q".to_string(), 3usize);
        let mut inits = Vec::new();
        let name = broadcast_scale(&dq(-2, 0), &values, &ranks, &mut inits).unwrap();
        assert_eq!(name, "s__axis1_rank3");
        assert_eq!(inits[0].dims, vec![1, 3, 1]);
        ranks.clear();
        assert!(broadcast_scale(&dq(1, 0), &values, &ranks, &mut inits)
            .unwrap_err()
            .contains("rank"));
    }
}

//! The FLOAT8 / BFLOAT16 rewrite: an ONNX graph pass that makes a low-precision model all-f32 for tract, in three
//! phases (initializers, nodes, declared types), with one function per rewritten op type.

use super::ROUND_OP;
use crate::error::{Result, RuntimeError};
use crate::lowp::LowFloat;
use pixeldit_onnx_proto::dtype::FLOAT;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use tract_onnx::pb;

/// Shape and f32 values of an initializer (or of a folded `DequantizeLinear` output), by name.
type Values = HashMap<String, (Vec<usize>, Vec<f32>)>;

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
    let mut pass = Rewrite::new(model_dir);
    pass.decode_initializers(graph)?;
    pass.ranks = known_ranks(graph);
    pass.read_operand_values(graph)?;
    for node in std::mem::take(&mut graph.node) {
        pass.rewrite_node(node)?;
    }
    graph.node = std::mem::take(&mut pass.nodes);
    graph.initializer.append(&mut pass.new_inits);
    retype_declared_values(graph);
    Ok(pass.notes())
}

/// The state of one [`rewrite_low_precision`] run.
struct Rewrite<'a> {
    model_dir: &'a Path,
    /// How often each kind of change was made (the notes).
    counts: HashMap<String, usize>,
    /// Initializers that were BF16/FLOAT8, with their format.
    low_inits: HashMap<String, LowFloat>,
    /// Known ranks of graph values (for per-axis scales).
    ranks: HashMap<String, usize>,
    /// Values of the Q/DQ operands (scales, zero points, decoded weights) and of folded DQ outputs.
    values: Values,
    /// Outputs of rewritten `QuantizeLinear` nodes.
    quantized: HashSet<String>,
    /// The rewritten nodes, in order.
    nodes: Vec<pb::NodeProto>,
    /// Initializers the rewrite adds (folded weights, reshaped scales).
    new_inits: Vec<pb::TensorProto>,
}

impl<'a> Rewrite<'a> {
    fn new(model_dir: &'a Path) -> Self {
        Rewrite {
            model_dir,
            counts: HashMap::new(),
            low_inits: HashMap::new(),
            ranks: HashMap::new(),
            values: HashMap::new(),
            quantized: HashSet::new(),
            nodes: Vec::new(),
            new_inits: Vec::new(),
        }
    }

    fn bump(&mut self, kind: String) {
        *self.counts.entry(kind).or_default() += 1;
    }

    /// One note per kind of change, sorted.
    fn notes(self) -> Vec<String> {
        let mut notes: Vec<String> = self.counts.into_iter().map(|(k, n)| format!("{n} {k}")).collect();
        notes.sort();
        notes
    }

    /// Phase 1: decodes the low-precision initializers to f32 in place.
    fn decode_initializers(&mut self, graph: &mut pb::GraphProto) -> Result<()> {
        for t in graph.initializer.iter_mut() {
            if let Some(fmt) = LowFloat::from_onnx(t.data_type) {
                convert_tensor(t, fmt, self.model_dir)?;
                self.low_inits.insert(t.name.clone(), fmt);
                self.bump(format!("{} initializers decoded to f32", fmt.name()));
            }
        }
        Ok(())
    }

    /// Reads the values of the Q/DQ operands only (scales, zero points, converted weights): decoding every f32
    /// initializer would read all weights of a multi-GB model.
    fn read_operand_values(&mut self, graph: &pb::GraphProto) -> Result<()> {
        let operands: HashSet<&str> = graph
            .node
            .iter()
            .filter(|n| n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear")
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        for t in &graph.initializer {
            if t.data_type == FLOAT && operands.contains(t.name.as_str()) {
                if let Some(v) = float_values(t, self.model_dir)? {
                    self.values
                        .insert(t.name.clone(), (t.dims.iter().map(|&d| d as usize).collect(), v));
                }
            }
        }
        Ok(())
    }

    /// Phase 2: appends the rewrite of `node` (itself, or its replacement nodes) to [`Rewrite::nodes`].
    fn rewrite_node(&mut self, node: pb::NodeProto) -> Result<()> {
        match node.op_type.as_str() {
            "Cast" => self.rewrite_cast(node),
            "Constant" => self.rewrite_constant(node)?,
            "QuantizeLinear" => self.rewrite_quantize(node)?,
            "DequantizeLinear" => self.rewrite_dequantize(node)?,
            "Gemm" => {
                let name = node_name(&node);
                lower_gemm(node, &name, &mut self.nodes);
            }
            _ => self.nodes.push(node),
        }
        Ok(())
    }

    /// `Cast(to = BF16/FLOAT8)` becomes [`ROUND_OP`].
    fn rewrite_cast(&mut self, mut node: pb::NodeProto) {
        let to = attr_i(&node, "to").unwrap_or(0) as i32;
        if let Some(fmt) = LowFloat::from_onnx(to) {
            let sat = attr_i(&node, "saturate").unwrap_or(1);
            node = round_node(&node.name, &node.input[0], &node.output[0], fmt, sat);
            self.bump(format!("Cast to {} replaced by f32 rounding", fmt.name()));
        }
        self.nodes.push(node);
    }

    /// Low-precision `Constant` values are decoded to f32.
    fn rewrite_constant(&mut self, mut node: pb::NodeProto) -> Result<()> {
        for a in node.attribute.iter_mut() {
            if let Some(t) = a.t.as_mut() {
                if let Some(fmt) = LowFloat::from_onnx(t.data_type) {
                    convert_tensor(t, fmt, self.model_dir)?;
                    self.bump(format!("{} constants decoded to f32", fmt.name()));
                }
            }
        }
        self.nodes.push(node);
        Ok(())
    }

    /// `QuantizeLinear` to a FLOAT8 type becomes `Div(x, scale)` + [`ROUND_OP`].
    fn rewrite_quantize(&mut self, node: pb::NodeProto) -> Result<()> {
        let zp_fmt = node.input.get(2).and_then(|z| self.low_inits.get(z).copied());
        let out_fmt = attr_i(&node, "output_dtype").and_then(|d| LowFloat::from_onnx(d as i32));
        let Some(fmt) = zp_fmt.or(out_fmt) else {
            self.nodes.push(node);
            return Ok(());
        };
        let nname = node_name(&node);
        let bad = |m: String| unsupported(&node, m);
        if let Some(zp) = node.input.get(2).filter(|z| !z.is_empty()) {
            check_zero(zp, &self.values).map_err(bad)?;
        }
        if attr_i(&node, "block_size").unwrap_or(0) > 0 {
            return Err(bad("blocked FLOAT8 QuantizeLinear of an activation".into()));
        }
        let scale = broadcast_scale(&node, &self.values, &self.ranks, &mut self.new_inits).map_err(bad)?;
        let scaled = format!("{}__scaled", node.output[0]);
        self.nodes.push(pb::NodeProto {
            name: format!("{nname}__div"),
            op_type: "Div".into(),
            input: vec![node.input[0].clone(), scale],
            output: vec![scaled.clone()],
            ..Default::default()
        });
        let sat = attr_i(&node, "saturate").unwrap_or(1);
        self.nodes
            .push(round_node(&nname, &scaled, &node.output[0], fmt, sat));
        self.quantized.insert(node.output[0].clone());
        self.bump(format!(
            "QuantizeLinear to {} replaced by Div + f32 rounding",
            fmt.name()
        ));
        Ok(())
    }

    /// `DequantizeLinear` of a low-precision initializer is folded into an f32 initializer; of a rewritten
    /// `QuantizeLinear` output (or with a FLOAT8 zero point) it becomes `Mul(q, scale)`.
    fn rewrite_dequantize(&mut self, node: pb::NodeProto) -> Result<()> {
        let x = node.input[0].clone();
        let zp = node.input.get(2).filter(|z| !z.is_empty()).cloned();
        let low_zp = zp.as_ref().is_some_and(|z| self.low_inits.contains_key(z));
        if self.low_inits.contains_key(&x) {
            self.fold_weight_dequantize(node, zp.as_deref())
        } else if self.quantized.contains(&x) || low_zp {
            self.dequantize_as_mul(node, x, zp.as_deref())
        } else {
            self.nodes.push(node);
            Ok(())
        }
    }

    /// `(x - zp) * scale` of a decoded low-precision initializer `x`, as a new f32 initializer.
    fn fold_weight_dequantize(&mut self, node: pb::NodeProto, zp: Option<&str>) -> Result<()> {
        let bad = |m: String| unsupported(&node, m);
        if let Some(z) = zp {
            check_zero(z, &self.values).map_err(bad)?;
        }
        let (dims, folded) = fold_dequantize(&node, &self.values).map_err(bad)?;
        let dims64 = dims.iter().map(|&d| d as i64).collect();
        self.new_inits.push(f32_tensor(&node.output[0], dims64, &folded));
        self.values.insert(node.output[0].clone(), (dims, folded));
        self.bump("DequantizeLinear of low-precision weights folded into f32 initializers".into());
        Ok(())
    }

    /// `Mul(q, scale)` for the `DequantizeLinear` of a FLOAT8 activation.
    fn dequantize_as_mul(&mut self, node: pb::NodeProto, x: String, zp: Option<&str>) -> Result<()> {
        let bad = |m: String| unsupported(&node, m);
        if let Some(z) = zp {
            check_zero(z, &self.values).map_err(bad)?;
        }
        if attr_i(&node, "block_size").unwrap_or(0) > 0 {
            return Err(bad("blocked FLOAT8 DequantizeLinear of an activation".into()));
        }
        let scale = broadcast_scale(&node, &self.values, &self.ranks, &mut self.new_inits).map_err(bad)?;
        self.nodes.push(pb::NodeProto {
            name: node_name(&node),
            op_type: "Mul".into(),
            input: vec![x, scale],
            output: vec![node.output[0].clone()],
            ..Default::default()
        });
        self.bump("DequantizeLinear of FLOAT8 activations replaced by Mul".into());
        Ok(())
    }
}

/// Phase 3: declared value types of the BF16/FLOAT8 formats (inputs, outputs, value_info) become FLOAT.
fn retype_declared_values(graph: &mut pb::GraphProto) {
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
}

/// The node's name, or its first output's when it has none.
fn node_name(node: &pb::NodeProto) -> String {
    if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    }
}

/// The integer attribute `key` of `node`.
fn attr_i(node: &pb::NodeProto, key: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == key).map(|a| a.i)
}

/// A node the rewrite cannot make f32 (`why` says what is wrong).
fn unsupported(node: &pb::NodeProto, why: String) -> RuntimeError {
    RuntimeError::UnsupportedOp {
        backend: "tract",
        op: format!("{} ({why})", node.op_type),
        domain: node.domain.clone(),
        node: node_name(node),
    }
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

fn check_zero(zp: &str, values: &Values) -> std::result::Result<(), String> {
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
    values: &Values,
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
    let axis = axis_attribute(node, rank);
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

/// The `axis` attribute of a Q/DQ node (default 1), negative values counted from the end of a rank-`rank` input.
fn axis_attribute(node: &pb::NodeProto, rank: usize) -> usize {
    let axis = node
        .attribute
        .iter()
        .find(|a| a.name == "axis")
        .map_or(1, |a| a.i);
    (if axis < 0 { axis + rank as i64 } else { axis }) as usize
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
    values: &Values,
) -> std::result::Result<(Vec<usize>, Vec<f32>), String> {
    let (xd, xv) = values
        .get(&node.input[0])
        .ok_or("quantized input has no values")?;
    let scale = node.input.get(1).ok_or("missing scale")?;
    let (sd, sv) = values
        .get(scale)
        .ok_or_else(|| format!("scale '{scale}' is not an f32 initializer"))?;
    let rank = xd.len();
    let axis = axis_attribute(node, rank);
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
        let loc = get("location").ok_or_else(|| {
            RuntimeError::invalid_model(
                model_dir,
                format!("initializer '{}' has external data without a location", t.name),
            )
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
            return Err(RuntimeError::invalid_model(
                &path,
                format!("external data of '{}' is out of bounds", t.name),
            ));
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
            source: None,
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

//! One typed method per ONNX op used by the project. Each infers and checks the output dtype and shape
//! when the node is wired.

use crate::graph::{Attr, Dim, Graph, Value};
use crate::{DType, Result};

fn broadcast(a: &[Dim], b: &[Dim]) -> std::result::Result<Vec<Dim>, String> {
    let n = a.len().max(b.len());
    let mut out = vec![Dim::Fixed(1); n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            Dim::Fixed(1)
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            Dim::Fixed(1)
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (Dim::Fixed(1), y) => y,
            (x, Dim::Fixed(1)) => x,
            _ => {
                return Err(format!(
                    "shapes {} and {} do not broadcast",
                    fmt_shape(a),
                    fmt_shape(b)
                ))
            }
        };
    }
    Ok(out)
}

/// Formats a shape as `[B, 3, 32, 32]`.
pub fn fmt_shape(s: &[Dim]) -> String {
    format!(
        "[{}]",
        s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    )
}

/// The element count of a shape as a monomial of the symbols.
fn numel(s: &[Dim]) -> Dim {
    s.iter().fold(Dim::Fixed(1), |acc, d| acc.times(*d))
}

fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    (0..rank as i64).contains(&a).then_some(a as usize)
}

impl Graph {
    fn one(
        &mut self,
        op: &str,
        inputs: &[Value],
        attrs: Vec<(&str, Attr)>,
        dt: DType,
        shape: Vec<Dim>,
    ) -> Result<Value> {
        let ins: Vec<Option<Value>> = inputs.iter().map(|v| Some(*v)).collect();
        Ok(self.add_node(op, "", &ins, attrs, vec![(dt, shape)])?[0])
    }

    fn binary(&mut self, op: &str, a: Value, b: Value) -> Result<Value> {
        let (da, db) = (self.dtype(a), self.dtype(b));
        if da != db {
            return Err(self.err(op, format!("dtype mismatch {} vs {}", da.name(), db.name())));
        }
        let shape = broadcast(self.shape(a), self.shape(b)).map_err(|e| self.err(op, e))?;
        self.one(op, &[a, b], vec![], da, shape)
    }
    /// `a + b` with broadcasting.
    pub fn add(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary("Add", a, b)
    }
    /// `a - b` with broadcasting.
    pub fn sub(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary("Sub", a, b)
    }
    /// `a * b` with broadcasting.
    pub fn mul(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary("Mul", a, b)
    }
    /// `a / b` with broadcasting.
    pub fn div(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary("Div", a, b)
    }
    /// Elementwise `max(a, b)` with broadcasting.
    pub fn max(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary("Max", a, b)
    }

    fn unary(&mut self, op: &str, x: Value) -> Result<Value> {
        let (dt, shape) = (self.dtype(x), self.shape(x).to_vec());
        if !dt.is_float() {
            return Err(self.err(op, format!("expects a float input, got {}", dt.name())));
        }
        self.one(op, &[x], vec![], dt, shape)
    }
    /// Relu.
    pub fn relu(&mut self, x: Value) -> Result<Value> {
        self.unary("Relu", x)
    }
    /// Sigmoid.
    pub fn sigmoid(&mut self, x: Value) -> Result<Value> {
        self.unary("Sigmoid", x)
    }
    /// Erf.
    pub fn erf(&mut self, x: Value) -> Result<Value> {
        self.unary("Erf", x)
    }
    /// Sqrt.
    pub fn sqrt(&mut self, x: Value) -> Result<Value> {
        self.unary("Sqrt", x)
    }
    /// Reciprocal.
    pub fn reciprocal(&mut self, x: Value) -> Result<Value> {
        self.unary("Reciprocal", x)
    }
    /// Cos.
    pub fn cos(&mut self, x: Value) -> Result<Value> {
        self.unary("Cos", x)
    }
    /// Sin.
    pub fn sin(&mut self, x: Value) -> Result<Value> {
        self.unary("Sin", x)
    }
    /// SiLU as `x * Sigmoid(x)`.
    pub fn silu(&mut self, x: Value) -> Result<Value> {
        let s = self.sigmoid(x)?;
        self.mul(x, s)
    }

    /// Cast to `to` (no node when already of that type).
    pub fn cast(&mut self, x: Value, to: DType) -> Result<Value> {
        if self.dtype(x) == to {
            return Ok(x);
        }
        let shape = self.shape(x).to_vec();
        self.one("Cast", &[x], vec![("to", Attr::Int(to.onnx() as i64))], to, shape)
    }

    /// MatMul with numpy semantics (batch dims broadcast).
    pub fn matmul(&mut self, a: Value, b: Value) -> Result<Value> {
        let (sa, sb) = (self.shape(a).to_vec(), self.shape(b).to_vec());
        if self.dtype(a) != self.dtype(b) || sa.len() < 2 || sb.len() < 2 {
            return Err(self.err(
                "MatMul",
                format!("bad operands {} x {}", fmt_shape(&sa), fmt_shape(&sb)),
            ));
        }
        if sa[sa.len() - 1] != sb[sb.len() - 2] {
            return Err(self.err(
                "MatMul",
                format!("inner dims differ: {} x {}", fmt_shape(&sa), fmt_shape(&sb)),
            ));
        }
        let mut shape =
            broadcast(&sa[..sa.len() - 2], &sb[..sb.len() - 2]).map_err(|e| self.err("MatMul", e))?;
        shape.push(sa[sa.len() - 2]);
        shape.push(sb[sb.len() - 1]);
        let dt = self.dtype(a);
        self.one("MatMul", &[a, b], vec![], dt, shape)
    }

    /// Gemm `a @ w^T + bias` (transB = 1) on a 2-D `a` [M,K] and `w` [N,K].
    pub fn gemm_bt(&mut self, a: Value, w: Value, bias: Option<Value>) -> Result<Value> {
        let (sa, sw) = (self.shape(a).to_vec(), self.shape(w).to_vec());
        if sa.len() != 2 || sw.len() != 2 || sa[1] != sw[1] {
            return Err(self.err(
                "Gemm",
                format!(
                    "expects [M,K] x [N,K]^T, got {} x {}",
                    fmt_shape(&sa),
                    fmt_shape(&sw)
                ),
            ));
        }
        if self.dtype(a) != self.dtype(w) {
            return Err(self.err(
                "Gemm",
                format!("dtype {} vs {}", self.dtype(a).name(), self.dtype(w).name()),
            ));
        }
        if let Some(b) = bias {
            if self.shape(b) != [sw[0]] {
                return Err(self.err(
                    "Gemm",
                    format!("bias {} for {} outputs", fmt_shape(self.shape(b)), sw[0]),
                ));
            }
        }
        let mut ins = vec![a, w];
        ins.extend(bias);
        let dt = self.dtype(a);
        self.one(
            "Gemm",
            &ins,
            vec![("transB", Attr::Int(1))],
            dt,
            vec![sa[0], sw[0]],
        )
    }

    /// Reshape to `dims`. One dynamic dim is written as -1 (a constant target, as in every static export);
    /// with several, the target is computed from the bound symbols ([`Graph::bind_symbol`]) and the one with the
    /// most symbols is written as -1.
    pub fn reshape(&mut self, x: Value, dims: &[Dim]) -> Result<Value> {
        let from = self.shape(x).to_vec();
        if numel(&from) != numel(dims) {
            return Err(self.err(
                "Reshape",
                format!("cannot reshape {} to {}", fmt_shape(&from), fmt_shape(dims)),
            ));
        }
        let infer = (0..dims.len())
            .filter(|i| dims[*i].fixed().is_none())
            .max_by_key(|i| {
                let (_, e) = dims[*i].parts();
                (e.iter().sum::<u8>(), std::cmp::Reverse(*i))
            });
        let s = self.shape_value(dims, infer)?;
        let dt = self.dtype(x);
        self.one("Reshape", &[x, s], vec![], dt, dims.to_vec())
    }

    /// Transpose with `perm`.
    pub fn transpose(&mut self, x: Value, perm: &[usize]) -> Result<Value> {
        let s = self.shape(x).to_vec();
        let mut sorted = perm.to_vec();
        sorted.sort();
        if sorted != (0..s.len()).collect::<Vec<_>>() {
            return Err(self.err("Transpose", format!("perm {perm:?} for rank {}", s.len())));
        }
        let shape = perm.iter().map(|p| s[*p]).collect();
        let dt = self.dtype(x);
        let p = perm.iter().map(|p| *p as i64).collect();
        self.one("Transpose", &[x], vec![("perm", Attr::Ints(p))], dt, shape)
    }

    /// ReduceMean over `axes` (axes as input from opset 18, attribute before).
    pub fn reduce_mean(&mut self, x: Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        let s = self.shape(x).to_vec();
        let mut ax = Vec::new();
        for a in axes {
            ax.push(norm_axis(*a, s.len()).ok_or_else(|| self.err("ReduceMean", format!("axis {a}")))?);
        }
        let shape: Vec<Dim> = s
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match (ax.contains(&i), keepdims) {
                (true, true) => Some(Dim::Fixed(1)),
                (true, false) => None,
                (false, _) => Some(*d),
            })
            .collect();
        let dt = self.dtype(x);
        let kd = ("keepdims", Attr::Int(keepdims as i64));
        if self.opset >= 18 {
            let a = self.const_i64(axes)?;
            self.one("ReduceMean", &[x, a], vec![kd], dt, shape)
        } else {
            self.one(
                "ReduceMean",
                &[x],
                vec![("axes", Attr::Ints(axes.to_vec())), kd],
                dt,
                shape,
            )
        }
    }

    /// Softmax over `axis`.
    pub fn softmax(&mut self, x: Value, axis: i64) -> Result<Value> {
        let (dt, s) = (self.dtype(x), self.shape(x).to_vec());
        norm_axis(axis, s.len()).ok_or_else(|| self.err("Softmax", format!("axis {axis}")))?;
        self.one("Softmax", &[x], vec![("axis", Attr::Int(axis))], dt, s)
    }

    /// Split along `axis` into pieces of the given sizes (split sizes as an input, opset >= 13).
    pub fn split(&mut self, x: Value, axis: i64, sizes: &[usize]) -> Result<Vec<Value>> {
        let s = self.shape(x).to_vec();
        let a = norm_axis(axis, s.len()).ok_or_else(|| self.err("Split", format!("axis {axis}")))?;
        if s[a] != Dim::Fixed(sizes.iter().sum()) {
            return Err(self.err(
                "Split",
                format!("sizes {sizes:?} do not cover axis {a} of {}", fmt_shape(&s)),
            ));
        }
        let sp = self.const_i64(&sizes.iter().map(|v| *v as i64).collect::<Vec<_>>())?;
        let dt = self.dtype(x);
        let outs = sizes
            .iter()
            .map(|n| {
                let mut o = s.clone();
                o[a] = Dim::Fixed(*n);
                (dt, o)
            })
            .collect();
        self.add_node(
            "Split",
            "",
            &[Some(x), Some(sp)],
            vec![("axis", Attr::Int(axis))],
            outs,
        )
    }

    /// Concat along `axis` declared as `out` on that axis (for dynamic sizes, whose sum the shapes cannot express:
    /// a sum of fixed sizes is checked).
    pub fn concat_as(&mut self, xs: &[Value], axis: i64, out: Dim) -> Result<Value> {
        let s0 = self.shape(xs[0]).to_vec();
        let a = norm_axis(axis, s0.len()).ok_or_else(|| self.err("Concat", format!("axis {axis}")))?;
        let mut fixed = Some(0);
        for x in xs {
            let s = self.shape(*x);
            if s.len() != s0.len() || (0..s.len()).any(|i| i != a && s[i] != s0[i]) {
                return Err(self.err(
                    "Concat",
                    format!("incompatible {} and {}", fmt_shape(&s0), fmt_shape(s)),
                ));
            }
            fixed = fixed.zip(s[a].fixed()).map(|(t, n)| t + n);
        }
        if let Some(n) = fixed.filter(|n| Dim::Fixed(*n) != out) {
            return Err(self.err("Concat", format!("sizes sum to {n}, not {out}")));
        }
        let mut shape = s0;
        shape[a] = out;
        let dt = self.dtype(xs[0]);
        self.one("Concat", xs, vec![("axis", Attr::Int(axis))], dt, shape)
    }

    /// Split along `axis` into pieces of the given (possibly dynamic) sizes, computed in the graph from the bound
    /// symbols; their sum is the caller's claim (as with [`Graph::concat_as`]).
    pub fn split_as(&mut self, x: Value, axis: i64, sizes: &[Dim]) -> Result<Vec<Value>> {
        let s = self.shape(x).to_vec();
        let a = norm_axis(axis, s.len()).ok_or_else(|| self.err("Split", format!("axis {axis}")))?;
        let sp = self.shape_value(sizes, None)?;
        let dt = self.dtype(x);
        let outs = sizes
            .iter()
            .map(|n| {
                let mut o = s.clone();
                o[a] = *n;
                (dt, o)
            })
            .collect();
        self.add_node(
            "Split",
            "",
            &[Some(x), Some(sp)],
            vec![("axis", Attr::Int(axis))],
            outs,
        )
    }

    /// Concat along `axis` (fixed sizes on that axis).
    pub fn concat(&mut self, xs: &[Value], axis: i64) -> Result<Value> {
        let s0 = self.shape(xs[0]).to_vec();
        let a = norm_axis(axis, s0.len()).ok_or_else(|| self.err("Concat", format!("axis {axis}")))?;
        let mut total = 0;
        for x in xs {
            let s = self.shape(*x);
            let ok = s.len() == s0.len() && (0..s.len()).all(|i| i == a || s[i] == s0[i]);
            match (ok, s[a]) {
                (true, Dim::Fixed(n)) => total += n,
                _ => {
                    return Err(self.err(
                        "Concat",
                        format!("incompatible {} and {}", fmt_shape(&s0), fmt_shape(s)),
                    ))
                }
            }
        }
        let mut shape = s0;
        shape[a] = Dim::Fixed(total);
        let dt = self.dtype(xs[0]);
        self.one("Concat", xs, vec![("axis", Attr::Int(axis))], dt, shape)
    }

    /// Gather along `axis` (an embedding lookup with axis 0).
    pub fn gather(&mut self, data: Value, indices: Value, axis: i64) -> Result<Value> {
        let (sd, si) = (self.shape(data).to_vec(), self.shape(indices).to_vec());
        let a = norm_axis(axis, sd.len()).ok_or_else(|| self.err("Gather", format!("axis {axis}")))?;
        if !matches!(self.dtype(indices), DType::I64 | DType::I32) {
            return Err(self.err("Gather", "indices must be int64 or int32"));
        }
        let mut shape = sd[..a].to_vec();
        shape.extend(si);
        shape.extend_from_slice(&sd[a + 1..]);
        let dt = self.dtype(data);
        self.one(
            "Gather",
            &[data, indices],
            vec![("axis", Attr::Int(axis))],
            dt,
            shape,
        )
    }

    /// Unsqueeze at `axes` of the output (axes as an input, opset >= 13).
    pub fn unsqueeze(&mut self, x: Value, axes: &[usize]) -> Result<Value> {
        let mut shape = self.shape(x).to_vec();
        let mut sorted = axes.to_vec();
        sorted.sort();
        for a in sorted {
            if a > shape.len() {
                return Err(self.err("Unsqueeze", format!("axis {a}")));
            }
            shape.insert(a, Dim::Fixed(1));
        }
        let ax = self.const_i64(&axes.iter().map(|v| *v as i64).collect::<Vec<_>>())?;
        let dt = self.dtype(x);
        self.one("Unsqueeze", &[x, ax], vec![], dt, shape)
    }

    /// `Range(start, limit, delta)` with scalar inputs of one dtype, declared with length `len`.
    pub fn range(&mut self, start: Value, limit: Value, delta: Value, len: Dim) -> Result<Value> {
        let dt = self.dtype(start);
        self.one("Range", &[start, limit, delta], vec![], dt, vec![len])
    }

    /// Shape of `x` as an int64 vector.
    pub fn shape_of(&mut self, x: Value) -> Result<Value> {
        let r = self.shape(x).len();
        self.one("Shape", &[x], vec![], DType::I64, vec![Dim::Fixed(r)])
    }

    /// Expand `x` to the runtime shape `shape` (an int64 vector), declared as `out_shape`.
    pub fn expand(&mut self, x: Value, shape: Value, out_shape: Vec<Dim>) -> Result<Value> {
        broadcast(self.shape(x), &out_shape).map_err(|e| self.err("Expand", e))?;
        let dt = self.dtype(x);
        self.one("Expand", &[x, shape], vec![], dt, out_shape)
    }

    /// Opset-23 `RMSNormalization` over the last axis with fp32 stash.
    pub fn rms_normalization(&mut self, x: Value, scale: Value, epsilon: f32) -> Result<Value> {
        self.require_opset(23);
        let s = self.shape(x).to_vec();
        if self.shape(scale) != [s[s.len() - 1]] {
            return Err(self.err(
                "RMSNormalization",
                format!("scale {} for {}", fmt_shape(self.shape(scale)), fmt_shape(&s)),
            ));
        }
        let dt = self.dtype(x);
        let attrs = vec![
            ("axis", Attr::Int(-1)),
            ("epsilon", Attr::Float(epsilon)),
            ("stash_type", Attr::Int(1)),
        ];
        self.one("RMSNormalization", &[x, scale], attrs, dt, s)
    }

    /// Opset-23 `RotaryEmbedding` on a 4-D `[B,H,S,Dh]` input with caches `[P, Dh/2]` and position ids
    /// `[B,S]`, interleaved (adjacent pairs).
    pub fn rotary_embedding(
        &mut self,
        x: Value,
        cos: Value,
        sin: Value,
        position_ids: Value,
    ) -> Result<Value> {
        self.require_opset(23);
        let s = self.shape(x).to_vec();
        if s.len() != 4
            || self.shape(cos).len() != 2
            || self.shape(cos)[1] != Dim::Fixed(s[3].fixed().unwrap_or(0) / 2)
        {
            return Err(self.err(
                "RotaryEmbedding",
                format!("x {} cos {}", fmt_shape(&s), fmt_shape(self.shape(cos))),
            ));
        }
        let dt = self.dtype(x);
        self.one(
            "RotaryEmbedding",
            &[x, cos, sin, position_ids],
            vec![("interleaved", Attr::Int(1))],
            dt,
            s,
        )
    }

    /// Opset-23 `Attention` on 4-D `[B,H,S,Dh]` q, k, v with an explicit softmax scale.
    pub fn attention(&mut self, q: Value, k: Value, v: Value, scale: f32) -> Result<Value> {
        self.require_opset(23);
        let (sq, sk, sv) = (
            self.shape(q).to_vec(),
            self.shape(k).to_vec(),
            self.shape(v).to_vec(),
        );
        if sq.len() != 4 || sq != sk || sk != sv {
            return Err(self.err(
                "Attention",
                format!("q {} k {} v {}", fmt_shape(&sq), fmt_shape(&sk), fmt_shape(&sv)),
            ));
        }
        let dt = self.dtype(q);
        self.one(
            "Attention",
            &[q, k, v],
            vec![("scale", Attr::Float(scale))],
            dt,
            sq,
        )
    }

    /// `QuantizeLinear(x, scale, zero_point)`; `axis` for per-channel scales. The output type is the
    /// zero point's type.
    pub fn quantize_linear(
        &mut self,
        x: Value,
        scale: Value,
        zero_point: Value,
        axis: Option<i64>,
    ) -> Result<Value> {
        let s = self.shape(x).to_vec();
        let dt = self.dtype(zero_point);
        let attrs = axis.map(|a| vec![("axis", Attr::Int(a))]).unwrap_or_default();
        self.one("QuantizeLinear", &[x, scale, zero_point], attrs, dt, s)
    }

    /// `DequantizeLinear(x, scale, zero_point)`; the output type is the scale's type.
    pub fn dequantize_linear(
        &mut self,
        x: Value,
        scale: Value,
        zero_point: Value,
        axis: Option<i64>,
    ) -> Result<Value> {
        let s = self.shape(x).to_vec();
        let dt = self.dtype(scale);
        let attrs = axis.map(|a| vec![("axis", Attr::Int(a))]).unwrap_or_default();
        self.one("DequantizeLinear", &[x, scale, zero_point], attrs, dt, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Symbol;

    #[test]
    fn reshape_with_several_dynamic_dims_computes_its_target() {
        let mut g = Graph::new(17);
        let rows = Dim::of(Symbol::Rows, 1);
        let cols = Dim::of(Symbol::Cols, 1);
        let x = g
            .input(
                "x",
                DType::F32,
                vec![Dim::Batch(1), rows.times(Dim::Fixed(4)), cols],
            )
            .unwrap();
        // Only one dynamic dim: a constant target with -1, as in static graphs.
        let flat = g
            .reshape(x, &[Dim::Batch(1).times(rows).times(cols).times(Dim::Fixed(4))])
            .unwrap();
        assert_eq!(g.nodes().len(), 1);
        // Several: needs the symbols.
        let target = [Dim::Batch(1), rows, Dim::Fixed(4), cols];
        assert!(g.reshape(flat, &target).is_err());
        let shape = g.shape_of(x).unwrap();
        for (axis, s) in [(0, Symbol::Batch), (2, Symbol::Cols)] {
            let i = g.const_i64(&[axis]).unwrap();
            let v = g.gather(shape, i, 0).unwrap();
            g.bind_symbol(s, v);
        }
        let four = g.const_i64(&[4]).unwrap();
        let i = g.const_i64(&[1]).unwrap();
        let r4 = g.gather(shape, i, 0).unwrap();
        let r = g.div(r4, four).unwrap();
        g.bind_symbol(Symbol::Rows, r);
        let y = g.reshape(flat, &target).unwrap();
        assert_eq!(g.shape(y), target);
        assert_eq!(g.nodes().last().unwrap().op_type, "Reshape");
        // The element count is checked symbolically.
        assert!(g
            .reshape(flat, &[Dim::Batch(1), rows, Dim::Fixed(3), cols])
            .is_err());
        assert_eq!(rows.times(cols).divided_by(cols), Some(rows));
        assert_eq!(Dim::Batch(6).divided_by(Dim::Fixed(3)), Some(Dim::Batch(2)));
        assert_eq!(rows.divided_by(cols), None);
        assert_eq!(format!("{}", Dim::Batch(1).times(rows).times(cols)), "B*R*C");
    }

    #[test]
    fn shapes_are_checked_when_wired() {
        let mut g = Graph::new(17);
        let x = g
            .input("x", DType::F32, vec![Dim::Batch(1), Dim::Fixed(4), Dim::Fixed(8)])
            .unwrap();
        let w = g.const_f32(vec![8, 3], &[0.0; 24]).unwrap();
        let y = g.matmul(x, w).unwrap();
        assert_eq!(g.shape(y), [Dim::Batch(1), Dim::Fixed(4), Dim::Fixed(3)]);
        let r = g.reshape(y, &[Dim::Batch(4), Dim::Fixed(3)]).unwrap();
        assert_eq!(g.shape(r), [Dim::Batch(4), Dim::Fixed(3)]);
        let err = g.scoped("blk", |g| g.matmul(r, w)).unwrap_err().to_string();
        assert!(err.contains("blk/MatMul") && err.contains("inner dims"), "{err}");
        assert!(g.reshape(y, &[Dim::Batch(1), Dim::Fixed(5)]).is_err());
        let z = g.const_f32(vec![5], &[0.0; 5]).unwrap();
        assert!(g.add(y, z).is_err());
    }

    #[test]
    fn reduce_mean_follows_opset() {
        for (opset, n_inputs) in [(17, 1), (18, 2)] {
            let mut g = Graph::new(opset);
            let x = g
                .input("x", DType::F32, vec![Dim::Batch(1), Dim::Fixed(8)])
                .unwrap();
            let m = g.reduce_mean(x, &[-1], true).unwrap();
            assert_eq!(g.shape(m), [Dim::Batch(1), Dim::Fixed(1)]);
            assert_eq!(g.nodes()[0].inputs.len(), n_inputs);
        }
    }

    #[test]
    fn constants_are_deduplicated_and_names_unique() {
        let mut g = Graph::new(17);
        let a = g.scalar(DType::F32, 1.0).unwrap();
        let b = g.scalar(DType::F32, 1.0).unwrap();
        assert_eq!(a, b);
        g.input("x", DType::F32, vec![Dim::Fixed(1)]).unwrap();
        assert!(g.input("x", DType::F32, vec![Dim::Fixed(1)]).is_err());
    }
}

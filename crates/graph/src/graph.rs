//! The graph: values, nodes, initializers, scopes.

use crate::tensor::{Encoding, Initializer, TensorData};
use crate::{DType, GraphError, Result};
use std::collections::{BTreeMap, HashMap};

/// One dimension of a value: fixed, a multiple of the dynamic batch size, or a monomial of the symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// `batch * k`.
    Batch(usize),
    /// `k * batch^e0 * rows^e1 * cols^e2 * joint^e3` for any other product of [`Symbol`]s (build it with [`Dim::mono`], which
    /// keeps `Fixed` and `Batch` canonical).
    Sym(Mono),
}

/// A dynamic symbol of a graph: the batch, and the two axes of a dynamic grid (the patch rows and columns of a
/// dynamic-size image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Symbol {
    /// The batch size.
    Batch,
    /// Rows of the dynamic grid.
    Rows,
    /// Columns of the dynamic grid.
    Cols,
    /// The length of a joint sequence (`rows * cols` image tokens after a fixed number of text tokens): not a
    /// monomial of the others, so the graph binds it to its own computed value.
    Joint,
}

/// Number of [`Symbol`]s.
pub const SYMBOLS: usize = 4;

impl Symbol {
    /// The symbols, in exponent order.
    pub const ALL: [Symbol; SYMBOLS] = [Symbol::Batch, Symbol::Rows, Symbol::Cols, Symbol::Joint];
}

/// `k * batch^e[0] * rows^e[1] * cols^e[2] * joint^e[3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mono {
    /// The constant factor.
    pub k: usize,
    /// The exponents of [`Symbol::ALL`].
    pub e: [u8; SYMBOLS],
}

impl Dim {
    /// The fixed size, if fixed.
    pub fn fixed(self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            _ => None,
        }
    }

    /// `k` times the symbols with exponents `e`, in canonical form (`Fixed`, `Batch`, else `Sym`).
    pub fn mono(k: usize, e: [u8; SYMBOLS]) -> Dim {
        match e {
            [0, 0, 0, 0] => Dim::Fixed(k),
            [1, 0, 0, 0] => Dim::Batch(k),
            _ => Dim::Sym(Mono { k, e }),
        }
    }

    /// `k` times one symbol.
    pub fn of(symbol: Symbol, k: usize) -> Dim {
        let mut e = [0; SYMBOLS];
        e[symbol as usize] = 1;
        Dim::mono(k, e)
    }

    /// The factor and exponents of this dimension.
    pub fn parts(self) -> (usize, [u8; SYMBOLS]) {
        match self {
            Dim::Fixed(n) => (n, [0; SYMBOLS]),
            Dim::Batch(k) => (k, [1, 0, 0, 0]),
            Dim::Sym(m) => (m.k, m.e),
        }
    }

    /// The product of two dimensions.
    pub fn times(self, other: Dim) -> Dim {
        let ((a, ea), (b, eb)) = (self.parts(), other.parts());
        Dim::mono(a * b, std::array::from_fn(|i| ea[i] + eb[i]))
    }

    /// This dimension divided by `other` when the quotient is a monomial with an integer factor.
    pub fn divided_by(self, other: Dim) -> Option<Dim> {
        let ((a, ea), (b, eb)) = (self.parts(), other.parts());
        if b == 0 || a % b != 0 || (0..SYMBOLS).any(|i| ea[i] < eb[i]) {
            return None;
        }
        Some(Dim::mono(a / b, std::array::from_fn(|i| ea[i] - eb[i])))
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Batch(1) => write!(f, "B"),
            Dim::Batch(k) => write!(f, "B*{k}"),
            Dim::Sym(m) => {
                let mut parts: Vec<String> = Vec::new();
                for (i, name) in ["B", "R", "C", "J"].iter().enumerate() {
                    for _ in 0..m.e[i] {
                        parts.push((*name).to_string());
                    }
                }
                if m.k != 1 {
                    parts.push(m.k.to_string());
                }
                write!(f, "{}", parts.join("*"))
            }
        }
    }
}

/// Handle of a value (graph input, initializer or node output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Value(pub(crate) usize);

/// Name, dtype and shape of a value.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    /// Unique name in the graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<Dim>,
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// int
    Int(i64),
    /// float
    Float(f32),
    /// ints
    Ints(Vec<i64>),
    /// string
    Str(String),
}

/// One node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Unique scoped name (`scope/Op_n`).
    pub name: String,
    /// Op type.
    pub op_type: String,
    /// Domain ("" for the default ONNX domain).
    pub domain: String,
    /// Inputs; `None` is an omitted optional input.
    pub inputs: Vec<Option<Value>>,
    /// Outputs.
    pub outputs: Vec<Value>,
    /// Attributes, sorted by name.
    pub attrs: BTreeMap<String, Attr>,
    /// Scope stack at creation, joined by '/'.
    pub scope: String,
}

/// A typed ONNX graph under construction.
#[derive(Debug, Clone)]
pub struct Graph {
    pub(crate) opset: i64,
    pub(crate) values: Vec<ValueInfo>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) inputs: Vec<Value>,
    pub(crate) outputs: Vec<Value>,
    pub(crate) initializers: Vec<(Value, Initializer)>,
    pub(crate) custom_domains: BTreeMap<String, i64>,
    pub(crate) metadata: Vec<(String, String)>,
    pub(crate) doc: String,
    pub(crate) name: String,
    scope: Vec<String>,
    names: HashMap<String, Value>,
    node_counters: HashMap<(String, String), usize>,
    const_cache: HashMap<(DType, Vec<usize>, Vec<u8>), Value>,
    const_counter: usize,
    /// `[1]` int64 values of the symbols (bound by [`Graph::bind_symbol`]), and dims computed from them.
    symbols: HashMap<Symbol, Value>,
    dim_values: HashMap<Dim, Value>,
    /// `dim_param` names of dims of graph inputs and outputs ([`Graph::name_dim`]).
    pub(crate) dim_names: HashMap<Dim, String>,
}

impl Graph {
    /// An empty graph targeting `opset` of the default domain.
    pub fn new(opset: i64) -> Self {
        Graph {
            opset,
            values: Vec::new(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: Vec::new(),
            custom_domains: BTreeMap::new(),
            metadata: Vec::new(),
            doc: String::new(),
            name: "graph".into(),
            scope: Vec::new(),
            names: HashMap::new(),
            node_counters: HashMap::new(),
            const_cache: HashMap::new(),
            const_counter: 0,
            symbols: HashMap::new(),
            dim_values: HashMap::new(),
            dim_names: HashMap::new(),
        }
    }

    /// Binds `symbol` to `value`, a `[1]` int64 tensor computed in the graph (reshapes to shapes with several
    /// dynamic dims compute their target from it).
    pub fn bind_symbol(&mut self, symbol: Symbol, value: Value) {
        self.symbols.insert(symbol, value);
    }

    /// Whether `symbol` is bound.
    pub fn has_symbol(&self, symbol: Symbol) -> bool {
        self.symbols.contains_key(&symbol)
    }

    /// Names `dim` as `name` in the `dim_param` of graph inputs and outputs (other symbolic dims are written as
    /// expressions such as `batch*R*C*16`).
    pub fn name_dim(&mut self, dim: Dim, name: &str) {
        self.dim_names.insert(dim, name.to_string());
    }

    /// The runtime value of `d` as a `[1]` int64 tensor, computed once from the bound symbols.
    pub fn dim_value(&mut self, d: Dim) -> Result<Value> {
        if let Some(v) = self.dim_values.get(&d) {
            return Ok(*v);
        }
        let (k, e) = d.parts();
        let mut acc: Option<Value> = None;
        for (i, s) in Symbol::ALL.iter().enumerate() {
            for _ in 0..e[i] {
                let sv = *self.symbols.get(s).ok_or_else(|| {
                    self.err(
                        "Reshape",
                        format!("dim {d} needs the symbol {s:?}, which is not bound"),
                    )
                })?;
                acc = Some(match acc {
                    None => sv,
                    Some(a) => self.mul(a, sv)?,
                });
            }
        }
        let v = match acc {
            None => self.const_i64(&[k as i64])?,
            Some(a) if k == 1 => a,
            Some(a) => {
                let kv = self.const_i64(&[k as i64])?;
                self.mul(a, kv)?
            }
        };
        self.dim_values.insert(d, v);
        Ok(v)
    }

    /// The runtime shape `dims` as an int64 vector; the dim at `infer` (if any) is written as -1.
    pub fn shape_value(&mut self, dims: &[Dim], infer: Option<usize>) -> Result<Value> {
        if dims
            .iter()
            .enumerate()
            .all(|(i, d)| Some(i) == infer || d.fixed().is_some())
        {
            let t: Vec<i64> = dims
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    if Some(i) == infer {
                        -1
                    } else {
                        d.fixed().unwrap_or(0) as i64
                    }
                })
                .collect();
            return self.const_i64(&t);
        }
        let mut parts = Vec::new();
        let mut run: Vec<i64> = Vec::new();
        for (i, d) in dims.iter().enumerate() {
            match (Some(i) == infer, d.fixed()) {
                (true, _) => run.push(-1),
                (false, Some(n)) => run.push(n as i64),
                (false, None) => {
                    if !run.is_empty() {
                        parts.push(self.const_i64(&run)?);
                        run.clear();
                    }
                    parts.push(self.dim_value(*d)?);
                }
            }
        }
        if !run.is_empty() {
            parts.push(self.const_i64(&run)?);
        }
        if parts.len() == 1 {
            return Ok(parts[0]);
        }
        self.concat(&parts, 0)
    }

    /// The default-domain opset.
    pub fn opset(&self) -> i64 {
        self.opset
    }
    /// Raises the default-domain opset (never lowers it).
    pub fn require_opset(&mut self, opset: i64) {
        self.opset = self.opset.max(opset);
    }
    /// The graph name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Sets the graph name.
    pub fn set_name(&mut self, name: &str) {
        self.name = name.to_string();
    }
    /// Sets the model doc string.
    pub fn set_doc(&mut self, doc: &str) {
        self.doc = doc.to_string();
    }
    /// Adds (or replaces) a `metadata_props` entry.
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        if let Some(e) = self.metadata.iter_mut().find(|(k, _)| k == key) {
            e.1 = value.to_string();
        } else {
            self.metadata.push((key.to_string(), value.to_string()));
        }
    }
    /// The `metadata_props` entries.
    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    /// Information about a value.
    pub fn info(&self, v: Value) -> &ValueInfo {
        &self.values[v.0]
    }
    /// Shape of a value.
    pub fn shape(&self, v: Value) -> &[Dim] {
        &self.values[v.0].shape
    }
    /// Element type of a value.
    pub fn dtype(&self, v: Value) -> DType {
        self.values[v.0].dtype
    }
    /// Looks a value up by name.
    pub fn value_by_name(&self, name: &str) -> Option<Value> {
        self.names.get(name).copied()
    }
    /// All nodes, in topological (insertion) order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Mutable nodes, for rewrite passes.
    pub fn nodes_mut(&mut self) -> &mut Vec<Node> {
        &mut self.nodes
    }
    /// All initializers, in insertion order.
    pub fn initializers(&self) -> impl Iterator<Item = (Value, &Initializer)> {
        self.initializers.iter().map(|(v, i)| (*v, i))
    }
    /// Mutable access to one initializer by name.
    pub fn initializer_mut(&mut self, name: &str) -> Option<&mut Initializer> {
        self.initializers
            .iter_mut()
            .find(|(_, i)| i.name == name)
            .map(|(_, i)| i)
    }
    /// Graph inputs.
    pub fn inputs(&self) -> &[Value] {
        &self.inputs
    }
    /// Graph outputs.
    pub fn outputs(&self) -> &[Value] {
        &self.outputs
    }

    /// Runs `f` inside a named scope: node names created inside are prefixed with `name/`.
    pub fn scoped<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.scope.push(name.to_string());
        let r = f(self);
        self.scope.pop();
        r
    }

    /// The current scope path.
    pub fn scope_path(&self) -> String {
        self.scope.join(".")
    }

    pub(crate) fn new_value(&mut self, name: String, dtype: DType, shape: Vec<Dim>) -> Result<Value> {
        if self.names.contains_key(&name) {
            return Err(GraphError::DuplicateName { what: "value", name });
        }
        let v = Value(self.values.len());
        self.names.insert(name.clone(), v);
        self.values.push(ValueInfo { name, dtype, shape });
        Ok(v)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DType, shape: Vec<Dim>) -> Result<Value> {
        let v = self.new_value(name.to_string(), dtype, shape)?;
        self.inputs.push(v);
        Ok(v)
    }

    /// Declares a graph output under `name`, inserting an Identity if the value has another name.
    pub fn output(&mut self, name: &str, v: Value) -> Result<Value> {
        let out = if self.values[v.0].name == name {
            v
        } else {
            let info = self.values[v.0].clone();
            let node_name = self.unique_node_name("Identity");
            let o = self.new_value(name.to_string(), info.dtype, info.shape)?;
            self.push_node(node_name, "Identity", "", vec![Some(v)], vec![o], BTreeMap::new());
            o
        };
        self.outputs.push(out);
        Ok(out)
    }

    /// A copy of `v` under `name` (an Identity node), e.g. a tensor that may later become a graph output or the
    /// place where [`Graph::extract`] cuts the graph.
    pub fn named(&mut self, v: Value, name: &str) -> Result<Value> {
        let info = self.values[v.0].clone();
        let node_name = self.unique_node_name("Identity");
        let o = self.new_value(name.to_string(), info.dtype, info.shape)?;
        self.push_node(node_name, "Identity", "", vec![Some(v)], vec![o], BTreeMap::new());
        Ok(o)
    }

    /// The part of the graph that computes the outputs named in `outputs` when the values named in `cut` are
    /// graph inputs instead of computed: each cut value's producer (which must have no other output) is dropped,
    /// then everything the outputs do not need (nodes, initializers, inputs) is removed. Inputs come first in
    /// their old order, then the cut values in the order given.
    pub fn extract(&self, cut: &[&str], outputs: &[&str]) -> Result<Graph> {
        let mut g = self.clone();
        let find = |g: &Graph, name: &str, what: &str| {
            g.value_by_name(name).ok_or_else(|| {
                GraphError::Write(format!(
                    "cannot extract a subgraph: no {what} value named '{name}'"
                ))
            })
        };
        let mut new_outputs = Vec::with_capacity(outputs.len());
        for name in outputs {
            new_outputs.push(find(&g, name, "output")?);
        }
        for name in cut {
            let v = find(&g, name, "cut")?;
            if let Some(i) = g.nodes.iter().position(|n| n.outputs.contains(&v)) {
                if g.nodes[i].outputs.len() != 1 {
                    return Err(GraphError::Write(format!(
                        "cannot cut at '{name}': its producer '{}' has other outputs",
                        g.nodes[i].name
                    )));
                }
                g.nodes.remove(i);
            }
            if !g.inputs.contains(&v) {
                g.inputs.push(v);
            }
        }
        g.outputs = new_outputs;
        g.prune();
        let mut used = vec![false; g.values.len()];
        for n in &g.nodes {
            for v in n.inputs.iter().flatten() {
                used[v.0] = true;
            }
        }
        for v in &g.outputs {
            used[v.0] = true;
        }
        g.inputs.retain(|v| used[v.0]);
        Ok(g)
    }

    /// Adds a named initializer (a weight or table). The name is used verbatim.
    pub fn initializer(
        &mut self,
        name: &str,
        dtype: DType,
        shape: Vec<usize>,
        data: TensorData,
    ) -> Result<Value> {
        if let TensorData::Bytes(b) = &data {
            let want = shape.iter().product::<usize>() * dtype.size();
            if b.len() != want {
                return Err(GraphError::Tensor {
                    name: name.into(),
                    reason: format!(
                        "{} bytes given, shape {shape:?} of {} needs {want}",
                        b.len(),
                        dtype.name()
                    ),
                });
            }
        }
        let v = self.new_value(
            name.to_string(),
            dtype,
            shape.iter().map(|d| Dim::Fixed(*d)).collect(),
        )?;
        self.initializers.push((
            v,
            Initializer {
                name: name.to_string(),
                dtype,
                shape,
                data,
            },
        ));
        Ok(v)
    }

    /// A constant, deduplicated by (dtype, shape, bytes), named `const/<n>`.
    pub fn constant(&mut self, dtype: DType, shape: Vec<usize>, bytes: Vec<u8>) -> Result<Value> {
        let key = (dtype, shape.clone(), bytes.clone());
        if let Some(v) = self.const_cache.get(&key) {
            return Ok(*v);
        }
        let name = format!("const/{}", self.const_counter);
        self.const_counter += 1;
        let v = self.initializer(&name, dtype, shape, TensorData::Bytes(bytes))?;
        self.const_cache.insert(key, v);
        Ok(v)
    }
    /// An f32 constant.
    pub fn const_f32(&mut self, shape: Vec<usize>, values: &[f32]) -> Result<Value> {
        self.constant(DType::F32, shape, crate::encode_f32(values, DType::F32))
    }
    /// A scalar constant of a float dtype.
    pub fn scalar(&mut self, dtype: DType, value: f32) -> Result<Value> {
        self.constant(dtype, vec![], crate::encode_f32(&[value], dtype))
    }
    /// A 1-D int64 constant.
    pub fn const_i64(&mut self, values: &[i64]) -> Result<Value> {
        self.constant(
            DType::I64,
            vec![values.len()],
            values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        )
    }

    pub(crate) fn unique_node_name(&mut self, op: &str) -> String {
        let scope = self.scope_path();
        let n = self
            .node_counters
            .entry((scope.clone(), op.to_string()))
            .or_insert(0);
        let name = if scope.is_empty() {
            format!("{op}_{n}")
        } else {
            format!("{scope}/{op}_{n}")
        };
        *n += 1;
        name
    }

    fn push_node(
        &mut self,
        name: String,
        op: &str,
        domain: &str,
        inputs: Vec<Option<Value>>,
        outputs: Vec<Value>,
        attrs: BTreeMap<String, Attr>,
    ) {
        self.nodes.push(Node {
            name,
            op_type: op.to_string(),
            domain: domain.to_string(),
            inputs,
            outputs,
            attrs,
            scope: self.scope_path(),
        });
    }

    /// Adds a node whose output types were inferred by the caller. Outputs are named `<node>:<i>`.
    pub fn add_node(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[Option<Value>],
        attrs: Vec<(&str, Attr)>,
        outputs: Vec<(DType, Vec<Dim>)>,
    ) -> Result<Vec<Value>> {
        if !domain.is_empty() {
            self.custom_domains.entry(domain.to_string()).or_insert(1);
        }
        let name = self.unique_node_name(op);
        let mut outs = Vec::with_capacity(outputs.len());
        for (i, (dt, shape)) in outputs.into_iter().enumerate() {
            outs.push(self.new_value(format!("{name}:{i}"), dt, shape)?);
        }
        let attrs = attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        self.push_node(name, op, domain, inputs.to_vec(), outs.clone(), attrs);
        Ok(outs)
    }

    /// Declares the version of a custom domain used by custom nodes.
    pub fn set_domain_version(&mut self, domain: &str, version: i64) {
        self.custom_domains.insert(domain.to_string(), version);
    }

    /// An error about the node that is about to be created.
    pub(crate) fn err(&self, op: &str, reason: impl Into<String>) -> GraphError {
        let scope = self.scope_path();
        GraphError::Shape {
            node: if scope.is_empty() {
                op.to_string()
            } else {
                format!("{scope}/{op}")
            },
            op: op.to_string(),
            reason: reason.into(),
        }
    }

    /// Changes how the weight initializer `name` is stored (a float type or a quantized encoding); the dtype
    /// of its value follows the encoding. Fails for names that are not deferred weights.
    pub fn set_weight_encoding(&mut self, name: &str, encoding: Encoding) -> Result<()> {
        let not_weight = || GraphError::Tensor {
            name: name.to_string(),
            reason: "not a weight initializer".into(),
        };
        let (v, init) = self
            .initializers
            .iter_mut()
            .find(|(_, i)| i.name == name)
            .ok_or_else(not_weight)?;
        let TensorData::Deferred { encoding: e, .. } = &mut init.data else {
            return Err(not_weight());
        };
        init.dtype = encoding.dtype();
        *e = encoding;
        self.values[v.0].dtype = init.dtype;
        Ok(())
    }

    /// Reorders nodes topologically, keeping insertion order wherever the data flow allows. Rewrite passes
    /// append nodes (e.g. `DequantizeLinear`) that earlier nodes consume; call this once they are done.
    pub fn sort_nodes(&mut self) -> Result<()> {
        let mut producer: HashMap<usize, usize> = HashMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            for o in &n.outputs {
                producer.insert(o.0, i);
            }
        }
        // 0 = not visited, 1 = on the stack, 2 = emitted.
        let mut state = vec![0u8; self.nodes.len()];
        let mut order = Vec::with_capacity(self.nodes.len());
        for root in 0..self.nodes.len() {
            let mut stack = vec![(root, false)];
            while let Some((i, expanded)) = stack.pop() {
                if expanded {
                    state[i] = 2;
                    order.push(i);
                    continue;
                }
                match state[i] {
                    2 => continue,
                    1 => {
                        return Err(GraphError::Write(format!(
                            "cycle through node '{}'",
                            self.nodes[i].name
                        )))
                    }
                    _ => {}
                }
                state[i] = 1;
                stack.push((i, true));
                for v in self.nodes[i].inputs.iter().rev().flatten() {
                    if let Some(&p) = producer.get(&v.0) {
                        if state[p] == 1 {
                            return Err(GraphError::Write(format!(
                                "cycle through node '{}'",
                                self.nodes[p].name
                            )));
                        }
                        if state[p] == 0 {
                            stack.push((p, false));
                        }
                    }
                }
            }
        }
        let mut old: Vec<Option<Node>> = std::mem::take(&mut self.nodes).into_iter().map(Some).collect();
        self.nodes = order
            .into_iter()
            .map(|i| old[i].take().expect("emitted once"))
            .collect();
        Ok(())
    }

    /// Removes nodes whose outputs are unused (not consumed and not graph outputs), repeatedly, and
    /// initializers that nothing consumes any more.
    pub fn prune(&mut self) {
        loop {
            let mut used = vec![false; self.values.len()];
            for n in &self.nodes {
                for v in n.inputs.iter().flatten() {
                    used[v.0] = true;
                }
            }
            for v in &self.outputs {
                used[v.0] = true;
            }
            let before = self.nodes.len();
            self.nodes.retain(|n| n.outputs.iter().any(|o| used[o.0]));
            if self.nodes.len() == before {
                self.initializers.retain(|(v, _)| used[v.0]);
                self.const_cache.retain(|_, v| used[v.0]);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::VecSource;
    use std::sync::Arc;

    #[test]
    fn appended_producers_are_sorted_before_their_consumers() {
        let mut g = Graph::new(17);
        let x = g
            .input("x", DType::F32, vec![Dim::Batch(1), Dim::Fixed(2)])
            .unwrap();
        let a = g.relu(x).unwrap();
        let b = g.sigmoid(a).unwrap();
        g.output("y", b).unwrap();
        // A rewrite appends a node and points the first consumer at it.
        let c = g.erf(x).unwrap();
        g.nodes_mut()[0].inputs[0] = Some(c);
        g.sort_nodes().unwrap();
        let order: Vec<&str> = g.nodes().iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(order, ["Erf", "Relu", "Sigmoid", "Identity"]);
        // A cycle is an error.
        let n = g.nodes().len();
        let last_out = g.nodes()[n - 1].outputs[0];
        g.nodes_mut()[0].inputs[0] = Some(last_out);
        assert!(g.sort_nodes().is_err());
    }

    #[test]
    fn extract_cuts_at_a_named_value() {
        let mut g = Graph::new(17);
        let x = g
            .input("x", DType::F32, vec![Dim::Batch(1), Dim::Fixed(2)])
            .unwrap();
        let y = g
            .input("y", DType::F32, vec![Dim::Batch(1), Dim::Fixed(2)])
            .unwrap();
        let a = g.relu(x).unwrap();
        let a = g.add(a, y).unwrap();
        let mid = g.named(a, "mid").unwrap();
        let b = g.sigmoid(mid).unwrap();
        let b = g.add(b, x).unwrap();
        g.output("out", b).unwrap();
        g.output("mid", mid).unwrap();
        // The second half: x and the cut value in, y no longer needed.
        let tail = g.extract(&["mid"], &["out"]).unwrap();
        let names = |vs: &[Value], g: &Graph| vs.iter().map(|v| g.info(*v).name.clone()).collect::<Vec<_>>();
        assert_eq!(names(tail.inputs(), &tail), ["x", "mid"]);
        assert_eq!(names(tail.outputs(), &tail), ["out"]);
        let ops: Vec<&str> = tail.nodes().iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Sigmoid", "Add", "Identity"]);
        // The first half.
        let head = g.extract(&[], &["mid"]).unwrap();
        assert_eq!(names(head.inputs(), &head), ["x", "y"]);
        assert_eq!(head.nodes().len(), 3);
        assert!(g.extract(&["nope"], &["out"]).is_err());
    }

    #[test]
    fn weight_encoding_changes_the_value_type() {
        let mut g = Graph::new(17);
        let data = TensorData::Deferred {
            source: Arc::new(VecSource(vec![1.0, -2.0])),
            encoding: Encoding::Float(DType::F32),
        };
        let w = g.initializer("w", DType::F32, vec![2], data).unwrap();
        let enc = Encoding::Quantized {
            dtype: DType::I8,
            axis: 0,
            scales: Arc::new(vec![1.0, 1.0]),
            qmax: 127.0,
        };
        g.set_weight_encoding("w", enc).unwrap();
        assert_eq!(g.dtype(w), DType::I8);
        assert_eq!(g.initializers().next().unwrap().1.dtype, DType::I8);
        let c = g.scalar(DType::F32, 1.0).unwrap();
        let cname = g.info(c).name.clone();
        assert!(g
            .set_weight_encoding(&cname, Encoding::Float(DType::F16))
            .is_err());
    }
}

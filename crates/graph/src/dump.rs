//! A stable text dump of a graph (for snapshot tests and `--dump`).

use crate::graph::{Attr, Graph};
use crate::ops::fmt_shape;
use std::fmt::Write;

impl Graph {
    /// One line per input, initializer (name, dtype, shape), node (name, op, attributes, inputs,
    /// outputs with dtype and shape) and output. Deterministic.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "opset {} domains {:?}", self.opset, self.custom_domains);
        for v in &self.inputs {
            let i = self.info(*v);
            let _ = writeln!(s, "input {} {} {}", i.name, i.dtype.name(), fmt_shape(&i.shape));
        }
        for (_, init) in &self.initializers {
            let kind = if init.is_weight() { "weight" } else { "const" };
            let _ = writeln!(s, "{kind} {} {} {:?}", init.name, init.dtype.name(), init.shape);
        }
        for n in &self.nodes {
            let op = if n.domain.is_empty() {
                n.op_type.clone()
            } else {
                format!("{}.{}", n.domain, n.op_type)
            };
            let attrs: Vec<String> = n
                .attrs
                .iter()
                .map(|(k, a)| match a {
                    Attr::Int(i) => format!("{k}={i}"),
                    Attr::Float(f) => format!("{k}={f:e}"),
                    Attr::Ints(v) => format!("{k}={v:?}"),
                    Attr::Str(v) => format!("{k}={v:?}"),
                })
                .collect();
            let ins: Vec<String> = n
                .inputs
                .iter()
                .map(|i| i.map(|v| self.info(v).name.clone()).unwrap_or_default())
                .collect();
            let outs: Vec<String> = n
                .outputs
                .iter()
                .map(|o| {
                    let i = self.info(*o);
                    format!("{} {}", i.dtype.name(), fmt_shape(&i.shape))
                })
                .collect();
            let _ = writeln!(
                s,
                "node {} {op}{} ({}) -> {}",
                n.name,
                if attrs.is_empty() {
                    String::new()
                } else {
                    format!(" {{{}}}", attrs.join(", "))
                },
                ins.join(", "),
                outs.join(", ")
            );
        }
        for v in &self.outputs {
            let i = self.info(*v);
            let _ = writeln!(s, "output {} {} {}", i.name, i.dtype.name(), fmt_shape(&i.shape));
        }
        s
    }
}

//! Graph passes, one per file: [`opset`] (raise the opset for FLOAT8 Q/DQ), [`bf16`] (bf16 weights and
//! activation rounding), [`qdq`] (INT8/FP8 weights with `DequantizeLinear`, optional activation Q/DQ),
//! [`attention`] (bf16 operands in the custom attention ops).

pub mod attention;
pub mod bf16;
pub mod mx;
pub mod opset;
pub mod qdq;

use pixeldit_graph::{Graph, Value};

/// Points every input of every node except `except` that reads `old` at `new`.
pub(crate) fn redirect(g: &mut Graph, old: Value, new: Value, except: &str) {
    for n in g.nodes_mut() {
        if n.name == except {
            continue;
        }
        for i in n.inputs.iter_mut().flatten() {
            if *i == old {
                *i = new;
            }
        }
    }
}

/// Index of the node named `name`.
pub(crate) fn node_index(g: &Graph, name: &str) -> usize {
    g.nodes()
        .iter()
        .position(|n| n.name == name)
        .expect("layer node exists")
}

//! BF16 variant of one Linear: the weight is stored as bfloat16 and `Cast` to f32, the activation is rounded to
//! bf16 (`Cast` to bf16 and back), and the `Gemm` runs in f32: the numerics of a bf16 tensor-core GEMM with f32
//! accumulation, in ops that ONNX Runtime's CPU provider (which has no bf16 `Gemm`) and tract (through its
//! BFLOAT16 rewrite) both run. TensorRT, with its bf16 builder flag, is free to pick bf16 kernels for the `Gemm`.

use super::node_index;
use crate::select::Linear;
use crate::Result;
use pixeldit_graph::{DType, Encoding, Graph};

/// Rewrites `l`; `round_activations` adds the bf16 rounding of the input.
pub fn bf16_linear(g: &mut Graph, l: &Linear, round_activations: bool) -> Result<()> {
    g.set_weight_encoding(&l.weight, Encoding::Float(DType::BF16))?;
    let w = g.value_by_name(&l.weight).expect("weight exists");
    let (x, w) = g.scoped(&l.scope, |g| {
        let wf = g.cast(w, DType::F32)?;
        let x = if round_activations {
            let xb = g.cast(l.input, DType::BF16)?;
            g.cast(xb, DType::F32)?
        } else {
            l.input
        };
        Ok((x, wf))
    })?;
    let i = node_index(g, &l.node);
    let n = &mut g.nodes_mut()[i];
    n.inputs[0] = Some(x);
    n.inputs[1] = Some(w);
    Ok(())
}

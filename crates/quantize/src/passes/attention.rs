//! `matmul_precision = "bf16"` on the custom attention ops (spec: [`pixeldit_spec::custom_op`]): their `QK^T` and
//! `PV` operands are rounded to bf16 around f32 sums, which AVX512-BF16 CPUs run at twice the f32 rate. For the
//! variants that quantize activations to 8 bits, whose attention inputs already carry that error.

use pixeldit_graph::{Attr, Graph};
use pixeldit_spec::custom_op::{DOMAIN, JOINT_OP_TYPE, MATMUL_PRECISION_ATTR, OP_TYPE};

/// Sets the attribute on every `pixeldit.RotaryAttention` / `JointRotaryAttention` node of `g`; returns how many.
pub fn round_attention_matmuls_to_bf16(g: &mut Graph) -> usize {
    let mut n = 0;
    for node in g.nodes_mut() {
        if node.domain == DOMAIN && (node.op_type == OP_TYPE || node.op_type == JOINT_OP_TYPE) {
            node.attrs
                .insert(MATMUL_PRECISION_ATTR.to_string(), Attr::Str("bf16".to_string()));
            n += 1;
        }
    }
    n
}

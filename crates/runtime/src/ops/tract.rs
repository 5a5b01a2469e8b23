//! The custom ops for tract: one op generic over [`CustomOp`], registered in `op_register` for every op of the
//! registry (tract keys ops by op type only).

use super::{AttentionAttributes, CustomOp, MatmulPrecision, Threads};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// Registers every op of [`CustomOp::ALL`] in `onnx`.
pub(crate) fn register(onnx: &mut tract_onnx::Onnx) {
    for op in CustomOp::ALL {
        onnx.op_register.insert(op.op_type(), builder);
    }
}

/// The `op_register` builder of every custom op (the node's op type says which).
fn builder(_ctx: &ParsingContext, node: &pb::NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let op = CustomOp::ALL
        .into_iter()
        .find(|o| o.op_type() == node.op_type)
        .ok_or_else(|| {
            format_err!(
                "node '{}': no pixeldit kernel for op '{}'",
                node.name,
                node.op_type
            )
        })?;
    let attrs = AttentionAttributes::new(
        op,
        &node.name,
        node.get_attr_opt::<i64>("num_heads")?,
        node.get_attr_opt::<f32>("epsilon")?,
        node.get_attr_opt::<f32>("scale")?,
        node.get_attr_opt::<&str>("matmul_precision")?,
    )?;
    Ok((
        expand(TractCustomOp {
            op,
            num_heads: attrs.num_heads,
            epsilon_bits: attrs.epsilon.map(f32::to_bits),
            scale_bits: attrs.scale.map(f32::to_bits),
            matmul: attrs.matmul,
        }),
        vec![],
    ))
}

/// A custom op in a tract model; floats are kept as bits for `Eq + Hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TractCustomOp {
    op: CustomOp,
    num_heads: usize,
    epsilon_bits: Option<u32>,
    scale_bits: Option<u32>,
    matmul: MatmulPrecision,
}

impl TractCustomOp {
    fn attributes(&self) -> AttentionAttributes {
        AttentionAttributes {
            num_heads: self.num_heads,
            epsilon: self.epsilon_bits.map(f32::from_bits),
            scale: self.scale_bits.map(f32::from_bits),
            matmul: self.matmul,
        }
    }

    fn tract_name(&self) -> StaticName {
        format!("Pixeldit{}", self.op.op_type()).into()
    }
}

impl Expansion for TractCustomOp {
    fn name(&self) -> StaticName {
        self.tract_name()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.op.num_inputs())?;
        check_output_arity(outputs, 1)?;
        for i in inputs {
            s.equals(&i.datum_type, f32::datum_type())?;
        }
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        if !self.op.is_attention() {
            s.equals(&inputs[0].rank, 3)?;
            return s.equals(&outputs[0].shape, &inputs[0].shape);
        }
        for &i in self.op.shape_inputs() {
            s.equals(&inputs[i].rank, 3)?;
        }
        s.equals(&outputs[0].rank, 3)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        match self.op.shape_inputs() {
            [a] => s.equals(&outputs[0].shape[1], &inputs[*a].shape[1])?,
            [a, b] => s.given_2(&inputs[*a].shape[1], &inputs[*b].shape[1], move |s, x, y| {
                s.equals(&outputs[0].shape[1], x + y)
            })?,
            _ => unreachable!("one or two qkv inputs"),
        }
        s.given(&inputs[0].shape[2], move |s, w| {
            s.equals(&outputs[0].shape[2], w / 3)
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for TractCustomOp {
    fn name(&self) -> StaticName {
        self.tract_name()
    }

    op_as_typed_op!();
}

impl EvalOp for TractCustomOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let op = self.op;
        ensure!(
            inputs.len() == op.num_inputs(),
            "{op} takes {} inputs",
            op.num_inputs()
        );
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let views = inputs
            .iter()
            .map(|t| t.try_as_plain_ram())
            .collect::<TractResult<Vec<_>>>()?;
        let data = views
            .iter()
            .map(|v| v.as_slice::<f32>())
            .collect::<TractResult<Vec<_>>>()?;
        let operands: Vec<(&[usize], &[f32])> = shapes.iter().map(Vec::as_slice).zip(data).collect();
        let dims = op.output_shape(&operands)?;
        let params = self.attributes().params(op, &operands);
        let mut out = Tensor::zero::<f32>(&dims)?;
        {
            let mut view = out.try_as_plain_ram_mut()?;
            op.compute(&operands, &params, Threads::Own, view.as_slice_mut::<f32>()?)?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for TractCustomOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        if !self.op.is_attention() {
            ensure!(inputs[0].rank() == 3, "{}: x must be 3-D", self.op);
            return Ok(tvec!(f32::fact(inputs[0].shape.clone())));
        }
        let qkv: Vec<&ShapeFact> = self.op.shape_inputs().iter().map(|&i| &inputs[i].shape).collect();
        ensure!(
            qkv.iter().all(|s| s.rank() == 3),
            "{}: qkv inputs must be 3-D",
            self.op
        );
        let seq = qkv
            .iter()
            .skip(1)
            .fold(qkv[0][1].clone(), |acc, s| acc + s[1].clone());
        Ok(tvec!(f32::fact([qkv[0][0].clone(), seq, qkv[0][2].clone() / 3])))
    }

    as_op!();
}

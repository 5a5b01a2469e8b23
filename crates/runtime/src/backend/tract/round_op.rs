//! `PixelditFloatRound`: f32 -> (bf16 | float8) -> f32, the kernel that stands in for casts to formats tract cannot
//! hold (inserted by [`super::rewrite_low_precision`]).

use crate::lowp::LowFloat;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// Op type of the rounding op the rewrite inserts (domain `pixeldit`, attributes `to`, `saturate`). It exists
/// only between the rewrite and tract; exported files never contain it.
pub const ROUND_OP: &str = "PixelditFloatRound";

/// Builds a [`FloatRoundOp`] from a [`ROUND_OP`] node (`to`: the ONNX element type, `saturate`: 1 by default).
pub(super) fn float_round_builder(
    _ctx: &ParsingContext,
    node: &pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let to: i64 = node.get_attr("to")?;
    let format = LowFloat::from_onnx(to as i32).with_context(|| format!("{ROUND_OP}: bad 'to' {to}"))?;
    let saturate = node.get_attr_opt::<i64>("saturate")?.unwrap_or(1) != 0;
    Ok((expand(FloatRoundOp { format, saturate }), vec![]))
}

/// Rounds every f32 value to `format` and back (saturating to the format's finite range when `saturate`).
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

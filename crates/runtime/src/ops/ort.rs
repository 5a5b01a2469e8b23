//! The custom ops for ONNX Runtime: one `Operator` generic over [`CustomOp`] (CPU kernels; with CUDA/TensorRT they
//! run on the host), and the `pixeldit` domain built from the registry.

use super::{AttentionAttributes, CustomOp, ParallelFor, Threads};
use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{Shape, SymbolicDimensions, TensorElementType, ValueType};
use std::sync::atomic::{AtomicUsize, Ordering};

/// ONNX Runtime's intra-op thread pool of the running session, for the kernels.
struct OrtPool<'a>(&'a ComputeContext);

impl ParallelFor for OrtPool<'_> {
    fn parallel_for(&self, n: usize, task: &(dyn Fn(usize) + Sync + Send)) {
        // One batch per task. On an error ONNX Runtime may have made only some calls; the kernel makes the rest.
        let _ = self.0.par_for(n, n, task);
    }
}

/// Counter for the names of unknown dims in the shape inference.
static UNKNOWN_DIMS: AtomicUsize = AtomicUsize::new(0);

/// The `pixeldit` domain with every op of [`CustomOp::ALL`].
pub(crate) fn domain() -> ort::Result<OperatorDomain> {
    CustomOp::ALL
        .into_iter()
        .try_fold(OperatorDomain::new(pixeldit_spec::CUSTOM_DOMAIN)?, |d, op| {
            d.add(OrtCustomOp(op))
        })
}

/// One custom op as an ONNX Runtime operator.
struct OrtCustomOp(CustomOp);

impl Operator for OrtCustomOp {
    type Kernel<'a> = BoxedKernel<'a>;

    fn name(&self) -> &str {
        self.0.op_type()
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        (0..self.0.num_inputs()).map(|_| OperatorInput::required(TensorElementType::Float32))
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        let inputs = ctx.inputs();
        let mut qkv = Vec::new();
        let mut symbols = Vec::new();
        for &i in self.0.shape_inputs() {
            let Some(ValueType::Tensor {
                shape,
                dimension_symbols,
                ..
            }) = inputs.get(i)
            else {
                return Ok(());
            };
            if shape.len() != 3 {
                return Ok(());
            }
            let known = |d: i64| (d >= 0).then_some(d);
            qkv.push([known(shape[0]), known(shape[1]), known(shape[2])]);
            symbols.push(dimension_symbols.clone());
        }
        let dims = self.0.output_dims(&qkv);
        // An unknown dim without a symbol would reach ONNX Runtime as the value -1, which its Reshape inference then
        // multiplies into bogus negative dims (seen on graphs with extra outputs): name it.
        let symbol = |i: usize| match (dims[i], symbols[0].get(i)) {
            (Some(_), _) => String::new(),
            (None, Some(s))
                if !s.is_empty() && (!self.0.is_attention() || i == 0 || (i == 1 && qkv.len() == 1)) =>
            {
                s.clone()
            }
            _ => format!("pixeldit_unk_{}", UNKNOWN_DIMS.fetch_add(1, Ordering::Relaxed)),
        };
        let out = ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape: Shape::new(dims.map(|d| d.unwrap_or(-1))),
            dimension_symbols: SymbolicDimensions::new([symbol(0), symbol(1), symbol(2)]),
        };
        ctx.set_output(0, &out)
    }

    fn create_kernel<'a>(&self, k: &KernelContext<'a>) -> ort::Result<Self::Kernel<'a>> {
        let op = self.0;
        let node = k.node_name().unwrap_or_default();
        let attrs = AttentionAttributes::new(
            op,
            &node,
            k.get::<i64>("num_heads"),
            k.get::<f32>("epsilon"),
            k.get::<f32>("scale"),
            k.get::<String>("matmul_precision").as_deref(),
        )
        .map_err(|e| ort::Error::new(e.to_string()))?;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let mut values = Vec::with_capacity(op.num_inputs());
            for i in 0..op.num_inputs() {
                values.push(
                    ctx.input(i)?.ok_or_else(|| {
                        ort::Error::new(format!("{op} node '{node}': input {i} is missing"))
                    })?,
                );
            }
            let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(values.len());
            let mut data: Vec<&[f32]> = Vec::with_capacity(values.len());
            for v in &values {
                let (shape, d) = v.try_extract_tensor::<f32>()?;
                shapes.push(shape.iter().map(|&x| x.max(0) as usize).collect());
                data.push(d);
            }
            let inputs: Vec<(&[usize], &[f32])> = shapes.iter().map(Vec::as_slice).zip(data).collect();
            let dims = op
                .output_shape(&inputs)
                .map_err(|e| ort::Error::new(format!("node '{node}': {e}")))?;
            let params = attrs.params(op, &inputs);
            let mut out = ctx
                .output(0, dims.map(|d| d as i64).to_vec())?
                .ok_or_else(|| ort::Error::new(format!("{op} node '{node}': no output buffer")))?;
            let (_, o) = out.try_extract_tensor_mut::<f32>()?;
            op.compute(&inputs, &params, Threads::Host(&OrtPool(ctx)), o)
                .map_err(|e| ort::Error::new(format!("node '{node}': {e}")))
        }))
    }
}

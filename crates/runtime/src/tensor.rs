//! Named input tensors of a forward pass, as the [`crate::Backend`] trait takes them.

use ndarray::{ArrayViewD, Dimension};

/// A borrowed input tensor of one of the element types PixelDiT models take.
#[derive(Debug, Clone)]
pub enum TensorRef<'a> {
    /// `float32`.
    F32(ArrayViewD<'a, f32>),
    /// `int64`.
    I64(ArrayViewD<'a, i64>),
}

impl TensorRef<'_> {
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            TensorRef::F32(a) => a.shape(),
            TensorRef::I64(a) => a.shape(),
        }
    }

    /// The ONNX element type name (`float32`, `int64`), for error messages.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            TensorRef::F32(_) => "float32",
            TensorRef::I64(_) => "int64",
        }
    }

    /// The KServe v2 datatype (`FP32`, `INT64`).
    pub fn kserve_datatype(&self) -> &'static str {
        match self {
            TensorRef::F32(_) => "FP32",
            TensorRef::I64(_) => "INT64",
        }
    }

    /// The elements as little-endian bytes in row-major order.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            TensorRef::F32(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TensorRef::I64(a) => a.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl<'a, D: Dimension> From<ndarray::ArrayView<'a, f32, D>> for TensorRef<'a> {
    fn from(a: ndarray::ArrayView<'a, f32, D>) -> Self {
        TensorRef::F32(a.into_dyn())
    }
}

impl<'a, D: Dimension> From<ndarray::ArrayView<'a, i64, D>> for TensorRef<'a> {
    fn from(a: ndarray::ArrayView<'a, i64, D>) -> Self {
        TensorRef::I64(a.into_dyn())
    }
}

/// One named input of a forward pass.
pub type Feed<'n, 'a> = (&'n str, TensorRef<'a>);

//! Initializer data: small constants as bytes, weights as deferred f32 sources plus an encoding.

use crate::{DType, Result};
use std::sync::Arc;

/// A source of f32 values for one weight tensor, read when the model is written (or calibrated).
pub trait F32Source: Send + Sync {
    /// Reads the values in row-major order.
    fn read(&self) -> Result<Vec<f32>>;
}

/// An in-memory f32 source.
pub struct VecSource(pub Vec<f32>);

impl F32Source for VecSource {
    fn read(&self) -> Result<Vec<f32>> {
        Ok(self.0.clone())
    }
}

/// How deferred f32 values are stored in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoding {
    /// As a float type (f32, f16, bf16).
    Float(DType),
    /// Linear quantization `q = saturate(round(v / scale))` along `axis` (one scale per slice), to
    /// `dtype` (I8 or F8E4M3). `qmax` bounds the integer range (127, or 63 for 7-bit weights).
    Quantized {
        dtype: DType,
        axis: usize,
        scales: Arc<Vec<f32>>,
        qmax: f32,
    },
    /// Block quantization of a 2-D `[rows, cols]` tensor to `dtype` (F8E4M3, saturating): one scale per `block`
    /// consecutive elements of a row, `scales` row-major `[rows, cols / block]` (ONNX blocked
    /// `DequantizeLinear`, axis 1).
    Blocked {
        dtype: DType,
        block: usize,
        scales: Arc<Vec<f32>>,
    },
}

impl Encoding {
    /// The stored element type.
    pub fn dtype(&self) -> DType {
        match self {
            Encoding::Float(d) => *d,
            Encoding::Quantized { dtype, .. } | Encoding::Blocked { dtype, .. } => *dtype,
        }
    }

    /// Encodes values of a tensor with the given shape.
    pub fn encode(&self, values: &[f32], shape: &[usize]) -> Vec<u8> {
        self.encode_at(values, 0, shape)
    }

    /// Encodes `values`, the elements `start..start + values.len()` of a tensor with the given shape (for writing
    /// a large tensor in chunks; per-channel scales follow the element index).
    pub fn encode_at(&self, values: &[f32], start: usize, shape: &[usize]) -> Vec<u8> {
        match self {
            Encoding::Float(d) => crate::encode_f32(values, *d),
            Encoding::Quantized {
                dtype,
                axis,
                scales,
                qmax,
            } => {
                let inner: usize = shape[axis + 1..].iter().product();
                let n_axis = shape[*axis];
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let s = scales[((start + i) / inner) % n_axis];
                        let q = v / s;
                        match dtype {
                            DType::I8 => {
                                let r = round_half_even(q).clamp(-qmax, *qmax);
                                (r as i8) as u8
                            }
                            DType::F8E4M3 => crate::fp8_e4m3_encode(q),
                            other => panic!("quantized encoding to {other:?}"),
                        }
                    })
                    .collect()
            }
            Encoding::Blocked { dtype, block, scales } => {
                assert_eq!(*dtype, DType::F8E4M3, "blocked encoding to {dtype:?}");
                let cols = shape[shape.len() - 1];
                let per_row = cols / block;
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let (r, c) = ((start + i) / cols, (start + i) % cols);
                        crate::fp8_e4m3_encode(v / scales[r * per_row + c / block])
                    })
                    .collect()
            }
        }
    }
}

fn round_half_even(x: f32) -> f32 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// The data of an initializer.
#[derive(Clone)]
pub enum TensorData {
    /// Already encoded little-endian bytes (constants, tables).
    Bytes(Vec<u8>),
    /// A weight: f32 values read on demand, then encoded.
    Deferred {
        source: Arc<dyn F32Source>,
        encoding: Encoding,
    },
}

impl std::fmt::Debug for TensorData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorData::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            TensorData::Deferred { encoding, .. } => write!(f, "Deferred({encoding:?})"),
        }
    }
}

/// A named constant tensor of the graph.
#[derive(Debug, Clone)]
pub struct Initializer {
    /// Name (a checkpoint key for weights).
    pub name: String,
    /// Stored element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Data.
    pub data: TensorData,
}

impl Initializer {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Whether this is a weight (deferred) rather than a derived constant.
    pub fn is_weight(&self) -> bool {
        matches!(self.data, TensorData::Deferred { .. })
    }
    /// Reads the f32 values of a weight (None for byte constants).
    pub fn read_f32(&self) -> Option<Result<Vec<f32>>> {
        match &self.data {
            TensorData::Deferred { source, .. } => Some(source.read()),
            TensorData::Bytes(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_encoding_equals_whole_tensor_encoding() {
        let shape = [6usize, 5];
        let values: Vec<f32> = (0..30).map(|i| (i as f32 - 13.0) * 0.37).collect();
        let scales = Arc::new(vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
        for enc in [
            Encoding::Float(DType::BF16),
            Encoding::Quantized {
                dtype: DType::I8,
                axis: 0,
                scales: scales.clone(),
                qmax: 127.0,
            },
            Encoding::Quantized {
                dtype: DType::F8E4M3,
                axis: 0,
                scales,
                qmax: 448.0,
            },
            Encoding::Blocked {
                dtype: DType::F8E4M3,
                block: 5,
                scales: Arc::new((1..=6).map(|i| i as f32 / 8.0).collect()),
            },
        ] {
            let whole = enc.encode(&values, &shape);
            let chunked: Vec<u8> = values
                .chunks(7)
                .enumerate()
                .flat_map(|(i, c)| enc.encode_at(c, i * 7, &shape))
                .collect();
            assert_eq!(chunked, whole, "{enc:?}");
        }
    }
}

//! The input/output contract of an exported class-conditional PixelDiT graph.
//!
//! The exporter declares exactly these tensors, the runtime checks its feeds against them and the Triton
//! writer derives `config.pbtxt` from them. Batch is the only dynamic axis (`-1`).

/// Element type of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoType {
    /// 32-bit float.
    F32,
    /// 64-bit signed integer.
    I64,
}

/// One graph input or output; `-1` marks the dynamic batch axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoTensor {
    /// Tensor name in the graph.
    pub name: &'static str,
    /// Element type.
    pub dtype: IoType,
    /// Shape; `-1` is the batch axis.
    pub dims: Vec<i64>,
    /// One line for docs and Triton.
    pub doc: &'static str,
}

/// Symbolic name of the batch axis in the ONNX graph.
pub const BATCH_DIM: &str = "batch";

/// Inputs `x`, `t`, `y` and output `v` of a C2I graph exported at `height x width`.
pub fn c2i_io(channels: usize, height: usize, width: usize) -> (Vec<IoTensor>, Vec<IoTensor>) {
    let img = vec![-1, channels as i64, height as i64, width as i64];
    (
        vec![
            IoTensor {
                name: "x",
                dtype: IoType::F32,
                dims: img.clone(),
                doc: "noisy image x_t in [-1,1] space",
            },
            IoTensor {
                name: "t",
                dtype: IoType::F32,
                dims: vec![-1],
                doc: "time in [0,1], 0 = noise, 1 = data",
            },
            IoTensor {
                name: "y",
                dtype: IoType::I64,
                dims: vec![-1],
                doc: "class label; num_classes = null class",
            },
        ],
        vec![IoTensor {
            name: "v",
            dtype: IoType::F32,
            dims: img,
            doc: "predicted velocity x0 - noise",
        }],
    )
}

//! The input/output contract of an exported PixelDiT graph (class-conditional: [`c2i_io`], text-to-image:
//! [`t2i_io`]).
//!
//! The exporter declares exactly these tensors, the runtime checks its feeds against them and the Triton
//! writer derives `config.pbtxt` from them. Batch is the dynamic axis (`-1`); a dynamic-size export also has
//! symbolic image height and width (`ModelMetadata::io`).

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

/// Symbolic name of the image height of a dynamic-size export (`x` and `v` axis 2).
pub const HEIGHT_DIM: &str = "height";

/// Symbolic name of the image width of a dynamic-size export (`x` and `v` axis 3).
pub const WIDTH_DIM: &str = "width";

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

/// Name of the text input of a T2I graph.
pub const TEXT_INPUT: &str = "text";

/// Inputs `x`, `t`, `text` and output `v` of a T2I graph exported at `height x width` with
/// `text_len` tokens of width `text_dim` (spec sections 4.2 and 5).
pub fn t2i_io(
    channels: usize,
    height: usize,
    width: usize,
    text_len: usize,
    text_dim: usize,
) -> (Vec<IoTensor>, Vec<IoTensor>) {
    let img = vec![-1, channels as i64, height as i64, width as i64];
    (
        vec![
            IoTensor {
                name: "x",
                dtype: IoType::F32,
                dims: img.clone(),
                doc: "noisy image x_sigma = (1-sigma)*x0 + sigma*noise in [-1,1] space",
            },
            IoTensor {
                name: "t",
                dtype: IoType::F32,
                dims: vec![-1],
                doc: "timestep sigma*1000 (1000 = noise, 0 = data)",
            },
            IoTensor {
                name: TEXT_INPUT,
                dtype: IoType::F32,
                dims: vec![-1, text_len as i64, text_dim as i64],
                doc: "text-encoder hidden states (Gemma-2-2B-IT last hidden state after the final norm)",
            },
        ],
        vec![IoTensor {
            name: "v",
            dtype: IoType::F32,
            dims: img,
            doc: "predicted flow velocity noise - x0",
        }],
    )
}

/// The graph inputs and outputs of a model config at a size (C2I or T2I).
pub fn model_io(cfg: &crate::ModelConfig, height: usize, width: usize) -> (Vec<IoTensor>, Vec<IoTensor>) {
    match &cfg.text {
        Some(t) if cfg.kind == crate::ModelKind::T2i => {
            t2i_io(cfg.in_channels, height, width, t.max_length, t.embed_dim)
        }
        _ => c2i_io(cfg.in_channels, height, width),
    }
}

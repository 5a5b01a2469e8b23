//! A small typed ONNX graph builder used by the PixelDiT exporter and quantizer.
//!
//! * [`Graph`] owns nodes, initializers, inputs and outputs. Each op is a method that returns a [`Value`]
//!   handle; dtypes and shapes are inferred and checked *when the node is wired*, and a failure names the
//!   node. Node names carry a dotted scope stack (`patch_blocks.3.attn/Gemm_0`), initializer names are given
//!   explicitly (the checkpoint keys, byte for byte).
//! * Weights are [`TensorData::Deferred`]: a source of f32 values plus an [`Encoding`], materialized one
//!   tensor at a time while writing, so that exporting a multi-GB model never holds two copies.
//! * [`write_model`] serializes deterministically (same graph, same bytes), with large tensors in an
//!   external-data file, through temporary files renamed at the end.
//!
//! ```
//! use pixeldit_graph::{Graph, DType, Dim};
//! let mut g = Graph::new(17);
//! let x = g.input("x", DType::F32, vec![Dim::Batch(1), Dim::Fixed(4)]).unwrap();
//! let y = g.scoped("block", |g| g.relu(x)).unwrap();
//! g.output("y", y).unwrap();
//! assert!(g.dump().contains("block/Relu_0"));
//! ```

mod dtype;
mod dump;
mod graph;
mod ops;
mod serialize;
mod tensor;

pub use dtype::{encode_f32, fp8_e4m3_decode, fp8_e4m3_encode, DType};
pub use graph::{Attr, Dim, Graph, Mono, Node, Symbol, Value, ValueInfo};
pub use serialize::{write_model, ExternalData, Progress, WriteOptions, WriteProgress, WriteReport};
pub use tensor::{Encoding, F32Source, Initializer, TensorData, VecSource};

/// Errors of the graph builder and serializer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// A node whose inputs do not fit together.
    #[error("node '{node}' ({op}): {reason}")]
    Shape {
        node: String,
        op: String,
        reason: String,
    },
    /// A name used twice.
    #[error("duplicate {what} name '{name}'")]
    DuplicateName { what: &'static str, name: String },
    /// A tensor source that failed to produce its values.
    #[error("tensor '{name}': {reason}")]
    Tensor { name: String, reason: String },
    /// A tensor source that failed with another error (the source), while writing tensor `name`.
    #[error("tensor '{name}'")]
    TensorSource {
        name: String,
        #[source]
        source: Box<GraphError>,
    },
    /// An I/O failure, with the path.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A model that cannot be written as requested.
    #[error("cannot write model: {0}")]
    Write(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, GraphError>;

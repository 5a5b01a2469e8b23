//! The exporter's error type.

use pixeldit_graph::GraphError;
use pixeldit_spec::SpecError;

/// Errors of the exporter library.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Invalid preset, size or option.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Graph construction or serialization failure (names the node or tensor).
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A checkpoint file that cannot be read or parsed.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    /// Keys the model needs that the checkpoint lacks.
    #[error("checkpoint {path}: {} missing key(s): {}", keys.len(), keys.join(", "))]
    MissingKeys { path: String, keys: Vec<String> },
    /// A tensor whose shape differs from the model's.
    #[error("checkpoint {path}: key '{key}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: String,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A combination of options that is not supported.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Result alias of the exporter.
pub type Result<T> = std::result::Result<T, ExportError>;

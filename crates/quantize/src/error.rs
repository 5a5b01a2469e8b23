//! The one error type of the crate.

use pixeldit_graph::GraphError;
use std::path::PathBuf;

/// Everything that can go wrong while rewriting a graph or reading calibration statistics.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantizeError {
    /// Building or writing the graph failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// A setting that cannot be used (bad glob, empty class list, precision without a quantizer pass, ...).
    #[error("invalid quantization setting: {0}")]
    Invalid(String),
    /// A selected layer has no calibration statistics.
    #[error("no calibration statistics for layer '{0}' (was the calibration run on another graph?)")]
    MissingStats(String),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, QuantizeError>;

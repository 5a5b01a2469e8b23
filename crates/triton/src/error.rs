//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong while writing, validating or talking to Triton. Each variant names the file,
/// model or server involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TritonError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `config.pbtxt` that Triton's `ModelConfig` schema rejects (line and column from the text-format parser).
    #[error("{}: not a valid Triton ModelConfig: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A repository or model directory that breaks Triton's rules (`reason` lists every problem, one per line).
    #[error("Triton repository {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// Options that cannot be used together or a name Triton cannot serve.
    #[error("{0}")]
    Options(String),
    /// A request to a server failed or the served model does not fit.
    #[error("Triton server {url}: {message}")]
    Server { url: String, message: String },
    /// A runtime call failed (an atomic write, reading an exported text encoder or its tokenizer).
    #[error(transparent)]
    Runtime(#[from] pixeldit_runtime::RuntimeError),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, TritonError>;

impl TritonError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TritonError::Io {
            path: path.into(),
            source,
        }
    }
}

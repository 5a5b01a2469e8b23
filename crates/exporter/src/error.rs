//! The exporter's error type.

use pixeldit_graph::GraphError;
use pixeldit_spec::SpecError;

/// Errors of the exporter library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// A checkpoint file that cannot be opened, mapped or decoded (`what` failed; the cause is the source).
    #[error("checkpoint {path}: {what}")]
    CheckpointFile {
        path: String,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// An invalid Gemma-2 text encoder configuration (`config.json` or preset), or an unknown preset name.
    #[error("Gemma-2 config {config}: {reason}")]
    GemmaConfig { config: String, reason: String },
    /// A Gemma-2 `config.json` that cannot be read or parsed (`what` failed; the cause is the source).
    #[error("Gemma-2 config {config}: {what}")]
    GemmaConfigFile {
        config: String,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A LoRA adapter that cannot be merged (lists every key that does not fit the checkpoint).
    #[error("LoRA {path}: {reason}")]
    Lora { path: String, reason: String },
    /// A combination of options that is not supported.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

/// Result alias of the exporter.
pub type Result<T> = std::result::Result<T, ExportError>;

impl ExportError {
    /// A [`ExportError::CheckpointFile`] for `path`.
    pub(crate) fn checkpoint_file(
        path: &std::path::Path,
        what: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ExportError::CheckpointFile {
            path: path.display().to_string(),
            what,
            source: source.into(),
        }
    }
}

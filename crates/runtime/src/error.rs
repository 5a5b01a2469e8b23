//! The one error type of the library.

use std::path::PathBuf;

/// Everything that can go wrong in `pixeldit-runtime`. Each variant names the file, key, op or provider involved.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The model file does not exist.
    #[error("model file {} does not exist", path.display())]
    ModelNotFound { path: PathBuf },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a parseable ONNX `ModelProto`.
    #[error("{} is not a valid ONNX model: {reason}", path.display())]
    InvalidModel { path: PathBuf, reason: String },
    /// The model has no PixelDiT metadata (`metadata_props` key [`pixeldit_spec::META_KEY`]).
    #[error(
        "{} has no PixelDiT metadata: metadata_props key '{key}' is missing (was it written by pixeldit-export?)",
        path.display()
    )]
    MissingMetadata { path: PathBuf, key: &'static str },
    /// The metadata JSON does not parse or has an unsupported format version.
    #[error("{}: invalid PixelDiT metadata under key '{key}': {reason}", path.display())]
    BadMetadata {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    /// A class label outside `0..num_classes`.
    #[error("class {class} is out of range: the model has {num_classes} classes (valid labels 0..={max})", max = num_classes - 1)]
    ClassOutOfRange { class: i64, num_classes: usize },
    /// A `.npy` file that cannot be used.
    #[error("{}: {reason}", path.display())]
    Npy { path: PathBuf, reason: String },
    /// Given noise whose shape does not match `[K, 3, H, W]`.
    #[error("noise file {} has shape {found:?}, expected {expected:?} (f32 [K,3,H,W] for K images)", path.display())]
    NoiseShape {
        path: PathBuf,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// No ONNX Runtime shared library was found.
    #[error("ONNX Runtime library not found ({tried}); pass --ort-lib or set ORT_DYLIB_PATH")]
    OrtLibraryNotFound { tried: String },
    /// The ONNX Runtime shared library exists but could not be loaded.
    #[error("cannot load the ONNX Runtime library: {message}")]
    OrtLoad { message: String },
    /// An ONNX Runtime call failed.
    #[error("ONNX Runtime ({provider}): {message}")]
    Ort { provider: String, message: String },
    /// An explicitly requested execution provider or device cannot be used.
    #[error("{provider} was requested but cannot be used: {reason}")]
    ProviderUnavailable { provider: String, reason: String },
    /// The model contains an op the backend has no kernel for.
    #[error("backend {backend} cannot run op '{op}' (domain '{domain}') of node '{node}'")]
    UnsupportedOp {
        backend: &'static str,
        op: String,
        domain: String,
        node: String,
    },
    /// A tract call failed.
    #[error("tract: {message}")]
    Tract { message: String },
    /// `--backend auto` found nothing that could load the model.
    #[error("no backend could load {}:\n{attempts}", path.display())]
    NoBackend { path: PathBuf, attempts: String },
    /// A backend that was not compiled in (cargo feature disabled).
    #[error("backend '{0}' is not compiled into this build (cargo feature '{0}')")]
    FeatureDisabled(&'static str),
    /// An invalid option value or combination.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Tensor shapes that do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A backend implemented outside this crate (a Triton server, a callback into Triton) failed; `source` is that
    /// backend's own error and names the server or model.
    #[error("{source}")]
    Backend {
        /// The backend's name ([`crate::Backend::name`]).
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A `tokenizer.json` that cannot be loaded or used for the prompt recipe (names the file and what is wrong).
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer { path: PathBuf, reason: String },
    /// A text encoder that does not fit the tokenizer or the text-to-image model (names the file and the
    /// mismatch).
    #[error("text encoder {}: {reason}", path.display())]
    TextEncoder { path: PathBuf, reason: String },
    /// PNG encoding failed.
    #[error("{}: PNG encoding failed: {message}", path.display())]
    Png { path: PathBuf, message: String },
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, RuntimeError>;

impl RuntimeError {
    /// Whether the caller's input is at fault (an invalid option or request value, a class label out of range, a
    /// noise or `.npy` file of the wrong shape or content): a server answers these with "bad request" (HTTP 400),
    /// everything else is a failure of the model, backend or system.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            RuntimeError::InvalidArgument(_)
                | RuntimeError::ClassOutOfRange { .. }
                | RuntimeError::NoiseShape { .. }
                | RuntimeError::Npy { .. }
        )
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.into(),
            source,
        }
    }
}

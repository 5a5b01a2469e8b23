//! The one error type of the library.

use std::path::PathBuf;

/// A boxed error from another library (ONNX Runtime, tract, tokenizers, ...), kept as the source of a variant.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in `pixeldit-runtime`. Each variant names the file, key, op or provider involved;
/// the error of the library underneath, if any, is its [`std::error::Error::source`] (print the chain, e.g. with
/// anyhow's `{:#}`, to see it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// The file is not a parseable ONNX `ModelProto` (with the parser's error as the source, when there is one).
    #[error("{} is not a valid ONNX model: {reason}", path.display())]
    InvalidModel {
        path: PathBuf,
        reason: String,
        #[source]
        source: Option<BoxError>,
    },
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
        #[source]
        source: Option<pixeldit_spec::SpecError>,
    },
    /// A class label outside `0..num_classes`.
    #[error("class {class} is out of range: the model has {num_classes} classes (valid labels 0..={max})", max = num_classes - 1)]
    ClassOutOfRange { class: i64, num_classes: usize },
    /// A `.npy` (or tensor) file that cannot be used (with the underlying error as the source, when there is one).
    #[error("{}: {reason}", path.display())]
    Npy {
        path: PathBuf,
        reason: String,
        #[source]
        source: Option<BoxError>,
    },
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
    /// The ONNX Runtime shared library exists but could not be loaded (`ort::LoadDynamicError` as the source).
    #[error("cannot load the ONNX Runtime library")]
    OrtLoad {
        #[source]
        source: BoxError,
    },
    /// An ONNX Runtime call failed (`ort::Error` as the source).
    #[error("ONNX Runtime ({provider})")]
    Ort {
        provider: String,
        #[source]
        source: BoxError,
    },
    /// An explicitly requested execution provider or device cannot be used (with the error that showed it as the
    /// source, when there is one).
    #[error("{provider} was requested but cannot be used: {reason}")]
    ProviderUnavailable {
        provider: String,
        reason: String,
        #[source]
        source: Option<Box<RuntimeError>>,
    },
    /// The model contains an op the backend has no kernel for.
    #[error("backend {backend} cannot run op '{op}' (domain '{domain}') of node '{node}'")]
    UnsupportedOp {
        backend: &'static str,
        op: String,
        domain: String,
        node: String,
    },
    /// No OpenVINO C library (`libopenvino_c.so*`) was found.
    #[error("OpenVINO library not found ({tried}); run scripts/setup.sh, pass --openvino-lib or set PIXELDIT_OPENVINO_LIB")]
    OpenVinoLibraryNotFound { tried: String },
    /// The OpenVINO library exists but could not be loaded.
    #[error("cannot load the OpenVINO library {}: {reason}", path.display())]
    OpenVinoLoad { path: PathBuf, reason: String },
    /// A custom-op node in a model given to OpenVINO, which has none of the project's kernels.
    #[error(
        "backend openvino cannot run op '{op}' (domain '{domain}') of node '{node}': OpenVINO runs standard ONNX \
         only; export with --attention decomposed (or onnx23) and --pixel-ops standard (the default)"
    )]
    OpenVinoCustomOp {
        op: String,
        domain: String,
        node: String,
    },
    /// A model that OpenVINO loads but is known to compute wrongly.
    #[error("backend openvino refuses {}: {reason}", path.display())]
    OpenVinoUnsupported { path: PathBuf, reason: String },
    /// An OpenVINO call failed (`what` says which; `openvino::InferenceError` as the source).
    #[error("OpenVINO: {what}")]
    OpenVino {
        what: String,
        #[source]
        source: BoxError,
    },
    /// A tract call failed (tract's `anyhow::Error`, with its context chain, as the source).
    #[error("tract")]
    Tract {
        #[source]
        source: BoxError,
    },
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
    /// An array that cannot take the shape it is given (`what` names it; `ndarray::ShapeError` as the source).
    #[error("shape mismatch: {what}")]
    ArrayShape {
        what: String,
        #[source]
        source: ndarray::ShapeError,
    },
    /// A backend implemented outside this crate (a Triton server, a callback into Triton) failed; `source` is that
    /// backend's own error and names the server or model.
    #[error("{backend} backend")]
    Backend {
        /// The backend's name ([`crate::Backend::name`]).
        backend: &'static str,
        #[source]
        source: BoxError,
    },
    /// A `tokenizer.json` that cannot be loaded or used for the prompt recipe (names the file and what is wrong;
    /// the tokenizers error as the source, when there is one).
    #[error("tokenizer {}: {reason}", path.display())]
    Tokenizer {
        path: PathBuf,
        reason: String,
        #[source]
        source: Option<BoxError>,
    },
    /// A text encoder that does not fit the tokenizer or the text-to-image model (names the file and the
    /// mismatch).
    #[error("text encoder {}: {reason}", path.display())]
    TextEncoder { path: PathBuf, reason: String },
    /// PNG encoding failed (`png::EncodingError` as the source).
    #[error("{}: PNG encoding failed", path.display())]
    Png {
        path: PathBuf,
        #[source]
        source: png::EncodingError,
    },
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

    /// An [`RuntimeError::InvalidModel`] without a source.
    pub(crate) fn invalid_model(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        RuntimeError::InvalidModel {
            path: path.into(),
            reason: reason.into(),
            source: None,
        }
    }

    /// This error and its sources on one line, `outer: inner: ...` (as anyhow's `{:#}` prints them).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        s
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.into(),
            source,
        }
    }
}

//! How a pipeline is set up: the `pixeldit.*` parameters of the pipeline's Triton model configuration, which
//! `model.py` hands over unread ([`PipelineConfig::from_model_config`]).
//!
//! The keys mirror `pixeldit_triton::config` (which writes them; its tests check that a written configuration is
//! read here) and [`pixeldit_spec::META_KEY`].

use crate::{PipelineError, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Parameter naming the denoiser model that the pipeline calls.
pub const DENOISER_KEY: &str = "pixeldit.denoiser";
/// Parameter with the denoiser's `max_batch_size` (batch-only inputs are sent as `[B, 1]` when > 0).
pub const DENOISER_MBS_KEY: &str = "pixeldit.denoiser_max_batch_size";
/// Parameter naming the text encoder model (text-to-image pipelines).
pub const TEXT_ENCODER_KEY: &str = "pixeldit.text_encoder_model";
/// Parameter with the text encoder's metadata JSON (text-to-image pipelines).
pub const TEXT_ENCODER_META_PARAM: &str = "pixeldit.text_encoder_metadata";
/// Parameter naming the tokenizer file in the version folder (text-to-image pipelines).
pub const TOKENIZER_KEY: &str = "pixeldit.tokenizer";
/// Parameter naming the pixel-level model of the patch cache (absent: cached requests are refused).
pub const PIXEL_MODEL_KEY: &str = "pixeldit.pixel_model";
/// The tokenizer's file name when [`TOKENIZER_KEY`] is absent.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// How a pipeline is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// The denoiser's `pixeldit.metadata` JSON.
    pub metadata: String,
    /// The denoiser's Triton model name.
    pub denoiser: String,
    /// The denoiser's `max_batch_size`: when > 0, its batch-only inputs (`t`, `y`) are sent as `[B, 1]`, the shape
    /// its configuration declares.
    pub denoiser_max_batch_size: usize,
    /// Text-to-image: the text encoder's Triton model name.
    pub text_encoder: Option<String>,
    /// Text-to-image: the encoder's `pixeldit.text_encoder` metadata JSON.
    pub text_encoder_metadata: Option<String>,
    /// Text-to-image: path of `tokenizer.json`.
    pub tokenizer: Option<PathBuf>,
    /// The pixel-level model's Triton name (`<denoiser>_pixel`), when the repository has one.
    pub pixel_model: Option<String>,
}

/// The parts of Triton's model configuration (JSON, as the python backend gets it) read here.
#[derive(Deserialize)]
struct ModelConfigJson {
    #[serde(default)]
    parameters: BTreeMap<String, Parameter>,
}

#[derive(Deserialize)]
struct Parameter {
    string_value: String,
}

impl PipelineConfig {
    /// Reads the `pixeldit.*` parameters of a pipeline's Triton model configuration (`args["model_config"]` of
    /// the python backend); `version_dir` is the folder of `model.py` (where the tokenizer is).
    pub fn from_model_config(model_config_json: &str, version_dir: &Path) -> Result<PipelineConfig> {
        let cfg: ModelConfigJson = serde_json::from_str(model_config_json).map_err(|e| {
            PipelineError::Config(format!(
                "not a Triton model configuration with string parameters: {e}"
            ))
        })?;
        let get = |key: &str| cfg.parameters.get(key).map(|p| p.string_value.clone());
        let need = |key: &str| {
            get(key).ok_or_else(|| PipelineError::Config(format!("parameter '{key}' is missing")))
        };
        let mbs = match get(DENOISER_MBS_KEY) {
            None => 0,
            Some(v) => v.trim().parse().map_err(|_| {
                PipelineError::Config(format!(
                    "parameter '{DENOISER_MBS_KEY}' is '{v}', not a non-negative integer"
                ))
            })?,
        };
        let text_encoder = get(TEXT_ENCODER_KEY);
        let (text_encoder_metadata, tokenizer) = match &text_encoder {
            None => (None, None),
            Some(_) => (
                Some(need(TEXT_ENCODER_META_PARAM)?),
                Some(version_dir.join(get(TOKENIZER_KEY).unwrap_or_else(|| TOKENIZER_FILE.into()))),
            ),
        };
        Ok(PipelineConfig {
            metadata: need(pixeldit_spec::META_KEY)?,
            denoiser: need(DENOISER_KEY)?,
            denoiser_max_batch_size: mbs,
            text_encoder,
            text_encoder_metadata,
            tokenizer,
            pixel_model: get(PIXEL_MODEL_KEY),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parameters() {
        let json = serde_json::json!({
            "name": "m_pipeline",
            "backend": "python",
            "parameters": {
                "pixeldit.metadata": {"string_value": "{}"},
                "pixeldit.denoiser": {"string_value": "m"},
                "pixeldit.denoiser_max_batch_size": {"string_value": "8"},
                "pixeldit.library": {"string_value": "lib.so"},
            }
        })
        .to_string();
        let c = PipelineConfig::from_model_config(&json, Path::new("/r/m/1")).unwrap();
        assert_eq!((c.denoiser.as_str(), c.denoiser_max_batch_size), ("m", 8));
        assert_eq!(c.tokenizer, None);
        let json = json.replace("\"pixeldit.denoiser\"", "\"other\"");
        let e = PipelineConfig::from_model_config(&json, Path::new(".")).unwrap_err();
        assert!(
            e.to_string().contains("parameter 'pixeldit.denoiser' is missing"),
            "{e}"
        );
    }
}

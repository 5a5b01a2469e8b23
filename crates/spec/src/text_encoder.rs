//! The contract of an exported text encoder (Gemma-2 for PixelDiT-T2I): its tensor names and the metadata that
//! `pixeldit-run --prompt` checks against the tokenizer (vocabulary, sequence length) and the T2I model (text
//! width) before running anything.

use serde::{Deserialize, Serialize};

use crate::{Precision, Result};

/// `metadata_props` key of the text-encoder description (JSON of [`TextEncoderMetadata`]).
pub const TEXT_ENCODER_META_KEY: &str = "pixeldit.text_encoder";

/// Version of [`TextEncoderMetadata`] written by this exporter.
pub const TEXT_ENCODER_FORMAT_VERSION: u32 = 1;

/// Token ids input, int64 `[B, S]`.
pub const INPUT_IDS: &str = "input_ids";
/// Tokenizer attention mask input (1 = token, 0 = padding), int64 `[B, S]`.
pub const ATTENTION_MASK: &str = "attention_mask";
/// Output: the last hidden state after the final norm, f32 `[B, S, D]`, padding positions included.
pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";

/// What an exported text encoder is: enough to check it against a tokenizer and a T2I model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderMetadata {
    /// [`TEXT_ENCODER_FORMAT_VERSION`] at export time.
    pub format_version: u32,
    /// `gemma2`.
    pub architecture: String,
    /// Preset or config name.
    pub name: String,
    /// Rows of the embedding table: the tokenizer's vocabulary must have exactly this many tokens.
    pub vocab_size: usize,
    /// Width D of the hidden states: must equal the T2I model's `text.embed_dim`.
    pub hidden_size: usize,
    /// Fixed sequence length S of the graph (the prompt recipe's `len(tokenize(CHI)) + 298`).
    pub sequence_length: usize,
    /// Window of the sliding-window layers. Negative prompts (300 tokens in the official recipe) are padded to
    /// `sequence_length`; that gives the recipe's hidden states exactly when the window is at least 300 (4096 in
    /// Gemma-2-2B): with a smaller window a padded query can see no valid key, and transformers then averages over
    /// all S keys, which depends on S.
    pub sliding_window: usize,
    /// Storage and compute type of the linear layers and the embedding table (norms and softmax stay f32).
    pub precision: Precision,
    /// Where the weights came from (checkpoint path or random seed).
    pub weights_source: String,
    /// SHA-256 of the weights as written.
    pub weights_sha256: String,
    /// Version of the exporter that wrote the file.
    pub exporter_version: String,
}

impl TextEncoderMetadata {
    /// Parses the metadata JSON.
    pub fn from_json(json: &str) -> Result<Self> {
        crate::parse_json("text encoder metadata", json)
    }

    /// Serializes to compact, deterministic JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metadata serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_rejects_missing_fields() {
        let m = TextEncoderMetadata {
            format_version: TEXT_ENCODER_FORMAT_VERSION,
            architecture: "gemma2".into(),
            name: "gemma-tiny".into(),
            vocab_size: 656,
            hidden_size: 64,
            sequence_length: 579,
            sliding_window: 12,
            precision: Precision::Fp16,
            weights_source: "random-init(seed=0)".into(),
            weights_sha256: "ab".into(),
            exporter_version: "0.1.0".into(),
        };
        assert_eq!(TextEncoderMetadata::from_json(&m.to_json()).unwrap(), m);
        let e = TextEncoderMetadata::from_json(r#"{"format_version": 1}"#).unwrap_err();
        assert!(e.to_string().contains("text encoder metadata"), "{e}");
    }
}

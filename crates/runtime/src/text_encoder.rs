//! The text encoder of a text-to-image model (Gemma-2, exported by `pixeldit-export --text-encoder`) with its
//! tokenizer: texts in, the `[K, 300, D]` text embeddings the T2I denoiser takes out, by the official recipe
//! ([`crate::prompt`]).
//!
//! [`TextEncoder::new`] checks, before anything runs, that the tokenizer's vocabulary is the encoder's embedding
//! table and that the encoder was exported for the recipe's prompt length; [`TextEncoder::check_model`] checks the
//! hidden size against the T2I model's text width.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, Axis};
use pixeldit_spec::text_encoder::{
    TextEncoderMetadata, ATTENTION_MASK, INPUT_IDS, LAST_HIDDEN_STATE, TEXT_ENCODER_META_KEY,
};
use pixeldit_spec::TextConfig;

use crate::backend::Backend;
use crate::model::ModelInfo;
use crate::prompt::{PromptKind, PromptTokenizer, Truncation, TEXT_TOKENS};
use crate::tensor::TensorRef;
use crate::{Result, RuntimeError};

/// Distinct texts whose embeddings [`TextEncoder`] keeps (a long-running server must not grow without bound).
const CACHE_LIMIT: usize = 64;

/// Reads the text-encoder metadata of an exported encoder file.
pub fn read_metadata(path: &Path) -> Result<TextEncoderMetadata> {
    let info = ModelInfo::read(path)?;
    let json = info
        .metadata_prop(TEXT_ENCODER_META_KEY)
        .ok_or_else(|| RuntimeError::MissingMetadata {
            path: path.to_path_buf(),
            key: TEXT_ENCODER_META_KEY,
        })?;
    TextEncoderMetadata::from_json(json).map_err(|e| RuntimeError::BadMetadata {
        path: path.to_path_buf(),
        key: TEXT_ENCODER_META_KEY,
        reason: "it does not parse".into(),
        source: Some(e),
    })
}

/// Text embeddings of several texts, with what the recipe cut.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `[K, 300, D]` f32, one row per text.
    pub embeddings: Array3<f32>,
    /// Per text: `Some` when it was truncated to the recipe's limit.
    pub truncated: Vec<Option<Truncation>>,
}

/// A loaded text encoder and its tokenizer.
pub struct TextEncoder {
    backend: Box<dyn Backend>,
    meta: TextEncoderMetadata,
    tokenizer: PromptTokenizer,
    path: PathBuf,
    cache: HashMap<(PromptKind, String), (Array2<f32>, Option<Truncation>)>,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder")
            .field("path", &self.path)
            .field("backend", &self.backend.name())
            .field("meta", &self.meta)
            .field("tokenizer", &self.tokenizer)
            .finish()
    }
}

impl TextEncoder {
    /// Wraps a loaded encoder (`backend` runs the file at `path`, whose metadata is `meta`) and checks it against
    /// the tokenizer (same vocabulary size as the embedding table), its tensor names and that it takes at least the
    /// 300 tokens of a negative prompt. Prompts also need [`Self::check_prompt_length`].
    pub fn new(
        backend: Box<dyn Backend>,
        path: &Path,
        meta: TextEncoderMetadata,
        tokenizer: PromptTokenizer,
    ) -> Result<Self> {
        let err = |reason: String| RuntimeError::TextEncoder {
            path: path.to_path_buf(),
            reason,
        };
        if tokenizer.vocab_size() != meta.vocab_size {
            return Err(err(format!(
                "its embedding table has {} rows but the tokenizer {} has {} tokens: they are not the same model's",
                meta.vocab_size,
                tokenizer.path().display(),
                tokenizer.vocab_size()
            )));
        }
        if meta.sequence_length < TEXT_TOKENS {
            return Err(err(format!(
                "exported for {} tokens; the recipe needs at least {TEXT_TOKENS}",
                meta.sequence_length
            )));
        }
        for (names, want, what) in [
            (backend.input_names(), vec![INPUT_IDS, ATTENTION_MASK], "inputs"),
            (backend.output_names(), vec![LAST_HIDDEN_STATE], "outputs"),
        ] {
            if names != want {
                return Err(err(format!(
                    "graph {what} are [{}], expected [{}]",
                    names.join(", "),
                    want.join(", ")
                )));
            }
        }
        Ok(TextEncoder {
            backend,
            meta,
            tokenizer,
            path: path.to_path_buf(),
            cache: HashMap::new(),
        })
    }

    /// Checks that the encoder was exported for the prompt recipe's length, `len(tokenize(CHI)) + 298` tokens of
    /// this tokenizer ([`PromptKind::Negative`] texts only need 300).
    pub fn check_prompt_length(&self) -> Result<()> {
        let needed = self.tokenizer.sequence_len(PromptKind::Prompt);
        if self.meta.sequence_length == needed {
            return Ok(());
        }
        let tok = self.tokenizer.path().display();
        Err(RuntimeError::TextEncoder {
            path: self.path.clone(),
            reason: format!(
                "exported for {} tokens, but the prompt recipe with tokenizer {tok} needs {needed} \
                 (len(tokenize(CHI)) = {} + 300 - 2): re-export it with `pixeldit-export --text-encoder ... \
                 --tokenizer {tok}`",
                self.meta.sequence_length,
                self.tokenizer.chi_tokens(),
            ),
        })
    }

    /// Checks the hidden size against a T2I model's text input (`[300, embed_dim]`).
    pub fn check_model(&self, text: &TextConfig, model: &str) -> Result<()> {
        let err = |reason: String| RuntimeError::TextEncoder {
            path: self.path.clone(),
            reason,
        };
        if text.embed_dim != self.meta.hidden_size {
            return Err(err(format!(
                "hidden size {} does not match the text width {} of {model}",
                self.meta.hidden_size, text.embed_dim
            )));
        }
        if text.max_length != TEXT_TOKENS {
            return Err(err(format!(
                "{model} takes {} text tokens; the official prompt recipe produces {TEXT_TOKENS} (give it \
                 --text-embeddings instead)",
                text.max_length
            )));
        }
        Ok(())
    }

    /// The encoder's metadata.
    pub fn metadata(&self) -> &TextEncoderMetadata {
        &self.meta
    }

    /// The backend running the encoder.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Swaps the backend (e.g. a per-request connection to a server); returns the previous one. The new backend
    /// must run the same encoder: its tensor names are checked.
    pub fn replace_backend(&mut self, backend: Box<dyn Backend>) -> Result<Box<dyn Backend>> {
        if backend.input_names() != [INPUT_IDS, ATTENTION_MASK]
            || backend.output_names() != [LAST_HIDDEN_STATE]
        {
            return Err(RuntimeError::TextEncoder {
                path: self.path.clone(),
                reason: "the replacement backend does not have the encoder's inputs and output".into(),
            });
        }
        Ok(std::mem::replace(&mut self.backend, backend))
    }

    /// Whether negative prompts, padded from 300 tokens to the encoder's sequence length, get exactly the recipe's
    /// hidden states (see [`TextEncoderMetadata::sliding_window`]).
    pub fn negative_is_exact(&self) -> bool {
        self.meta.sliding_window >= TEXT_TOKENS || self.meta.sequence_length == TEXT_TOKENS
    }

    /// The `[K, 300, D]` embeddings of `texts` by the recipe of `kind` (identical texts are encoded once).
    pub fn encode(&mut self, kind: PromptKind, texts: &[String]) -> Result<Encoded> {
        let d = self.meta.hidden_size;
        let mut embeddings = Array3::<f32>::zeros((texts.len(), TEXT_TOKENS, d));
        let mut truncated = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let key = (kind, text.clone());
            if !self.cache.contains_key(&key) {
                if self.cache.len() >= CACHE_LIMIT {
                    self.cache.clear();
                }
                let one = self.encode_one(kind, text)?;
                self.cache.insert(key.clone(), one);
            }
            let (rows, cut) = &self.cache[&key];
            embeddings.index_axis_mut(Axis(0), i).assign(rows);
            truncated.push(cut.clone());
        }
        Ok(Encoded {
            embeddings,
            truncated,
        })
    }

    fn encode_one(&mut self, kind: PromptKind, text: &str) -> Result<(Array2<f32>, Option<Truncation>)> {
        if kind == PromptKind::Prompt {
            self.check_prompt_length()?;
        }
        let mut input = self.tokenizer.encode_for(kind, text)?;
        let s = self.meta.sequence_length;
        input.pad_to(s, self.tokenizer.pad_id());
        if input.len() != s {
            return Err(RuntimeError::TextEncoder {
                path: self.path.clone(),
                reason: format!(
                    "the recipe gives {} tokens for a {kind:?} but the encoder takes {s}",
                    input.len()
                ),
            });
        }
        let ids = ndarray::ArrayView2::from_shape((1, s), &input.input_ids).expect("length checked");
        let mask = ndarray::ArrayView2::from_shape((1, s), &input.attention_mask).expect("length checked");
        let out = self.backend.run(
            &[
                (INPUT_IDS, TensorRef::from(ids)),
                (ATTENTION_MASK, TensorRef::from(mask)),
            ],
            &[LAST_HIDDEN_STATE],
        )?;
        let hidden = out.into_iter().next().expect("one output requested");
        let d = self.meta.hidden_size;
        if hidden.shape() != [1, s, d] {
            return Err(RuntimeError::Shape(format!(
                "{}: {LAST_HIDDEN_STATE} has shape {:?}, expected [1, {s}, {d}]",
                self.path.display(),
                hidden.shape()
            )));
        }
        let flat: Vec<f32> = hidden.iter().copied().collect();
        let rows = input.select(&flat, d)?;
        let rows = Array2::from_shape_vec((TEXT_TOKENS, d), rows).expect("select gives 300 rows");
        Ok((rows, input.truncated))
    }
}

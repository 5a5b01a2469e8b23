//! Text-to-image prompts: the Gemma-2 tokenizer (`tokenizer.json`) and the official prompt recipe.
//!
//! The official pipeline (upstream `t2i/inference.py`, stage-3 config; README "Text-to-image") feeds the Gemma-2
//! decoder with
//! * a **prompt**: [`CHI_PROMPT`] followed by the prompt (surrounding whitespace stripped), tokenized with `<bos>`
//!   first, truncated and right-padded to `len(tokenize(CHI_PROMPT)) + 300 - 2` tokens; of the encoder's last hidden
//!   state, position 0 and the last 299 positions form the `[300, D]` text embeddings;
//! * a **negative prompt**: the text alone, truncated and right-padded to 300 tokens, all of them kept.
//!
//! [`PromptTokenizer`] turns a text into the encoder's `input_ids` / `attention_mask` plus the positions to keep
//! ([`EncoderInput`]); it reports truncation instead of printing it.

use std::path::{Path, PathBuf};

use crate::{Result, RuntimeError};

/// Number of text tokens the text-to-image model consumes.
pub const TEXT_TOKENS: usize = 300;

/// The "CHI" system prompt of the official stage-3 config (8 lines joined by `\n`, ending in `User Prompt: `).
pub const CHI_PROMPT: &str = concat!(
    "Given a user prompt, generate an \"Enhanced prompt\" that provides detailed visual descriptions suitable for ",
    "image generation. Evaluate the level of detail in the user prompt:\n",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial ",
    "relationships to create vivid and concrete scenes.\n",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without ",
    "overcomplicating.\n",
    "Here are examples of how to transform or refine prompts:\n",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping ",
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.\n",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street ",
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass ",
    "skyscrapers.\n",
    "Please generate only the enhanced description for the prompt below and avoid including any additional ",
    "commentary or evaluations:\n",
    "User Prompt: ",
);

/// The padding token of Gemma's tokenizer (id 0 in `gemma-2-2b-it`).
pub const PAD_TOKEN: &str = "<pad>";

/// Which half of classifier-free guidance a text is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PromptKind {
    /// The user prompt: CHI system prompt prepended, `len(tokenize(CHI)) + 298` tokens, 300 positions kept.
    Prompt,
    /// The negative prompt: no CHI, 300 tokens, all kept.
    Negative,
}

/// A text that was longer than the recipe's token limit and lost its tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// Tokens of the full text (with `<bos>`, and with the CHI prefix for a prompt).
    pub tokens: usize,
    /// Tokens kept.
    pub limit: usize,
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "truncated to the official limit of {} tokens ({} tokens dropped)",
            self.limit,
            self.tokens - self.limit
        )
    }
}

/// What the text encoder receives for one text, and which of its output positions become the text embeddings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncoderInput {
    /// Token ids, `<bos>` first, right-padded with [`PAD_TOKEN`]; length [`Self::len`].
    pub input_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding (same length).
    pub attention_mask: Vec<i64>,
    /// The [`TEXT_TOKENS`] positions of the encoder output that form the `[300, D]` embeddings, in order.
    pub keep: Vec<usize>,
    /// `Some` when the text was cut to fit.
    pub truncated: Option<Truncation>,
}

impl EncoderInput {
    /// Sequence length fed to the encoder.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Always false (every recipe input holds at least `<bos>`); present for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Right-pads the sequence to `len` tokens with `pad_id` (mask 0); the kept positions stay where they are.
    /// Used to run a 300-token negative prompt through an encoder exported for the longer prompt length.
    pub fn pad_to(&mut self, len: usize, pad_id: i64) {
        if len > self.len() {
            self.input_ids.resize(len, pad_id);
            self.attention_mask.resize(len, 0);
        }
    }

    /// Gathers the kept rows of an encoder output `[len, width]` (row-major) into `[300, width]`.
    pub fn select<T: Copy>(&self, hidden: &[T], width: usize) -> Result<Vec<T>> {
        if hidden.len() != self.len() * width {
            return Err(RuntimeError::Shape(format!(
                "text encoder output has {} values, expected [{}, {width}]",
                hidden.len(),
                self.len()
            )));
        }
        Ok(self
            .keep
            .iter()
            .flat_map(|&p| hidden[p * width..(p + 1) * width].iter().copied())
            .collect())
    }
}

/// A Hugging Face `tokenizer.json` (Gemma-2's) with the official prompt recipe.
pub struct PromptTokenizer {
    tokenizer: tokenizers::Tokenizer,
    path: PathBuf,
    pad_id: u32,
    chi_tokens: usize,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .field("chi_tokens", &self.chi_tokens)
            .finish()
    }
}

impl PromptTokenizer {
    /// Loads `tokenizer.json`. Any truncation or padding configured in the file is switched off: the recipe applies
    /// its own. The vocabulary must contain [`PAD_TOKEN`].
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
        let mut tokenizer =
            tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| RuntimeError::Tokenizer {
                path: path.to_path_buf(),
                reason: "not a Hugging Face tokenizer.json".into(),
                source: Some(e),
            })?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| RuntimeError::Tokenizer {
                path: path.to_path_buf(),
                reason: "cannot switch off its truncation".into(),
                source: Some(e),
            })?
            .with_padding(None);
        let pad_id = tokenizer
            .token_to_id(PAD_TOKEN)
            .ok_or_else(|| RuntimeError::Tokenizer {
                path: path.to_path_buf(),
                reason: format!(
                    "the vocabulary has no padding token '{PAD_TOKEN}' (is this Gemma's tokenizer?)"
                ),
                source: None,
            })?;
        let mut this = PromptTokenizer {
            tokenizer,
            path: path.to_path_buf(),
            pad_id,
            chi_tokens: 0,
        };
        this.chi_tokens = this.encode(CHI_PROMPT)?.len();
        Ok(this)
    }

    /// Vocabulary size including added tokens; must not exceed the encoder's embedding rows.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Id of [`PAD_TOKEN`].
    pub fn pad_id(&self) -> i64 {
        i64::from(self.pad_id)
    }

    /// The file the tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokens of [`CHI_PROMPT`] alone, `<bos>` included (`len(tokenize(chi))` of the recipe).
    pub fn chi_tokens(&self) -> usize {
        self.chi_tokens
    }

    /// Sequence length the encoder sees for `kind`.
    pub fn sequence_len(&self, kind: PromptKind) -> usize {
        match kind {
            PromptKind::Prompt => self.chi_tokens + TEXT_TOKENS - 2,
            PromptKind::Negative => TEXT_TOKENS,
        }
    }

    /// The recipe for one text (see the module docs).
    pub fn encode_for(&self, kind: PromptKind, text: &str) -> Result<EncoderInput> {
        let len = self.sequence_len(kind);
        let (ids, keep) = match kind {
            PromptKind::Prompt => {
                let full = format!("{CHI_PROMPT}{}", python_strip(text));
                let keep = std::iter::once(0).chain(len - (TEXT_TOKENS - 1)..len).collect();
                (self.encode(&full)?, keep)
            }
            PromptKind::Negative => (self.encode(text)?, (0..TEXT_TOKENS).collect()),
        };
        let truncated = (ids.len() > len).then_some(Truncation {
            tokens: ids.len(),
            limit: len,
        });
        let real = ids.len().min(len);
        let mut input_ids: Vec<i64> = ids[..real].iter().map(|&i| i64::from(i)).collect();
        input_ids.resize(len, i64::from(self.pad_id));
        let mut attention_mask = vec![1i64; real];
        attention_mask.resize(len, 0);
        Ok(EncoderInput {
            input_ids,
            attention_mask,
            keep,
            truncated,
        })
    }

    /// [`Self::encode_for`] with [`PromptKind::Prompt`].
    pub fn prompt(&self, prompt: &str) -> Result<EncoderInput> {
        self.encode_for(PromptKind::Prompt, prompt)
    }

    /// [`Self::encode_for`] with [`PromptKind::Negative`].
    pub fn negative(&self, negative: &str) -> Result<EncoderInput> {
        self.encode_for(PromptKind::Negative, negative)
    }

    /// Token ids with the tokenizer's special tokens (`<bos>` for Gemma), untruncated.
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| RuntimeError::Tokenizer {
                path: self.path.clone(),
                reason: format!("cannot tokenize {text:?}"),
                source: Some(e),
            })?;
        Ok(enc.get_ids().to_vec())
    }
}

/// Python's `str.strip()`: Unicode whitespace plus the separators U+001C..U+001F that Python also strips.
fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/gemma")
    }

    fn tokenizer() -> PromptTokenizer {
        PromptTokenizer::from_file(&golden_dir().join("model/tokenizer.json")).unwrap()
    }

    fn golden_i64(st: &safetensors::SafeTensors, name: &str) -> Vec<i64> {
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// Same ids, masks and truncation as `tools/gemma_text_embeddings.py` (transformers) for every golden case.
    #[test]
    fn recipe_matches_the_python_pipeline() {
        let dir = golden_dir();
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("recipe.json")).unwrap()).unwrap();
        let bytes = std::fs::read(dir.join("recipe.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tok = tokenizer();
        assert_eq!(tok.chi_tokens() as u64, meta["chi_tokens"].as_u64().unwrap());
        let cases = meta["cases"].as_array().unwrap();
        assert!(cases.len() >= 4);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let text = case["text"].as_str().unwrap();
            let kind = match case["kind"].as_str().unwrap() {
                "prompt" => PromptKind::Prompt,
                "negative" => PromptKind::Negative,
                k => panic!("unknown kind {k}"),
            };
            let got = tok.encode_for(kind, text).unwrap();
            assert_eq!(
                got.input_ids,
                golden_i64(&st, &format!("{name}.input_ids")),
                "{name} ids"
            );
            assert_eq!(
                got.attention_mask,
                golden_i64(&st, &format!("{name}.attention_mask")),
                "{name} mask"
            );
            assert_eq!(
                got.truncated.is_some(),
                case["truncated"].as_bool().unwrap(),
                "{name} truncation"
            );
            assert_eq!(got.keep.len(), TEXT_TOKENS);
            assert_eq!(*got.keep.last().unwrap(), got.len() - 1);
            let text_rows = st.tensor(&format!("{name}.text")).unwrap().shape()[0];
            assert_eq!(text_rows, got.keep.len(), "{name}");
        }
    }

    #[test]
    fn truncation_is_reported_with_counts() {
        let tok = tokenizer();
        let long = "the digit seven ".repeat(200);
        let t = tok
            .prompt(&long)
            .unwrap()
            .truncated
            .expect("a long prompt is truncated");
        assert_eq!(t.limit, tok.chi_tokens() + TEXT_TOKENS - 2);
        assert!(t.tokens > t.limit);
        assert!(tok.prompt("a 7").unwrap().truncated.is_none());
        assert!(tok.negative(&long).unwrap().truncated.is_some());
    }

    #[test]
    fn select_gathers_bos_and_the_last_299_rows() {
        let tok = tokenizer();
        let input = tok.prompt("a 7").unwrap();
        let width = 2;
        let hidden: Vec<usize> = (0..input.len() * width).collect();
        let text = input.select(&hidden, width).unwrap();
        assert_eq!(text.len(), TEXT_TOKENS * width);
        assert_eq!(
            &text[..4],
            &[0, 1, (input.len() - 299) * 2, (input.len() - 299) * 2 + 1]
        );
        assert_eq!(*text.last().unwrap(), hidden.len() - 1);
        assert!(matches!(
            input.select(&hidden[1..], width),
            Err(RuntimeError::Shape(_))
        ));
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let missing = golden_dir().join("model/no-such-tokenizer.json");
        let e = PromptTokenizer::from_file(&missing).unwrap_err();
        assert!(matches!(e, RuntimeError::Io { .. }), "{e}");
        assert!(e.to_string().contains("no-such-tokenizer.json"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("tokenizer.json");
        std::fs::write(&bad, b"{\"not\": \"a tokenizer\"}").unwrap();
        let e = PromptTokenizer::from_file(&bad).unwrap_err();
        assert!(matches!(e, RuntimeError::Tokenizer { .. }), "{e}");
        assert!(e.to_string().contains("tokenizer.json"), "{e}");
    }

    #[test]
    fn strip_follows_python() {
        assert_eq!(python_strip("  a 7 \n\t"), "a 7");
        assert_eq!(python_strip("\u{1f}\u{a0}x\u{3000}"), "x");
        assert_eq!(python_strip("\u{200b}x"), "\u{200b}x");
    }
}

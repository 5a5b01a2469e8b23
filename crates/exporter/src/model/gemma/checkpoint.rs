//! Gemma-2 weights: the official Hugging Face layout (`model.safetensors` or shards listed by
//! `model.safetensors.index.json`) or ComfyUI's single file (the same names, optionally under its text-encoder
//! prefixes, bf16 or `fp8_scaled`), memory-mapped and decoded one tensor at a time, or seeded random weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pixeldit_graph::F32Source;
use rand::SeedableRng;
use rand_distr::Distribution;

use crate::{ExportError, Result};

/// Name of the shard index in a Hugging Face checkpoint directory.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// Name of an unsharded Hugging Face checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";

/// Prefixes of Gemma-2 keys in files saved from ComfyUI's text-encoder objects (`PixelDiTGemma2TE` holds
/// `gemma2_2b.transformer` = `Gemma2_2B`, whose `model` has the Hugging Face names), stripped on load.
pub const COMFY_PREFIXES: &[&str] = &[
    "text_encoders.gemma2_2b.transformer.",
    "gemma2_2b.transformer.",
    "transformer.",
];

/// Where each tensor of a Gemma-2 checkpoint lives, with its shape.
pub struct GemmaWeights {
    origin: String,
    tensors: BTreeMap<String, (Vec<usize>, Arc<dyn F32Source>)>,
}

impl std::fmt::Debug for GemmaWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GemmaWeights")
            .field("origin", &self.origin)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> ExportError {
    ExportError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Seeded N(0, std) values (one ChaCha8 stream per tensor, seeded by the seed and the key).
struct RandomTensor {
    seed: u64,
    key: String,
    numel: usize,
    std: f32,
}

impl F32Source for RandomTensor {
    fn read(&self) -> pixeldit_graph::Result<Vec<f32>> {
        // FNV-1a of the key, so each tensor's values do not depend on which others exist.
        let h = self.key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ h);
        let normal = rand_distr::Normal::new(0.0f32, self.std).expect("finite std");
        Ok((0..self.numel).map(|_| normal.sample(&mut rng)).collect())
    }
}

impl GemmaWeights {
    /// Opens a checkpoint: a directory (with [`INDEX_FILE`] or [`SINGLE_FILE`]), an index file, or one
    /// `.safetensors` file. Keys are kept verbatim (`model.layers.0.self_attn.q_proj.weight`, ...).
    pub fn open(path: &Path) -> Result<Self> {
        let files: Vec<PathBuf> = if path.is_dir() {
            if path.join(INDEX_FILE).is_file() {
                shard_files(&path.join(INDEX_FILE))?
            } else if path.join(SINGLE_FILE).is_file() {
                vec![path.join(SINGLE_FILE)]
            } else {
                return Err(ckpt_err(
                    path,
                    format!("directory has neither {INDEX_FILE} nor {SINGLE_FILE}"),
                ));
            }
        } else if path.to_string_lossy().ends_with(".index.json") {
            shard_files(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let mut tensors = BTreeMap::new();
        for file in &files {
            // ComfyUI's single files: float8 Linears (`fp8_scaled`: per-tensor scales; `comfy_quant` tags) are
            // dequantized exactly, the text-encoder object prefixes stripped (see [`COMFY_PREFIXES`]).
            let (raw, metadata) = crate::weights::open_safetensors_entries(file)?;
            let raw = crate::comfy::dequantize_layers(file, raw, &metadata)?;
            crate::comfy::reject_unscaled_float8(file, &raw)?;
            for (name, entry) in raw {
                let key = COMFY_PREFIXES
                    .iter()
                    .find_map(|p| name.strip_prefix(p))
                    .unwrap_or(&name)
                    .to_string();
                let shape = entry.shape().to_vec();
                let src = crate::weights::entry_source(&key, entry);
                if tensors.insert(key.clone(), (shape, src)).is_some() {
                    return Err(ckpt_err(
                        file,
                        format!("key '{key}' appears twice (in more than one shard, or with and without a prefix)"),
                    ));
                }
            }
        }
        Ok(GemmaWeights {
            origin: path.display().to_string(),
            tensors,
        })
    }

    /// Seeded random weights of the given shapes: matrices N(0, 1/fan_in), the embedding N(0, 1/hidden),
    /// norm weights N(0, 0.1) (so that `1 + w` is not the identity).
    pub fn random(shapes: &[(String, Vec<usize>)], seed: u64) -> Self {
        let tensors = shapes
            .iter()
            .map(|(key, shape)| {
                let std = if shape.len() == 1 {
                    0.1
                } else {
                    1.0 / (shape[1] as f32).sqrt()
                };
                let src = RandomTensor {
                    seed,
                    key: key.clone(),
                    numel: shape.iter().product(),
                    std,
                };
                (key.clone(), (shape.clone(), Arc::new(src) as Arc<dyn F32Source>))
            })
            .collect();
        GemmaWeights {
            origin: format!("random-init(seed={seed})"),
            tensors,
        }
    }

    /// Where the weights came from (a path, or the random seed).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Checks that every key of `shapes` exists with that shape (shape mismatches reported first); returns the checkpoint keys the model does not use.
    pub fn check(&self, shapes: &[(String, Vec<usize>)]) -> Result<Vec<String>> {
        // Shapes first: a checkpoint of another size fails on its first tensor, not on hundreds of missing keys.
        for (key, expected) in shapes {
            match self.tensors.get(key) {
                Some((found, _)) if found != expected => {
                    return Err(ExportError::ShapeMismatch {
                        path: self.origin.clone(),
                        key: key.clone(),
                        expected: expected.clone(),
                        found: found.clone(),
                    })
                }
                _ => {}
            }
        }
        let missing: Vec<String> = shapes
            .iter()
            .filter(|(k, _)| !self.tensors.contains_key(k))
            .map(|(k, _)| k.clone())
            .collect();
        if !missing.is_empty() {
            return Err(ExportError::MissingKeys {
                path: self.origin.clone(),
                keys: missing,
            });
        }
        Ok(self
            .tensors
            .keys()
            .filter(|k| !shapes.iter().any(|(s, _)| s == *k))
            .cloned()
            .collect())
    }

    /// The source of one tensor (after [`Self::check`]).
    pub fn source(&self, key: &str) -> Result<Arc<dyn F32Source>> {
        self.tensors
            .get(key)
            .map(|(_, s)| s.clone())
            .ok_or_else(|| ExportError::MissingKeys {
                path: self.origin.clone(),
                keys: vec![key.to_string()],
            })
    }
}

/// The distinct shard files named by an index's `weight_map`, in sorted order, next to the index.
fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text =
        std::fs::read_to_string(index).map_err(|e| ExportError::checkpoint_file(index, "cannot read", e))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ExportError::checkpoint_file(index, "invalid JSON", e))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ckpt_err(index, "no \"weight_map\" object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<String> = map
        .values()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| ckpt_err(index, "weight_map values must be file names"))
        })
        .collect::<Result<_>>()?;
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

//! Model weights: official checkpoints (safetensors or `torch.save` archives, memory-mapped; see
//! [`crate::checkpoint`]) or deterministic random init.
//!
//! Keys are the official names after stripping the `ema_denoiser.` (ImageNet Lightning checkpoints) or
//! `core.` (T2I) prefix. Training-only entries (`denoiser.*` when an EMA copy exists,
//! `diffusion_trainer.*`, `_repa_projector.*`) are dropped. Every tensor is read lazily, one at a time,
//! when the model is written.

use crate::checkpoint::{self, torch_zip, Format};
use crate::{ExportError, Result};
use pixeldit_graph::{F32Source, GraphError};
use rand::SeedableRng;
use rand_distr::Distribution;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefixes stripped on load: the official checkpoints' (spec section 3) and ComfyUI's (`model.diffusion_model.`
/// in its repackaged and saved files, `net.` in some conversions; see [`crate::comfy`]).
pub const STRIP_PREFIXES: &[&str] = &["ema_denoiser.", "core.", "model.diffusion_model.", "net."];
/// Prefixes of training-only tensors, dropped on load.
pub const TRAINING_ONLY_PREFIXES: &[&str] = &["diffusion_trainer.", "_repa_projector.", "denoiser."];

/// Where one tensor's values come from.
#[derive(Clone)]
pub(crate) enum Entry {
    Mapped {
        file: Arc<memmap2::Mmap>,
        dtype: safetensors::Dtype,
        shape: Vec<usize>,
        range: (usize, usize),
        /// Strides in elements for a non-contiguous tensor (`range.0` is element `[0, ...]`).
        strides: Option<Vec<usize>>,
        /// A zip record `(start, len, crc32)` verified when the tensor is read.
        crc: Option<(usize, usize, u32)>,
    },
    Random {
        seed: u64,
        shape: Vec<usize>,
        kind: InitKind,
    },
    /// A quantized weight, dequantized exactly when read ([`crate::comfy`]); `shape` is the logical shape, which
    /// may cut the zero padding of the stored tensor (rows and columns, MXFP8).
    Quant {
        q: Box<Entry>,
        scale: crate::comfy::Scale,
        shape: Vec<usize>,
    },
    /// A weight with LoRA updates merged when read ([`crate::lora`]).
    Lora {
        base: Box<Entry>,
        deltas: Vec<crate::lora::Delta>,
    },
    /// Rows interleaved from several tensors: `chunk_rows` rows of each part in turn (ComfyUI's split PiT
    /// modulation, recombined per pixel).
    Interleave {
        parts: Vec<Entry>,
        chunk_rows: usize,
        shape: Vec<usize>,
    },
}

impl Entry {
    /// The (logical) shape.
    pub(crate) fn shape(&self) -> &[usize] {
        match self {
            Entry::Mapped { shape, .. }
            | Entry::Random { shape, .. }
            | Entry::Quant { shape, .. }
            | Entry::Interleave { shape, .. } => shape,
            Entry::Lora { base, .. } => base.shape(),
        }
    }

    /// The stored dtype of a mapped tensor (of the base weight of a LoRA merge).
    pub(crate) fn dtype(&self) -> Option<safetensors::Dtype> {
        match self {
            Entry::Mapped { dtype, .. } => Some(*dtype),
            Entry::Lora { base, .. } => base.dtype(),
            _ => None,
        }
    }

    /// The raw bytes of a contiguous mapped tensor (small tensors read at open time: tags, scales).
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        match self {
            Entry::Mapped {
                file,
                range,
                strides: None,
                ..
            } => Some(&file[range.0..range.1]),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum InitKind {
    Ones,
    Normal(f32),
}

/// Keys found in a checkpoint but not used by the model, and training-only keys that were dropped.
#[derive(Debug, Clone, Default)]
pub struct KeyReport {
    /// Keys the model does not use.
    pub unused: Vec<String>,
    /// Training-only keys dropped on load.
    pub dropped: Vec<String>,
}

/// A set of named weight tensors: an opened checkpoint, or deterministic random values made on request. Which
/// keys exist and their shapes is the model files' business: they ask for each tensor with its shape
/// ([`Weights::source_for`]), and the unused keys are the ones nobody asked for.
pub struct Weights {
    entries: BTreeMap<String, Entry>,
    origin: String,
    path: Option<PathBuf>,
    dropped: Vec<String>,
    /// `Some(seed)`: every requested key is made up from (seed, key) ([`Weights::random`]).
    random_seed: Option<u64>,
    /// LoRA adapters merged into the weights, in order.
    adapters: Vec<crate::lora::AdapterInfo>,
}

/// What [`Weights::source_for`] found for a key.
pub enum Lookup {
    /// The tensor, with the requested shape.
    Found(Arc<dyn F32Source>),
    /// No such key.
    Missing,
}

impl Weights {
    /// Opens a checkpoint of any supported format (detected from its first bytes): safetensors, a
    /// `torch.save` zip archive (Lightning `.ckpt`, T2I `.pth`), memory-mapped; nothing is read
    /// until the model is written. A legacy (pre-1.6) `torch.save` file is an error.
    pub fn from_checkpoint(path: &Path) -> Result<Self> {
        let err = |reason: String| ExportError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let mmap = Arc::new(map_file(path)?);
        match Format::detect(&mmap[..mmap.len().min(16)]) {
            Some(Format::Safetensors) => Self::from_mapped_safetensors(path, mmap),
            Some(Format::TorchZip) => {
                let ck = torch_zip::open(&mmap).map_err(|e| err(format!("torch.save archive: {e}")))?;
                let raw = ck
                    .tensors
                    .into_iter()
                    .map(|t| {
                        let es = t.dtype.size();
                        let numel: usize = t.shape.iter().product();
                        let e = Entry::Mapped {
                            file: mmap.clone(),
                            dtype: checkpoint::safetensors_dtype(t.dtype),
                            shape: t.shape,
                            range: (t.start, t.start + numel * es),
                            strides: t.strides,
                            crc: Some((t.record.data_start, t.record.size, t.record.crc32)),
                        };
                        (t.name, e)
                    })
                    .collect();
                Self::from_raw(path, raw)
            }
            Some(Format::TorchLegacy) => Err(err(
                "legacy torch.save format (PyTorch < 1.6, a raw pickle stream) is not supported: re-save it \
                 with torch.save(torch.load(f, weights_only=False), f2) on PyTorch >= 1.6, or convert it to \
                 safetensors"
                    .into(),
            )),
            None => Err(err(format!(
                "unknown checkpoint format (first bytes {:02x?}): expected safetensors or a torch.save zip \
                 archive (.ckpt/.pth)",
                &mmap[..mmap.len().min(8)]
            ))),
        }
    }

    /// Opens a safetensors checkpoint (memory-mapped; nothing is read until the model is written).
    pub fn from_safetensors(path: &Path) -> Result<Self> {
        Self::from_mapped_safetensors(path, Arc::new(map_file(path)?))
    }

    fn from_mapped_safetensors(path: &Path, mmap: Arc<memmap2::Mmap>) -> Result<Self> {
        let (raw, file_metadata) = safetensors_entries(path, mmap)?;
        let raw = crate::comfy::dequantize_layers(path, raw, &file_metadata)?;
        Self::from_raw(path, raw)
    }

    /// Applies the prefix rules of the official layouts to raw `(key, entry)` pairs.
    fn from_raw(path: &Path, raw: Vec<(String, Entry)>) -> Result<Self> {
        crate::comfy::reject_unscaled_float8(path, &raw)?;
        let err = |reason: String| ExportError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let has_ema = raw.iter().any(|(k, _)| k.starts_with("ema_denoiser."));
        let mut entries = BTreeMap::new();
        let mut dropped = Vec::new();
        for (name, e) in raw {
            // `denoiser.*` is the non-EMA training copy; it is the model only when no EMA copy exists.
            let is_raw_denoiser = name.starts_with("denoiser.");
            let training_only =
                TRAINING_ONLY_PREFIXES.iter().any(|p| name.starts_with(p)) && (!is_raw_denoiser || has_ema);
            if training_only {
                dropped.push(name);
                continue;
            }
            let key = STRIP_PREFIXES
                .iter()
                .find_map(|p| name.strip_prefix(p))
                .or_else(|| name.strip_prefix("denoiser."))
                .unwrap_or(&name)
                .to_string();
            if entries.insert(key.clone(), e).is_some() {
                return Err(err(format!("key '{key}' appears twice after stripping prefixes")));
            }
        }
        crate::comfy::join_split_modulation(path, &mut entries)?;
        dropped.sort();
        // The origin deliberately omits the file name: the same tensors give the same model bytes
        // whatever file or format they came from (the metadata carries their SHA-256).
        Ok(Weights {
            entries,
            origin: "checkpoint".into(),
            path: Some(path.to_path_buf()),
            dropped,
            random_seed: None,
            adapters: Vec::new(),
        })
    }

    /// Deterministic random weights: any key requested with a shape gets norm weights 1, other tensors N(0,
    /// 1/fan_in) (N(0, 0.02) for 1-D), each from a ChaCha8 stream seeded by (seed, key).
    pub fn random(seed: u64) -> Self {
        Weights {
            entries: BTreeMap::new(),
            origin: format!("random-init:seed={seed}"),
            path: None,
            dropped: Vec::new(),
            random_seed: Some(seed),
            adapters: Vec::new(),
        }
    }

    /// Where the weights came from (`checkpoint` or `random-init:seed=<n>`, then ` + LoRA FILE x SCALE` per
    /// merged adapter).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Merges a LoRA adapter into the checkpoint's Linear weights ([`crate::lora`]); checks the whole file first
    /// and lists every key that does not fit.
    pub fn merge_lora(&mut self, spec: &crate::LoraSpec) -> Result<crate::lora::AdapterInfo> {
        if self.random_seed.is_some() {
            return Err(ExportError::Lora {
                path: spec.path.display().to_string(),
                reason: "a LoRA is merged into a checkpoint, not into random weights".into(),
            });
        }
        let info = crate::lora::merge(self, spec)?;
        self.origin
            .push_str(&format!(" + LoRA {} x {}", info.file, info.scale));
        self.adapters.push(info.clone());
        Ok(info)
    }

    /// The merged adapters, in order.
    pub fn adapters(&self) -> &[crate::lora::AdapterInfo] {
        &self.adapters
    }

    /// Adds a low-rank update to the weight `key` (which exists).
    pub(crate) fn add_delta(&mut self, key: &str, delta: crate::lora::Delta) {
        let e = self.entries.remove(key).expect("checked by the caller");
        let e = match e {
            Entry::Lora { base, mut deltas } => {
                deltas.push(delta);
                Entry::Lora { base, deltas }
            }
            base => Entry::Lora {
                base: Box::new(base),
                deltas: vec![delta],
            },
        };
        self.entries.insert(key.to_string(), e);
    }

    fn path_str(&self) -> String {
        self.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| self.origin.clone())
    }

    /// The tensor `key`, which the model reads with `shape`: its lazy f32 source (converted from f16/bf16 when
    /// stored so), [`Lookup::Missing`] when the checkpoint has no such key, or an error naming the file and key
    /// when its shape or dtype differs.
    pub fn source_for(&self, key: &str, shape: &[usize]) -> Result<Lookup> {
        let entry = match (self.entries.get(key), self.random_seed) {
            (Some(e), _) => e.clone(),
            (None, Some(seed)) => Entry::Random {
                seed: seed ^ fnv1a(key.as_bytes()),
                shape: shape.to_vec(),
                kind: init_kind(key, shape),
            },
            (None, None) => return Ok(Lookup::Missing),
        };
        let entry = match entry {
            // MXFP8 weights are stored padded to multiples of 32: the model's shape cuts them.
            Entry::Quant {
                q,
                scale,
                shape: stored,
            } if stored.as_slice() != shape && crate::comfy::pads_to(shape, &stored) => Entry::Quant {
                q,
                scale,
                shape: shape.to_vec(),
            },
            e => e,
        };
        if !matches!(entry, Entry::Random { .. }) && entry.shape() != shape {
            return Err(ExportError::ShapeMismatch {
                path: self.path_str(),
                key: key.to_string(),
                expected: shape.to_vec(),
                found: entry.shape().to_vec(),
            });
        }
        if let Some(dtype) = entry.dtype() {
            if !matches!(
                dtype,
                safetensors::Dtype::F32 | safetensors::Dtype::F16 | safetensors::Dtype::BF16
            ) {
                return Err(ExportError::Checkpoint {
                    path: self.path_str(),
                    reason: format!("key '{key}' has dtype {dtype:?}, expected F32, F16 or BF16"),
                });
            }
        }
        Ok(Lookup::Found(Arc::new(Lazy {
            key: key.to_string(),
            entry,
        })))
    }

    /// The report for a model that read exactly `read`: checkpoint keys it did not read, and the training-only
    /// keys dropped on load; an error listing every key of `missing` (keys it asked for that are absent).
    pub fn report(&self, read: &BTreeSet<String>, missing: &[String]) -> Result<KeyReport> {
        if !missing.is_empty() {
            return Err(ExportError::MissingKeys {
                path: self.path_str(),
                keys: missing.to_vec(),
            });
        }
        Ok(KeyReport {
            unused: self
                .entries
                .keys()
                .filter(|k| !read.contains(*k))
                .cloned()
                .collect(),
            dropped: self.dropped.clone(),
        })
    }

    /// Shape of a key stored in the checkpoint.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.entries.get(key).map(Entry::shape)
    }

    /// A lazy f32 source for a key stored in the checkpoint (no shape check; tools and tests).
    pub fn source(&self, key: &str) -> Option<Arc<dyn F32Source>> {
        self.entries.get(key).map(|e| {
            Arc::new(Lazy {
                key: key.to_string(),
                entry: e.clone(),
            }) as Arc<dyn F32Source>
        })
    }

    /// Keys stored in the checkpoint (after prefix stripping), sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

/// How a random tensor is initialised: norm weights 1 (`norm_x1.`, `q_norm_y.`: the per-stream norms of the T2I
/// MM-DiT blocks), 1-D tensors N(0, 0.02), others N(0, 1/fan_in).
fn init_kind(key: &str, shape: &[usize]) -> InitKind {
    let is_norm = key.ends_with("norm.weight")
        || key.contains("norm1.")
        || key.contains("norm2.")
        || key.contains("norm_");
    if is_norm {
        InitKind::Ones
    } else if shape.len() == 1 {
        InitKind::Normal(0.02)
    } else {
        InitKind::Normal(1.0 / (shape[shape.len() - 1] as f32).sqrt())
    }
}

/// A lazy f32 source for an entry (the Gemma-2 reader shares the ComfyUI dequantization).
pub(crate) fn entry_source(key: &str, entry: Entry) -> Arc<dyn F32Source> {
    Arc::new(Lazy {
        key: key.to_string(),
        entry,
    })
}

/// A safetensors file's `__metadata__`.
pub(crate) type FileMetadata = std::collections::HashMap<String, String>;

/// The tensors of a mapped safetensors file as entries, and its metadata.
fn safetensors_entries(
    path: &Path,
    mmap: Arc<memmap2::Mmap>,
) -> Result<(Vec<(String, Entry)>, FileMetadata)> {
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(&mmap)
        .map_err(|e| ExportError::checkpoint_file(path, "not a valid safetensors file", e))?;
    let file_metadata = meta.metadata().clone().unwrap_or_default();
    let base = 8 + header_len;
    let raw = meta
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let e = Entry::Mapped {
                file: mmap.clone(),
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: (base + info.data_offsets.0, base + info.data_offsets.1),
                strides: None,
                crc: None,
            };
            (name, e)
        })
        .collect();
    Ok((raw, file_metadata))
}

/// [`safetensors_entries`] of a file opened here (LoRA adapters).
pub(crate) fn open_safetensors_entries(path: &Path) -> Result<(Vec<(String, Entry)>, FileMetadata)> {
    safetensors_entries(path, Arc::new(map_file(path)?))
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| ExportError::checkpoint_file(path, "cannot open", e))?;
    // SAFETY: the file is opened read-only and not modified while the export runs.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ExportError::checkpoint_file(path, "cannot map", e))
}

/// Drops the pages of a mapped range from this process once a tensor was read, so that the resident
/// set stays at one tensor even for checkpoints larger than memory (the page cache keeps them).
fn release(file: &memmap2::Mmap, start: usize, end: usize) {
    let page = 4096;
    let a = start / page * page;
    if end > a {
        // SAFETY: the mapping is read-only and file-backed; MADV_DONTNEED only drops this process's
        // page-table entries, later reads fault the same bytes back in from the file.
        let _ = unsafe { file.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, a, end - a) };
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

struct Lazy {
    key: String,
    entry: Entry,
}

impl F32Source for Lazy {
    fn read(&self) -> std::result::Result<Vec<f32>, GraphError> {
        read_entry(&self.key, &self.entry)
    }
}

/// The f32 values of `entry` (named `key` in errors).
pub(crate) fn read_entry(key: &str, entry: &Entry) -> std::result::Result<Vec<f32>, GraphError> {
    match entry {
        Entry::Mapped {
            file,
            dtype,
            range,
            shape,
            strides,
            crc,
        } => {
            if let Some((start, len, want)) = crc {
                let got = torch_zip::crc32(&file[*start..*start + *len]);
                release(file, *start, *start + *len);
                if got != *want {
                    return Err(GraphError::Tensor {
                        name: key.to_string(),
                        reason: "its storage record fails the zip CRC-32 check (corrupt checkpoint)".into(),
                    });
                }
            }
            let gathered;
            let bytes = match strides {
                None => &file[range.0..range.1],
                Some(st) => {
                    let es = dtype.bitsize() / 8;
                    gathered = torch_zip::gather_strided(file, range.0, shape, st, es);
                    &gathered[..]
                }
            };
            let v = match dtype {
                safetensors::Dtype::F32 => bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
                safetensors::Dtype::F16 => bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => bytes
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::F8_E4M3 => bytes.iter().map(|b| crate::comfy::e4m3_to_f32(*b)).collect(),
                safetensors::Dtype::F8_E5M2 => bytes.iter().map(|b| crate::comfy::e5m2_to_f32(*b)).collect(),
                other => {
                    return Err(GraphError::Tensor {
                        name: key.to_string(),
                        reason: format!("unsupported checkpoint dtype {other:?}"),
                    })
                }
            };
            release(file, range.0, range.1);
            Ok(v)
        }
        Entry::Random { seed, shape, kind } => {
            let n: usize = shape.iter().product();
            Ok(match kind {
                InitKind::Ones => vec![1.0; n],
                InitKind::Normal(std) => {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(*seed);
                    let normal = rand_distr::Normal::new(0.0f32, *std).expect("valid std");
                    (0..n).map(|_| normal.sample(&mut rng)).collect()
                }
            })
        }
        Entry::Quant { q, scale, shape } => {
            let values = read_entry(key, q)?;
            crate::comfy::dequantize(key, values, q.shape(), scale, shape)
        }
        Entry::Lora { base, deltas } => {
            let w = read_entry(key, base)?;
            let ds = deltas
                .iter()
                .map(|d| Ok((read_entry(key, &d.a)?, read_entry(key, &d.b)?, d.factor)))
                .collect::<std::result::Result<Vec<_>, GraphError>>()?;
            Ok(crate::lora::apply(w, base.shape(), &ds))
        }
        Entry::Interleave {
            parts,
            chunk_rows,
            shape,
        } => {
            let cols: usize = shape[1..].iter().product();
            let values = parts
                .iter()
                .map(|p| read_entry(key, p))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let chunk = chunk_rows * cols;
            let groups = values[0].len() / chunk;
            let mut out = Vec::with_capacity(shape.iter().product());
            for g in 0..groups {
                for v in &values {
                    out.extend_from_slice(&v[g * chunk..(g + 1) * chunk]);
                }
            }
            Ok(out)
        }
    }
}

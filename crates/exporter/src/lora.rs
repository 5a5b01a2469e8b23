//! LoRA adapters merged into the checkpoint's Linear weights at export: `W + scale * alpha / rank * B @ A`, before
//! anything else reads the weights (quantization sees the merged weights). Accepted layouts:
//!
//! * `pixeldit2-lora-v1` (the official fork's `pixdit_core/lora.py`, Apache0ne/PixelDiT at `0c855a81`):
//!   `<module>.lora_A` `[r, in]`, `<module>.lora_B` `[out, r]`, safetensors metadata `format` =
//!   `pixeldit2-lora-v1` and `modules` = JSON list of `{"name", "rank", "alpha", ...}`;
//! * PEFT: `<module>.lora_A.weight` / `<module>.lora_B.weight` (prefix `base_model.model.` allowed), alpha from
//!   `<module>.alpha` when present, else alpha = rank;
//! * kohya: `lora_unet_<module with dots as underscores>.lora_down.weight` / `.lora_up.weight` / `.alpha`, mapped
//!   back through the checkpoint's own Linear names (an error if two names collide).
//!
//! Module names may carry the checkpoint prefixes (`core.`, `model.diffusion_model.`, ...). Every key that maps
//! to no Linear of the checkpoint, and every shape mismatch, is listed in one error.

use crate::weights::{Entry, Weights, STRIP_PREFIXES};
use crate::{ExportError, Result};
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// One adapter to merge: `FILE[:SCALE]` on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The adapter file (safetensors).
    pub path: PathBuf,
    /// The user's strength (1 = as trained).
    pub scale: f32,
}

impl std::str::FromStr for LoraSpec {
    type Err = String;

    /// `FILE` or `FILE:SCALE` (a finite number).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some((p, sc)) = s.rsplit_once(':') {
            if let Ok(scale) = sc.parse::<f32>() {
                if !scale.is_finite() {
                    return Err(format!("LoRA scale '{sc}' is not finite"));
                }
                return Ok(LoraSpec {
                    path: p.into(),
                    scale,
                });
            }
        }
        Ok(LoraSpec {
            path: s.into(),
            scale: 1.0,
        })
    }
}

/// What was merged from one adapter (recorded in the model's `pixeldit.adapters` metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    /// File name of the adapter.
    pub file: String,
    /// Layout (`pixeldit2-lora-v1`, `peft`, `kohya`).
    pub format: String,
    /// The user's scale.
    pub scale: f32,
    /// Linear weights changed.
    pub modules: usize,
}

impl AdapterInfo {
    /// `{"file", "format", "scale", "modules"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file,
            "format": self.format,
            "scale": self.scale,
            "modules": self.modules,
        })
    }
}

/// One low-rank update `factor * B @ A` of a weight.
#[derive(Clone)]
pub(crate) struct Delta {
    pub a: Entry,
    pub b: Entry,
    pub factor: f64,
}

/// The parts of one module's adapter found in the file.
#[derive(Default)]
struct Module {
    a: Option<(String, Entry)>,
    b: Option<(String, Entry)>,
    alpha: Option<f32>,
    style: &'static str,
}

fn scalar(e: &Entry) -> Option<f32> {
    let b = e.bytes()?;
    match (e.dtype()?, b.len()) {
        (Dtype::F32, 4) => Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        (Dtype::BF16, 2) => Some(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        (Dtype::F16, 2) => Some(half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        _ => None,
    }
}

fn strip(name: &str) -> &str {
    let name = name.strip_prefix("base_model.model.").unwrap_or(name);
    STRIP_PREFIXES
        .iter()
        .find_map(|p| name.strip_prefix(p))
        .unwrap_or(name)
}

/// Merges the adapter `spec` into `weights` (lazily: the update is computed when a weight is read, in f64, then
/// rounded to f32); every problem of the file is listed in one error.
pub(crate) fn merge(weights: &mut Weights, spec: &LoraSpec) -> Result<AdapterInfo> {
    let path = &spec.path;
    let fail = |reason: String| ExportError::Lora {
        path: path.display().to_string(),
        reason,
    };
    let (entries, metadata) = crate::weights::open_safetensors_entries(path)?;
    let v1 = metadata.get("format").map(String::as_str) == Some("pixeldit2-lora-v1");
    let mut v1_alpha: HashMap<String, (usize, f32)> = HashMap::new();
    if v1 {
        let text = metadata
            .get("modules")
            .ok_or_else(|| fail("pixeldit2-lora-v1 metadata without 'modules'".into()))?;
        let list: Vec<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| fail(format!("metadata 'modules' is not a JSON list: {e}")))?;
        for m in list {
            let (Some(name), Some(rank), Some(alpha)) = (
                m.get("name").and_then(|v| v.as_str()),
                m.get("rank").and_then(|v| v.as_u64()),
                m.get("alpha").and_then(|v| v.as_f64()),
            ) else {
                return Err(fail(format!(
                    "metadata 'modules' entry {m}: expected name, rank and alpha"
                )));
            };
            v1_alpha.insert(name.to_string(), (rank as usize, alpha as f32));
        }
    }
    // Kohya names: the checkpoint's 2-D weights with dots as underscores.
    let mut kohya_names: HashMap<String, Vec<String>> = HashMap::new();
    for k in weights.keys().filter(|k| k.ends_with(".weight")) {
        let m = k.trim_end_matches(".weight");
        kohya_names
            .entry(m.replace('.', "_"))
            .or_default()
            .push(m.to_string());
    }

    let mut modules: BTreeMap<String, Module> = BTreeMap::new();
    let mut problems: Vec<String> = Vec::new();
    let mut style_seen = None;
    for (key, e) in entries {
        let (stem, leaf, style) = if let Some(s) = key.strip_suffix(".lora_A.weight") {
            (s, "A", "peft")
        } else if let Some(s) = key.strip_suffix(".lora_B.weight") {
            (s, "B", "peft")
        } else if let Some(s) = key.strip_suffix(".lora_down.weight") {
            (s, "A", "kohya")
        } else if let Some(s) = key.strip_suffix(".lora_up.weight") {
            (s, "B", "kohya")
        } else if let Some(s) = key.strip_suffix(".lora_A") {
            (s, "A", "pixeldit2-lora-v1")
        } else if let Some(s) = key.strip_suffix(".lora_B") {
            (s, "B", "pixeldit2-lora-v1")
        } else if let Some(s) = key.strip_suffix(".alpha") {
            (s, "alpha", "")
        } else {
            problems.push(format!("'{key}': not a LoRA key (expected <module>.lora_A/.lora_B[.weight], .lora_down/.lora_up.weight or .alpha)"));
            continue;
        };
        let stem_stripped = strip(stem);
        let module = if let Some(k) = stem_stripped
            .strip_prefix("lora_unet_")
            .or_else(|| stem_stripped.strip_prefix("lora_transformer_"))
        {
            match kohya_names.get(k).map(Vec::as_slice) {
                Some([one]) => one.clone(),
                Some(many) => {
                    problems.push(format!(
                        "'{key}': the kohya name '{k}' is ambiguous ({})",
                        many.join(", ")
                    ));
                    continue;
                }
                None => {
                    problems.push(format!(
                        "'{key}': no Linear of the checkpoint is named '{k}' (with dots as underscores)"
                    ));
                    continue;
                }
            }
        } else {
            stem_stripped.to_string()
        };
        let m = modules.entry(module).or_default();
        match leaf {
            "A" => m.a = Some((key.clone(), e)),
            "B" => m.b = Some((key.clone(), e)),
            _ => match scalar(&e) {
                Some(a) => m.alpha = Some(a),
                None => problems.push(format!("'{key}': expected one F32/BF16/F16 alpha")),
            },
        }
        if !style.is_empty() {
            m.style = style;
            style_seen.get_or_insert(style);
        }
    }

    let mut merged = 0;
    let mut updates: Vec<(String, Delta)> = Vec::new();
    for (module, m) in &modules {
        let wkey = format!("{module}.weight");
        let (Some((ka, a)), Some((kb, b))) = (&m.a, &m.b) else {
            let have =
                m.a.as_ref()
                    .or(m.b.as_ref())
                    .map_or("an alpha".to_string(), |(k, _)| format!("'{k}'"));
            problems.push(format!(
                "module '{module}': {have} without its partner (lora_A/lora_B or lora_down/lora_up)"
            ));
            continue;
        };
        let Some(w) = weights.shape(&wkey).map(<[usize]>::to_vec) else {
            problems.push(format!("'{ka}', '{kb}': the checkpoint has no Linear '{wkey}'"));
            continue;
        };
        let (sa, sb) = (a.shape(), b.shape());
        let ok = w.len() == 2
            && sa.len() == 2
            && sb.len() == 2
            && sa[0] == sb[1]
            && sa[1] == w[1]
            && sb[0] == w[0];
        let float = |e: &Entry| matches!(e.dtype(), Some(Dtype::F32 | Dtype::F16 | Dtype::BF16));
        if !ok || !float(a) || !float(b) {
            problems.push(format!(
                "'{ka}' {sa:?} / '{kb}' {sb:?}: expected float [r, {}] and [{}, r] for '{wkey}' {w:?}",
                w.get(1).copied().unwrap_or(0),
                w.first().copied().unwrap_or(0)
            ));
            continue;
        }
        let rank = sa[0];
        let alpha = if m.style == "pixeldit2-lora-v1" {
            match v1_alpha
                .get(module.as_str())
                .or_else(|| v1_alpha.iter().find(|(n, _)| strip(n) == module).map(|(_, v)| v))
            {
                Some((r, alpha)) if *r == rank => *alpha,
                Some((r, _)) => {
                    problems.push(format!(
                        "'{ka}': rank {rank}, but the metadata 'modules' says {r}"
                    ));
                    continue;
                }
                None if !v1 => m.alpha.unwrap_or(rank as f32),
                None => {
                    problems.push(format!(
                        "'{ka}': module '{module}' is missing from the metadata 'modules'"
                    ));
                    continue;
                }
            }
        } else {
            m.alpha.unwrap_or(rank as f32)
        };
        let factor = spec.scale as f64 * alpha as f64 / rank as f64;
        updates.push((
            wkey,
            Delta {
                a: a.clone(),
                b: b.clone(),
                factor,
            },
        ));
        merged += 1;
    }
    if !problems.is_empty() {
        return Err(fail(format!(
            "{} key(s) do not fit the checkpoint (an adapter for another model?):\n  {}",
            problems.len(),
            problems.join("\n  ")
        )));
    }
    if merged == 0 {
        return Err(fail("no LoRA modules in the file".into()));
    }
    for (key, delta) in updates {
        weights.add_delta(&key, delta);
    }
    Ok(AdapterInfo {
        file: path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        format: if v1 {
            "pixeldit2-lora-v1".into()
        } else {
            style_seen.unwrap_or("peft").to_string()
        },
        scale: spec.scale,
        modules: merged,
    })
}

/// `base + sum factor * B @ A` in f64, rounded to f32 (`base` `[out, in]`, A `[r, in]`, B `[out, r]`).
pub(crate) fn apply(base: Vec<f32>, shape: &[usize], deltas: &[(Vec<f32>, Vec<f32>, f64)]) -> Vec<f32> {
    let (out, inp) = (shape[0], shape[1]);
    let mut acc: Vec<f64> = base.iter().map(|v| *v as f64).collect();
    for (a, b, factor) in deltas {
        let r = a.len() / inp;
        for o in 0..out {
            let row = &mut acc[o * inp..(o + 1) * inp];
            let mut upd = vec![0f64; inp];
            for k in 0..r {
                let bk = b[o * r + k] as f64;
                for (u, av) in upd.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                    *u += bk * *av as f64;
                }
            }
            for (x, u) in row.iter_mut().zip(upd) {
                *x += factor * u;
            }
        }
    }
    acc.into_iter().map(|v| v as f32).collect()
}

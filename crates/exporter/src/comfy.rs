//! ComfyUI's checkpoint layouts, read into the official one (shared docs `checkpoints-in-the-wild.md` sections 3
//! and 4). Facts from ComfyUI (Comfy-Org/ComfyUI `comfy/ops.py`, `comfy/quant_ops.py`, `comfy/utils.py`
//! `convert_old_quants`, at 0271a469fe29524fafe5872b737123d65a63e5fc) and comfy-kitchen
//! (`comfy_kitchen/tensor/mxfp8.py`, `backends/eager/quantization.py` `dequantize_mxfp8`, `float_utils.py`
//! `to_blocked`):
//!
//! * A quantized Linear `L` has `L.weight` in a float8 dtype, `L.weight_scale`, and `L.comfy_quant`: a uint8
//!   tensor holding UTF-8 JSON `{"format": ...}`. Older files list the layers in the safetensors metadata
//!   `_quantization_metadata` (`{"layers": {"L": {"format": ...}}}`); the oldest (`scaled_fp8` marker tensor)
//!   store per-tensor scales as `L.scale_weight` (and `L.scale_input`, unused here).
//! * `mxfp8`: `L.weight` `F8_E4M3` `[N, K]` zero-padded to multiples of 32; `L.weight_scale` one E8M0 exponent
//!   byte (scale `2^(e-127)`) per 32 consecutive elements of a row, in cuBLAS's blocked layout: the `[N, K/32]`
//!   grid zero-padded to `[ceil(N/128)*128, ceil(K/32/4)*4]`, cut into 128x4 tiles stored row-major over (row
//!   tile, column tile), the byte of (r, c) inside a tile at `(r % 32) * 16 + (r / 32) * 4 + c`.
//! * `float8_e4m3fn` / `float8_e5m2`: one f32 scale per tensor.
//! * A state dict saved from a ComfyUI PixelDiT object splits each PiT `adaLN_modulation.0` into
//!   `adaLN_modulation_msa` and `adaLN_modulation_mlp` (`[p^2, 3, D_pix, ...]` each: chunks 0-2 and 3-5 per pixel).
//!
//! Dequantization is exact: an E4M3 value times a power of two is an f32. Any other format is an error that names
//! the layer and the format; nothing is written.

use crate::weights::Entry;
use crate::{ExportError, Result};
use pixeldit_graph::GraphError;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// MXFP8 block size along K.
pub const MX_BLOCK: usize = 32;

/// How a quantized weight is scaled.
#[derive(Clone)]
pub(crate) enum Scale {
    /// One scale for the whole tensor.
    PerTensor(f32),
    /// MXFP8: E8M0 bytes per 32 elements of a row, in cuBLAS's blocked layout.
    Mx(Box<Entry>),
}

fn err(path: &Path, reason: String) -> ExportError {
    ExportError::Checkpoint {
        path: path.display().to_string(),
        reason,
    }
}

/// A mapped tensor's dtype for messages (`F8_E4M3`, or `not a plain tensor`).
fn dtype_name(e: &Entry) -> String {
    e.dtype()
        .map_or_else(|| "not a plain tensor".into(), |d| format!("{d:?}"))
}

fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// The number of blocked-layout scale bytes of a `[rows, cols]` (padded) MXFP8 weight.
pub fn mx_scale_len(rows: usize, cols: usize) -> usize {
    round_up(rows, 128) * round_up(cols / MX_BLOCK, 4)
}

/// The offset of the scale of (row `r`, block column `c`) in cuBLAS's blocked layout with `col_tiles` tiles of 4
/// block columns per tile row.
pub fn blocked_offset(r: usize, c: usize, col_tiles: usize) -> usize {
    ((r / 128) * col_tiles + c / 4) * 512 + (r % 32) * 16 + ((r % 128) / 32) * 4 + c % 4
}

/// An OCP float8 E4M3 (`float8_e4m3fn`: no infinities, 0x7f/0xff NaN) byte as f32.
pub fn e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = ((b >> 3) & 0xf, b & 7);
    if e == 0xf && m == 7 {
        return f32::NAN;
    }
    let v = if e == 0 {
        m as f32 * (2f32).powi(-9)
    } else {
        (8 + m) as f32 * (2f32).powi(e as i32 - 10)
    };
    sign * v
}

/// An OCP float8 E5M2 byte as f32 (the upper half of an f16).
pub fn e5m2_to_f32(b: u8) -> f32 {
    half::f16::from_bits((b as u16) << 8).to_f32()
}

/// An E8M0 scale byte as f32 (`2^(e-127)`; 255 is NaN).
pub fn e8m0_to_f32(e: u8) -> f32 {
    match e {
        255 => f32::NAN,
        0 => f32::from_bits(1 << 22),
        e => f32::from_bits((e as u32) << 23),
    }
}

/// True when `stored` is `shape` zero-padded to multiples of the MXFP8 block (2-D).
pub(crate) fn pads_to(shape: &[usize], stored: &[usize]) -> bool {
    shape.len() == 2
        && stored.len() == 2
        && shape
            .iter()
            .zip(stored)
            .all(|(s, p)| round_up(*s, MX_BLOCK) == *p)
}

/// The dequantized values of a quantized weight: `values` of the stored `[rows, cols]` tensor, cut to `shape`.
pub(crate) fn dequantize(
    key: &str,
    values: Vec<f32>,
    stored: &[usize],
    scale: &Scale,
    shape: &[usize],
) -> std::result::Result<Vec<f32>, GraphError> {
    let bad = |reason: String| GraphError::Tensor {
        name: key.to_string(),
        reason,
    };
    let cols = stored.get(1).copied().unwrap_or(1);
    let (n, k) = (shape[0], shape.get(1).copied().unwrap_or(1));
    let mut out = Vec::with_capacity(n * k);
    match scale {
        Scale::PerTensor(s) => {
            for r in 0..n {
                out.extend(values[r * cols..r * cols + k].iter().map(|v| v * s));
            }
        }
        Scale::Mx(entry) => {
            let bytes = entry
                .bytes()
                .ok_or_else(|| bad("its MXFP8 scales are not a contiguous tensor".into()))?;
            let col_tiles = (cols / MX_BLOCK).div_ceil(4);
            for r in 0..n {
                for c in 0..k {
                    let e = bytes[blocked_offset(r, c / MX_BLOCK, col_tiles)];
                    if e == 255 {
                        return Err(bad(format!(
                            "its E8M0 scale of row {r}, block {} is NaN (255)",
                            c / MX_BLOCK
                        )));
                    }
                    out.push(values[r * cols + c] * e8m0_to_f32(e));
                }
            }
        }
    }
    Ok(out)
}

/// One quantized layer's description (`comfy_quant` tag or metadata entry).
struct LayerConf {
    format: String,
    /// Where it was declared, for messages.
    source: String,
}

fn parse_conf(path: &Path, layer: &str, source: &str, v: &serde_json::Value) -> Result<LayerConf> {
    let format = match v {
        serde_json::Value::Object(o) => o.get("format").and_then(|f| f.as_str()),
        _ => None,
    };
    let format = format.ok_or_else(|| {
        err(
            path,
            format!("layer '{layer}': {source} is {v}, expected a JSON object with a string \"format\""),
        )
    })?;
    Ok(LayerConf {
        format: format.to_string(),
        source: source.to_string(),
    })
}

/// Turns ComfyUI's quantized Linears (`comfy_quant` tags, `_quantization_metadata`, the legacy `scaled_fp8`
/// layout) into weights dequantized on read; every layer is checked here, before anything is written. Keys are
/// the file's (prefixes are stripped later).
pub(crate) fn dequantize_layers(
    path: &Path,
    raw: Vec<(String, Entry)>,
    metadata: &HashMap<String, String>,
) -> Result<Vec<(String, Entry)>> {
    let mut map: BTreeMap<String, Entry> = raw.into_iter().collect();
    let mut layers: BTreeMap<String, LayerConf> = BTreeMap::new();
    // Per-layer tags.
    let tags: Vec<String> = map
        .keys()
        .filter(|k| k.ends_with(".comfy_quant"))
        .cloned()
        .collect();
    for tag in tags {
        let e = map.remove(&tag).expect("listed");
        let layer = tag.trim_end_matches(".comfy_quant").to_string();
        let text = match (e.dtype(), e.bytes()) {
            (Some(Dtype::U8 | Dtype::I8), Some(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        }
        .ok_or_else(|| {
            err(
                path,
                format!("key '{tag}': expected a uint8 tensor holding UTF-8 JSON"),
            )
        })?;
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| err(path, format!("key '{tag}': not JSON ({e}): {text:?}")))?;
        layers.insert(
            layer.clone(),
            parse_conf(path, &layer, &format!("its tag '{tag}'"), &v)?,
        );
    }
    // Older files: the safetensors metadata lists the layers.
    if let Some(text) = metadata.get("_quantization_metadata") {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            err(
                path,
                format!("metadata '_quantization_metadata' is not JSON: {e}"),
            )
        })?;
        let listed = v.get("layers").and_then(|l| l.as_object()).ok_or_else(|| {
            err(
                path,
                "metadata '_quantization_metadata': expected {\"layers\": {LAYER: {\"format\": ...}}}".into(),
            )
        })?;
        for (layer, conf) in listed {
            // Some packs list layers without the file's `model.diffusion_model.` prefix.
            let layer = if map.contains_key(&format!("{layer}.weight")) {
                layer.clone()
            } else {
                crate::weights::STRIP_PREFIXES
                    .iter()
                    .map(|p| format!("{p}{layer}"))
                    .find(|l| map.contains_key(&format!("{l}.weight")))
                    .unwrap_or_else(|| layer.clone())
            };
            if let std::collections::btree_map::Entry::Vacant(slot) = layers.entry(layer) {
                let conf = parse_conf(path, slot.key(), "metadata '_quantization_metadata'", conf)?;
                slot.insert(conf);
            }
        }
    }
    // The oldest layout: a `scaled_fp8` marker and per-tensor `scale_weight`s.
    if let Some(marker) = map.keys().find(|k| k.ends_with("scaled_fp8")).cloned() {
        map.remove(&marker);
        let scaled: Vec<String> = map
            .keys()
            .filter(|k| k.ends_with(".scale_weight"))
            .cloned()
            .collect();
        for k in scaled {
            let layer = k.trim_end_matches(".scale_weight").to_string();
            let e = map.remove(&k).expect("listed");
            map.insert(format!("{layer}.weight_scale"), e);
            layers.entry(layer).or_insert(LayerConf {
                format: "float8_e4m3fn".into(),
                source: format!("the legacy marker '{marker}'"),
            });
        }
        map.retain(|k, _| !k.ends_with(".scale_input"));
    }
    for (layer, conf) in &layers {
        let wkey = format!("{layer}.weight");
        let skey = format!("{layer}.weight_scale");
        let weight = map.remove(&wkey).ok_or_else(|| {
            err(
                path,
                format!(
                    "layer '{layer}' is declared {} by {} but the file has no '{wkey}'",
                    conf.format, conf.source
                ),
            )
        })?;
        let scale = map.remove(&skey).ok_or_else(|| {
            err(
                path,
                format!(
                    "key '{wkey}' ({} by {}): expected its scale '{skey}', which is missing",
                    conf.format, conf.source
                ),
            )
        })?;
        map.remove(&format!("{layer}.input_scale"));
        let stored = weight.shape().to_vec();
        let dtype = weight.dtype();
        let entry = match conf.format.as_str() {
            "mxfp8" => {
                if dtype != Some(Dtype::F8_E4M3) || stored.len() != 2 {
                    return Err(err(
                        path,
                        format!(
                            "key '{wkey}' (mxfp8) has dtype {} and shape {stored:?}, expected a 2-D F8_E4M3 tensor",
                            dtype_name(&weight)
                        ),
                    ));
                }
                if stored[0] % MX_BLOCK != 0 || stored[1] % MX_BLOCK != 0 {
                    return Err(err(
                        path,
                        format!("key '{wkey}' (mxfp8) has shape {stored:?}, expected multiples of {MX_BLOCK} (padded)"),
                    ));
                }
                let want = mx_scale_len(stored[0], stored[1]);
                let n: usize = scale.shape().iter().product();
                if !matches!(scale.dtype(), Some(Dtype::U8 | Dtype::F8_E8M0)) || scale.bytes().is_none() || n != want {
                    return Err(err(
                        path,
                        format!(
                            "key '{skey}' has dtype {} and {n} element(s) (shape {:?}), expected {want} E8M0 bytes \
                             (U8 or F8_E8M0): the blocked 128x4 layout of {}x{} block scales of the {stored:?} weight",
                            dtype_name(&scale),
                            scale.shape(),
                            stored[0],
                            stored[1] / MX_BLOCK
                        ),
                    ));
                }
                Entry::Quant {
                    q: Box::new(weight),
                    scale: Scale::Mx(Box::new(scale)),
                    shape: stored,
                }
            }
            f @ ("float8_e4m3fn" | "float8_e5m2") => {
                let want = if f == "float8_e4m3fn" { Dtype::F8_E4M3 } else { Dtype::F8_E5M2 };
                if dtype != Some(want) {
                    return Err(err(
                        path,
                        format!("key '{wkey}' ({f}) has dtype {}, expected {want:?}", dtype_name(&weight)),
                    ));
                }
                let value = match (scale.dtype(), scale.bytes()) {
                    (Some(Dtype::F32), Some(b)) if b.len() == 4 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    (Some(Dtype::BF16), Some(b)) if b.len() == 2 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                    (Some(Dtype::F16), Some(b)) if b.len() == 2 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    _ => {
                        return Err(err(
                            path,
                            format!(
                                "key '{skey}' has dtype {} and shape {:?}, expected one F32 (or BF16/F16) per-tensor scale",
                                dtype_name(&scale),
                                scale.shape()
                            ),
                        ))
                    }
                };
                if !value.is_finite() {
                    return Err(err(path, format!("key '{skey}': the scale {value} is not finite")));
                }
                Entry::Quant {
                    q: Box::new(weight),
                    scale: Scale::PerTensor(value),
                    shape: stored,
                }
            }
            other => {
                return Err(err(
                    path,
                    format!(
                        "layer '{layer}' uses the quantization format \"{other}\" ({}), which the exporter does not \
                         read: supported are mxfp8, float8_e4m3fn, float8_e5m2 (dequantize it to bf16 first)",
                        conf.source
                    ),
                ))
            }
        };
        map.insert(wkey, entry);
    }
    Ok(map.into_iter().collect())
}

/// An error for a float8 tensor that no quantization tag describes (its scale is unknown).
pub(crate) fn reject_unscaled_float8(path: &Path, raw: &[(String, Entry)]) -> Result<()> {
    let bad: Vec<String> = raw
        .iter()
        .filter(|(_, e)| matches!(e.dtype(), Some(Dtype::F8_E4M3 | Dtype::F8_E5M2)))
        .map(|(k, e)| format!("'{k}' ({:?})", e.dtype().expect("mapped")))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(err(
        path,
        format!(
            "{} float8 tensor(s) without a scale: {}; expected each with '<layer>.weight_scale' and a \
             '<layer>.comfy_quant' tag (or an entry in the metadata '_quantization_metadata')",
            bad.len(),
            bad.join(", ")
        ),
    ))
}

/// Recombines ComfyUI's split PiT modulation (`pixel_blocks.i.adaLN_modulation_msa`/`_mlp`, weight and bias)
/// into the official `pixel_blocks.i.adaLN_modulation.0`, per pixel: `3 * D_pix` rows of msa, then of mlp
/// (`D_pix` from `pixel_blocks.i.norm1.weight`).
pub(crate) fn join_split_modulation(path: &Path, entries: &mut BTreeMap<String, Entry>) -> Result<()> {
    let msa: Vec<String> = entries
        .keys()
        .filter(|k| k.starts_with("pixel_blocks.") && k.contains(".adaLN_modulation_msa."))
        .cloned()
        .collect();
    for msa_key in msa {
        let mlp_key = msa_key.replace(".adaLN_modulation_msa.", ".adaLN_modulation_mlp.");
        let block = msa_key.split(".adaLN_modulation_msa.").next().expect("contains");
        let leaf = msa_key.rsplit('.').next().expect("has a dot");
        let norm = format!("{block}.norm1.weight");
        let dp = match entries.get(&norm).map(|e| e.shape().to_vec()) {
            Some(s) if s.len() == 1 => s[0],
            _ => {
                return Err(err(
                    path,
                    format!(
                        "key '{msa_key}': the split PiT modulation needs '{norm}' [D_pix] to recombine it"
                    ),
                ))
            }
        };
        let (Some(a), Some(b)) = (entries.remove(&msa_key), entries.remove(&mlp_key)) else {
            return Err(err(path, format!("key '{msa_key}' has no partner '{mlp_key}'")));
        };
        if a.shape() != b.shape() || a.shape().is_empty() || a.shape()[0] % (3 * dp) != 0 {
            return Err(err(
                path,
                format!(
                    "keys '{msa_key}' {:?} and '{mlp_key}' {:?}: expected equal shapes with rows a multiple of 3 x D_pix = {}",
                    a.shape(),
                    b.shape(),
                    3 * dp
                ),
            ));
        }
        let mut shape = a.shape().to_vec();
        shape[0] *= 2;
        let key = format!("{block}.adaLN_modulation.0.{leaf}");
        if entries.contains_key(&key) {
            return Err(err(
                path,
                format!("key '{key}' appears twice: as is and split into '{msa_key}'/'{mlp_key}'"),
            ));
        }
        entries.insert(
            key,
            Entry::Interleave {
                parts: vec![a, b],
                chunk_rows: 3 * dp,
                shape,
            },
        );
    }
    if let Some(k) = entries.keys().find(|k| k.contains(".adaLN_modulation_mlp.")) {
        return Err(err(
            path,
            format!("key '{k}' has no partner '{}'", k.replace("_mlp.", "_msa.")),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float8_decoding_is_exact() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0); // e = 7, m = 0
        assert_eq!(e4m3_to_f32(0x3c), 1.5);
        assert_eq!(e4m3_to_f32(0xc4), -3.0);
        assert_eq!(e4m3_to_f32(0x7e), 448.0); // the largest finite value
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9)); // the smallest subnormal
        assert!(e4m3_to_f32(0x7f).is_nan());
        assert_eq!(e5m2_to_f32(0x3c), 1.0);
        assert_eq!(e8m0_to_f32(127), 1.0);
        assert_eq!(e8m0_to_f32(130), 8.0);
        assert_eq!(e8m0_to_f32(0), 2f32.powi(-127));
    }

    #[test]
    fn blocked_layout_matches_the_cublas_tiles() {
        // Inside a tile: (r % 32) * 16 + (r / 32) * 4 + c.
        assert_eq!(blocked_offset(0, 0, 1), 0);
        assert_eq!(blocked_offset(0, 3, 1), 3);
        assert_eq!(blocked_offset(1, 0, 1), 16);
        assert_eq!(blocked_offset(32, 0, 1), 4);
        assert_eq!(blocked_offset(127, 3, 1), 31 * 16 + 12 + 3);
        // Tiles are row-major over (row tile, column tile).
        assert_eq!(blocked_offset(0, 4, 2), 512);
        assert_eq!(blocked_offset(128, 0, 2), 1024);
        // Every byte of a 256 x 8 grid has its own offset.
        let mut seen = vec![false; mx_scale_len(256, 8 * 32)];
        for r in 0..256 {
            for c in 0..8 {
                let o = blocked_offset(r, c, 2);
                assert!(!seen[o]);
                seen[o] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(mx_scale_len(48, 64), 128 * 4);
    }
}

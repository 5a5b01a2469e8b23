//! Files in and out: seeded noise, `.npy` f32 arrays, PNG images; every output is written to a temporary name in
//! the target directory and renamed, so an error never leaves a partial file.

use crate::error::{Result, RuntimeError};
use ndarray::{Array3, Array4, ArrayD, ArrayView3, ArrayView4, Axis, IxDyn};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Initial noise: `ChaCha8Rng::seed_from_u64(seed)` drawing `rand_distr::StandardNormal` f32 values, one stream for
/// all images, filled in order image, channel, row, column (row-major `[K, C, H, W]`).
pub fn seeded_noise(seed: u64, shape: [usize; 4]) -> Array4<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
    Array4::from_shape_vec(shape, data).expect("shape matches length")
}

/// Reads a little-endian `.npy` array of dtype `<f4` (or `<f8`, converted), C order.
pub fn read_npy(path: &Path) -> Result<ArrayD<f32>> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
    let bad = |reason: String| RuntimeError::Npy {
        path: path.to_path_buf(),
        reason,
        source: None,
    };
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (bad magic)".into()));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated or non-UTF-8 header".into()))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[i..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|d| d.split('\'').nth(1))
        .ok_or_else(|| bad("no descr".into()))?;
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        return Err(bad("Fortran-order arrays are not supported".into()));
    }
    let shape_s = field("shape")
        .and_then(|s| s.strip_prefix('(')?.split(')').next())
        .ok_or_else(|| bad("no shape".into()))?;
    let shape: Vec<usize> = shape_s
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(format!("bad shape entry '{s}'"))))
        .collect::<Result<_>>()?;
    let n: usize = shape.iter().product();
    let data = &bytes[start + hlen..];
    let values: Vec<f32> = match descr {
        "<f4" => {
            if data.len() != n * 4 {
                return Err(bad(format!(
                    "{} data bytes for shape {shape:?} of <f4",
                    data.len()
                )));
            }
            data.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
        "<f8" => {
            if data.len() != n * 8 {
                return Err(bad(format!(
                    "{} data bytes for shape {shape:?} of <f8",
                    data.len()
                )));
            }
            data.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect()
        }
        other => {
            return Err(bad(format!(
                "dtype '{other}' is not supported (expected float32 '<f4')"
            )))
        }
    };
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| RuntimeError::Npy {
        path: path.to_path_buf(),
        reason: format!("the data does not fit the shape {shape:?}"),
        source: Some(e.into()),
    })
}

/// Encodes an f32 array as `.npy` version 1.0 bytes.
pub fn npy_bytes(shape: &[usize], data: impl IntoIterator<Item = f32>) -> Vec<u8> {
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let pad = 64 - (10 + header.len() + 1) % 64;
    header.extend(std::iter::repeat_n(' ', pad % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes an f32 array as `.npy` (atomically).
pub fn write_npy(path: &Path, x: ArrayView4<f32>) -> Result<()> {
    let bytes = npy_bytes(x.shape(), x.iter().copied());
    write_atomic(path, &bytes)
}

/// `clip((x + 1) * 127.5 + 0.5, 0, 255)` truncated to u8 (the official `fp2uint8`).
pub fn to_u8(x: f32) -> u8 {
    ((x + 1.0) * 127.5 + 0.5).clamp(0.0, 255.0) as u8
}

/// One `[3, H, W]` image in [-1, 1] to interleaved RGB8.
pub fn image_rgb8(img: ArrayView3<f32>) -> Vec<u8> {
    let (c, h, w) = img.dim();
    let mut out = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            for ch in 0..3 {
                // Grey-scale models (C = 1) repeat their channel.
                out.push(to_u8(img[[ch.min(c - 1), y, x]]));
            }
        }
    }
    out
}

/// Tiles `[K, 3, H, W]` into one RGB8 image of `cols = ceil(sqrt(K))` columns (black where a row is short).
pub fn grid_rgb8(x: ArrayView4<f32>) -> (Vec<u8>, usize, usize) {
    let (k, _, h, w) = x.dim();
    let cols = (k as f64).sqrt().ceil().max(1.0) as usize;
    let rows = k.div_ceil(cols);
    let (gw, gh) = (cols * w, rows * h);
    let mut out = vec![0u8; gw * gh * 3];
    for (i, img) in x.outer_iter().enumerate() {
        let tile = image_rgb8(img);
        let (r, c) = (i / cols, i % cols);
        for y in 0..h {
            let dst = ((r * h + y) * gw + c * w) * 3;
            out[dst..dst + w * 3].copy_from_slice(&tile[y * w * 3..(y + 1) * w * 3]);
        }
    }
    (out, gw, gh)
}

/// PNG-encodes interleaved RGB8.
pub fn png_bytes(path: &Path, rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let err = |source: png::EncodingError| RuntimeError::Png {
        path: path.to_path_buf(),
        source,
    };
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(err)?;
        w.write_image_data(rgb).map_err(err)?;
    }
    Ok(buf)
}

/// Paths of the per-image files for `K > 1`: `out.png` -> `out_000.png`, `out_001.png`, ...
pub fn numbered_paths(path: &Path, k: usize) -> Vec<PathBuf> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    (0..k)
        .map(|i| path.with_file_name(format!("{stem}_{i:03}.{ext}")))
        .collect()
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_all_atomic(&[(path.to_path_buf(), bytes.to_vec())])
}

/// Writes several files: all temporaries first, then all renames; on any error the temporaries are removed and
/// no target file is created.
pub fn write_all_atomic(files: &[(PathBuf, Vec<u8>)]) -> Result<()> {
    let mut temps = Vec::new();
    let result = (|| {
        for (path, bytes) in files {
            let tmp = temp_name(path);
            temps.push(tmp.clone());
            let mut f = std::fs::File::create(&tmp).map_err(|e| RuntimeError::io(path, e))?;
            f.write_all(bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| RuntimeError::io(path, e))?;
        }
        for ((path, _), tmp) in files.iter().zip(&temps) {
            std::fs::rename(tmp, path).map_err(|e| RuntimeError::io(path, e))?;
        }
        Ok(())
    })();
    if result.is_err() {
        for tmp in &temps {
            let _ = std::fs::remove_file(tmp);
        }
    }
    result
}

/// Reads text-encoder hidden states from `.npy` (f32) or safetensors (F32, F16 or BF16; the only tensor, or the
/// one named `text`, `embeddings`, `prompt_embeds` or `hidden_states`). Accepts `[L, E]` (one prompt) or
/// `[K, L, E]`; `L` and `E` must be the model's `len` and `dim`.
pub fn read_text_embeddings(path: &Path, len: usize, dim: usize) -> Result<Array3<f32>> {
    let bad = |reason: String| RuntimeError::Npy {
        path: path.to_path_buf(),
        reason,
        source: None,
    };
    let head = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| RuntimeError::io(path, e))?;
        let mut h = [0u8; 9];
        let n = f.read(&mut h).map_err(|e| RuntimeError::io(path, e))?;
        h[..n].to_vec()
    };
    let arr: ArrayD<f32> = if head.starts_with(b"\x93NUMPY") {
        crate::io::read_npy(path)?
    } else if head.len() == 9 && head[8] == b'{' {
        let bytes = std::fs::read(path).map_err(|e| RuntimeError::io(path, e))?;
        read_safetensors_tensor(&bytes).map_err(bad)?
    } else {
        return Err(bad(
            "not a .npy or safetensors file (text embeddings: f32 .npy, or F32/F16/BF16 safetensors)".into(),
        ));
    };
    let shape = arr.shape().to_vec();
    let arr = match shape.len() {
        2 => arr.insert_axis(Axis(0)),
        3 => arr,
        _ => {
            return Err(bad(format!(
                "text embeddings have shape {shape:?}; expected [{len}, {dim}] or [K, {len}, {dim}]"
            )))
        }
    };
    let a3: Array3<f32> = arr.into_dimensionality().expect("rank 3");
    if a3.shape()[1] != len || a3.shape()[2] != dim {
        return Err(bad(format!(
            "text embeddings have shape {shape:?}; the model takes [K, {len}, {dim}] ({len} tokens of the text \
             encoder's {dim}-wide last hidden state)"
        )));
    }
    if a3.iter().any(|v| !v.is_finite()) {
        return Err(bad("text embeddings contain NaN or infinity".into()));
    }
    Ok(a3)
}

fn read_safetensors_tensor(bytes: &[u8]) -> std::result::Result<ArrayD<f32>, String> {
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = bytes
        .get(8..8 + n)
        .and_then(|h| serde_json::from_slice(h).ok())
        .ok_or("truncated or invalid safetensors header")?;
    let obj = header.as_object().ok_or("safetensors header is not an object")?;
    let names: Vec<&String> = obj.keys().filter(|k| *k != "__metadata__").collect();
    let name = if names.len() == 1 {
        names[0].as_str()
    } else {
        ["text", "embeddings", "prompt_embeds", "hidden_states"]
            .into_iter()
            .find(|k| obj.contains_key(*k))
            .ok_or_else(|| {
                format!(
                    "{} tensors ({}): keep one, or name it text / embeddings / prompt_embeds / hidden_states",
                    names.len(),
                    names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )
            })?
    };
    let info = &obj[name];
    let dtype = info["dtype"].as_str().unwrap_or("?");
    let shape: Vec<usize> = info["shape"]
        .as_array()
        .ok_or("tensor without shape")?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or("bad shape entry"))
        .collect::<std::result::Result<_, _>>()?;
    let off = info["data_offsets"]
        .as_array()
        .ok_or("tensor without data_offsets")?;
    let (a, b) = (
        off[0].as_u64().ok_or("bad offset")? as usize,
        off[1].as_u64().ok_or("bad offset")? as usize,
    );
    let data = bytes
        .get(8 + n + a..8 + n + b)
        .ok_or("tensor data runs past the end of the file")?;
    let vals: Vec<f32> = match dtype {
        "F32" => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F16" => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(format!(
                "tensor '{name}' has dtype {other}, expected F32, F16 or BF16"
            ))
        }
    };
    ArrayD::from_shape_vec(shape.clone(), vals)
        .map_err(|_| format!("tensor '{name}': {} values for shape {shape:?}", data.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp2uint8() {
        assert_eq!(to_u8(-1.0), 0);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(0.0), 128); // 127.5 + 0.5
        assert_eq!(to_u8(-0.004), 127); // 127.99 truncates
        assert_eq!(to_u8(5.0), 255);
        assert_eq!(to_u8(-5.0), 0);
        assert_eq!(to_u8(f32::NAN), 0);
    }

    #[test]
    fn noise_is_deterministic_and_standard() {
        let a = seeded_noise(0, [2, 3, 8, 8]);
        assert_eq!(a, seeded_noise(0, [2, 3, 8, 8]));
        assert_ne!(a, seeded_noise(1, [2, 3, 8, 8]));
        // prefix property: the first image does not depend on K
        assert_eq!(
            a.slice(ndarray::s![0..1, .., .., ..]),
            seeded_noise(0, [1, 3, 8, 8])
        );
        let big = seeded_noise(3, [1, 3, 64, 64]);
        let mean = big.mean().unwrap();
        let var = big.mapv(|v| (v - mean) * (v - mean)).mean().unwrap();
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
    }

    #[test]
    fn npy_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let x = seeded_noise(5, [2, 3, 4, 5]);
        write_npy(&p, x.view()).unwrap();
        let back = read_npy(&p).unwrap();
        assert_eq!(back.shape(), &[2, 3, 4, 5]);
        assert_eq!(back.as_slice().unwrap(), x.as_slice().unwrap());
        assert_eq!((std::fs::read(&p).unwrap().len() - 2 * 3 * 4 * 5 * 4) % 64, 0);
        std::fs::write(&p, b"nope").unwrap();
        assert!(read_npy(&p).is_err());
    }

    #[test]
    fn grid_and_names() {
        let x = Array4::from_elem((3, 3, 2, 2), 1.0f32);
        let (rgb, w, h) = grid_rgb8(x.view());
        assert_eq!((w, h), (4, 4));
        assert_eq!(rgb[0], 255);
        assert_eq!(rgb[(2 * 4 + 2) * 3], 0); // empty fourth tile
        let p = numbered_paths(Path::new("/tmp/out.png"), 2);
        assert_eq!(p[1], Path::new("/tmp/out_001.png"));
    }
}

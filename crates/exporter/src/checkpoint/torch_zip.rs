//! The zip container of `torch.save` (PyTorch >= 1.6): a STORED zip whose records are
//! `<archive>/data.pkl` (the pickle), `<archive>/data/<key>` (one record per storage, raw
//! little-endian elements), `<archive>/byteorder`, `<archive>/version` and a few bookkeeping files.
//!
//! The archive is memory-mapped; only the central directory, the local headers and `data.pkl` are
//! read when a checkpoint is opened. A tensor becomes a byte range of its storage record (offset and
//! strides respected), read when the model is written. Zip64 archives (files past 4 GiB, such as the
//! 12.8 GB ImageNet checkpoints) are supported; compressed records are an error.

use super::pickle::{self, StorageDType, TensorRef, Value};
use std::collections::HashMap;

/// One record of the zip archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// Record name.
    pub name: String,
    /// Offset of the data in the file.
    pub data_start: usize,
    /// Data length.
    pub size: usize,
    /// CRC-32 from the central directory.
    pub crc32: u32,
}

fn le16(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}
fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]).into()
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn get(b: &[u8], at: usize, n: usize, what: &str) -> Result<(), String> {
    match at.checked_add(n) {
        Some(e) if e <= b.len() => Ok(()),
        _ => Err(format!(
            "truncated zip archive: {what} at byte {at} runs past the end"
        )),
    }
}

fn to_usize(v: u64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} does not fit in memory addresses"))
}

/// Lists the records of a zip archive (central directory, with zip64 extensions).
pub fn list_entries(b: &[u8]) -> Result<Vec<ZipEntry>, String> {
    const EOCD: u32 = 0x0605_4b50;
    let min = 22;
    if b.len() < min {
        return Err("too short for a zip archive".into());
    }
    let lowest = b.len().saturating_sub(min + 65535);
    let eocd = (lowest..=b.len() - min)
        .rev()
        .find(|&i| le32(b, i) == u64::from(EOCD))
        .ok_or("no end-of-central-directory record (truncated or not a zip archive)")?;
    let mut count = le16(b, eocd + 10) as u64;
    let mut cd_size = le32(b, eocd + 12);
    let mut cd_offset = le32(b, eocd + 16);
    // Zip64: a locator right before the EOCD points at the zip64 EOCD record.
    if eocd >= 20 && le32(b, eocd - 20) == 0x0706_4b50 {
        let rec = to_usize(le64(b, eocd - 20 + 8), "zip64 record offset")?;
        get(b, rec, 56, "zip64 end-of-central-directory record")?;
        if le32(b, rec) != 0x0606_4b50 {
            return Err("bad zip64 end-of-central-directory signature".into());
        }
        count = le64(b, rec + 32);
        cd_size = le64(b, rec + 40);
        cd_offset = le64(b, rec + 48);
    }
    let (mut at, end) = (
        to_usize(cd_offset, "central directory offset")?,
        to_usize(cd_offset.saturating_add(cd_size), "central directory end")?,
    );
    get(b, at, end.saturating_sub(at), "central directory")?;
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    for _ in 0..count {
        get(b, at, 46, "central directory header")?;
        if le32(b, at) != 0x0201_4b50 {
            return Err(format!("bad central directory signature at byte {at}"));
        }
        let method = le16(b, at + 10);
        let crc32 = le32(b, at + 16) as u32;
        let mut csize = le32(b, at + 20);
        let mut usize_ = le32(b, at + 24);
        let (nlen, xlen, clen) = (le16(b, at + 28), le16(b, at + 30), le16(b, at + 32));
        let mut lho = le32(b, at + 42);
        get(b, at + 46, nlen + xlen + clen, "central directory names")?;
        let name = String::from_utf8_lossy(&b[at + 46..at + 46 + nlen]).into_owned();
        // Zip64 extended information: the 64-bit values of the fields that are 0xFFFFFFFF, in order.
        let mut x = at + 46 + nlen;
        let xend = x + xlen;
        while x + 4 <= xend {
            let (id, len) = (le16(b, x), le16(b, x + 2));
            if id == 0x0001 {
                let mut p = x + 4;
                for field in [&mut usize_, &mut csize, &mut lho] {
                    if *field == 0xFFFF_FFFF && p + 8 <= x + 4 + len {
                        *field = le64(b, p);
                        p += 8;
                    }
                }
            }
            x += 4 + len;
        }
        if method != 0 {
            return Err(format!(
                "record '{name}' is compressed (method {method}); torch.save writes STORED records only"
            ));
        }
        if csize != usize_ {
            return Err(format!("record '{name}': stored size {csize} != size {usize_}"));
        }
        let lho = to_usize(lho, "local header offset")?;
        get(b, lho, 30, "local header")?;
        if le32(b, lho) != 0x0403_4b50 {
            return Err(format!("bad local header signature for record '{name}'"));
        }
        // The local extra field differs from the central one (torch pads it to align the data).
        let data_start = lho + 30 + le16(b, lho + 26) + le16(b, lho + 28);
        let size = to_usize(usize_, "record size")?;
        get(b, data_start, size, &format!("record '{name}'"))?;
        out.push(ZipEntry {
            name,
            data_start,
            size,
            crc32,
        });
        at += 46 + nlen + xlen + clen;
    }
    Ok(out)
}

/// CRC-32 (IEEE, as in zip) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data
        .iter()
        .fold(!0u32, |c, &b| t[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// Where the values of one tensor are in the mapped file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorLocation {
    /// Checkpoint key.
    pub name: String,
    /// Element type.
    pub dtype: StorageDType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Byte offset of element `[0, 0, ...]` in the file.
    pub start: usize,
    /// Strides in elements; `None` when the tensor is contiguous (row-major), so its bytes are
    /// `start .. start + numel * size`.
    pub strides: Option<Vec<usize>>,
    /// The storage record (for the CRC check).
    pub record: ZipEntry,
}

/// The tensors of a `torch.save` archive and what was skipped.
#[derive(Debug, Clone, Default)]
pub struct TorchCheckpoint {
    /// Tensors of the state dict, in pickle order.
    pub tensors: Vec<TensorLocation>,
    /// Where the state dict was found (`state_dict` or the root).
    pub source: String,
    /// Top-level keys other than the state dict (optimizer states, callbacks, ...), never read.
    pub skipped_top_level: Vec<String>,
    /// Entries of the state dict that are not tensors.
    pub non_tensors: Vec<String>,
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Reads the archive listing and the pickle, and locates every tensor of the state dict
/// (`obj["state_dict"]` when the root is a dict holding one, else the root dict).
pub fn open(b: &[u8]) -> Result<TorchCheckpoint, String> {
    let entries = list_entries(b)?;
    let pkl = entries
        .iter()
        .filter(|e| e.name.ends_with("/data.pkl") || e.name == "data.pkl")
        .min_by_key(|e| e.name.len())
        .ok_or("no data.pkl record: not a torch.save archive")?;
    let prefix = pkl.name.strip_suffix("data.pkl").unwrap_or("").to_string();
    let records: HashMap<&str, &ZipEntry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    if let Some(bo) = records.get(format!("{prefix}byteorder").as_str()) {
        let v = &b[bo.data_start..bo.data_start + bo.size];
        if v != b"little" {
            return Err(format!(
                "byteorder record says '{}'; only little-endian archives are supported",
                String::from_utf8_lossy(v)
            ));
        }
    }
    let pkl_bytes = &b[pkl.data_start..pkl.data_start + pkl.size];
    if crc32(pkl_bytes) != pkl.crc32 {
        return Err(format!(
            "record '{}' fails its CRC-32 check (corrupt file)",
            pkl.name
        ));
    }
    let root = pickle::load(pkl_bytes).map_err(|e| format!("{} in record '{}'", e, pkl.name))?;
    let top = root.dict_items().ok_or_else(|| {
        "the pickled object is not a dict (expected a state dict or a checkpoint dict)".to_string()
    })?;
    let (dict, source, skipped) = match root.get("state_dict") {
        Some(sd @ Value::Dict(_)) => {
            let skipped = top
                .iter()
                .filter_map(|(k, _)| k.as_str().map(str::to_string))
                .filter(|k| k != "state_dict")
                .collect();
            (sd.dict_items().expect("dict"), "state_dict".to_string(), skipped)
        }
        _ => (top, "root".to_string(), Vec::new()),
    };
    let mut ck = TorchCheckpoint {
        source,
        skipped_top_level: skipped,
        ..Default::default()
    };
    for (k, v) in dict {
        let Some(name) = k.as_str() else { continue };
        let Value::Tensor(t) = v else {
            ck.non_tensors.push(name.to_string());
            continue;
        };
        ck.tensors.push(locate(name, &t, &prefix, &records)?);
    }
    Ok(ck)
}

fn locate(
    name: &str,
    t: &TensorRef,
    prefix: &str,
    records: &HashMap<&str, &ZipEntry>,
) -> Result<TensorLocation, String> {
    let st = &t.storage;
    let dtype = st.dtype.ok_or_else(|| {
        format!(
            "tensor '{name}': storage type torch.{} is not supported",
            st.type_name
        )
    })?;
    let rec_name = format!("{prefix}data/{}", st.key);
    let rec = records
        .get(rec_name.as_str())
        .ok_or_else(|| format!("tensor '{name}': storage record '{rec_name}' is missing"))?;
    let es = dtype.size();
    if rec.size < st.numel * es {
        return Err(format!(
            "tensor '{name}': record '{rec_name}' has {} bytes, the storage needs {}",
            rec.size,
            st.numel * es
        ));
    }
    let numel: usize = t.shape.iter().product();
    // Highest element index touched, relative to the storage start.
    let last = if numel == 0 {
        t.offset
    } else {
        t.offset
            + t.shape
                .iter()
                .zip(&t.strides)
                .map(|(n, s)| (n - 1) * s)
                .sum::<usize>()
    };
    if numel > 0 && last >= st.numel {
        return Err(format!(
            "tensor '{name}' (offset {}, shape {:?}, stride {:?}) reads past its storage of {} elements",
            t.offset, t.shape, t.strides, st.numel
        ));
    }
    let contiguous = numel <= 1
        || t.shape
            .iter()
            .zip(t.strides.iter().zip(contiguous_strides(&t.shape)))
            .all(|(n, (s, c))| *n == 1 || *s == c);
    Ok(TensorLocation {
        name: name.to_string(),
        dtype,
        shape: t.shape.clone(),
        start: rec.data_start + t.offset * es,
        strides: if contiguous { None } else { Some(t.strides.clone()) },
        record: (*rec).clone(),
    })
}

/// Copies a strided tensor's elements into row-major order (`es` bytes each).
pub fn gather_strided(file: &[u8], start: usize, shape: &[usize], strides: &[usize], es: usize) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..numel {
        let off: usize = idx.iter().zip(strides).map(|(i, s)| i * s).sum();
        let at = start + off * es;
        out.extend_from_slice(&file[at..at + es]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn strides() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        // a transposed 2x3 view of a 3x2 storage [0..6] (f32 bytes = index)
        let file: Vec<u8> = (0u8..6).flat_map(|i| [i, 0, 0, 0]).collect();
        let g = gather_strided(&file, 0, &[2, 3], &[1, 2], 4);
        let vals: Vec<u8> = g.chunks(4).map(|c| c[0]).collect();
        assert_eq!(vals, vec![0, 2, 4, 1, 3, 5]);
    }

    #[test]
    fn rejects_non_zip() {
        assert!(list_entries(b"not a zip file at all, definitely not")
            .unwrap_err()
            .contains("end-of-central-directory"));
    }
}

//! Reading what the runtime needs from an ONNX file without a backend: the PixelDiT metadata, the opset imports
//! and the list of nodes (for clear "unsupported op" errors).
//!
//! This is a minimal protobuf wire-format walker over `ModelProto`; it memory-maps the file and skips initializer
//! payloads, so it costs milliseconds even for multi-GB models.

use crate::error::{Result, RuntimeError};
use pixeldit_spec::{ModelMetadata, META_FORMAT_VERSION, META_KEY};
use std::path::{Path, PathBuf};

/// One graph node (top-level graph only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name (may be empty in the file).
    pub name: String,
    /// `op_type`.
    pub op_type: String,
    /// Domain (`""` is the default ONNX domain).
    pub domain: String,
}

/// Summary of an ONNX model file.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// The file.
    pub path: PathBuf,
    /// `ir_version`.
    pub ir_version: i64,
    /// `(domain, version)` of each opset import.
    pub opsets: Vec<(String, i64)>,
    /// `metadata_props` in file order.
    pub metadata_props: Vec<(String, String)>,
    /// Nodes of the main graph in file order.
    pub nodes: Vec<NodeInfo>,
    /// `(name, data_type)` of each initializer (ONNX `TensorProto.DataType` codes).
    pub initializer_types: Vec<(String, i32)>,
}

impl ModelInfo {
    /// Scans `path`. Fails with [`RuntimeError::ModelNotFound`] if it does not exist and
    /// [`RuntimeError::InvalidModel`] if it is not a protobuf `ModelProto`.
    pub fn read(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(RuntimeError::ModelNotFound {
                path: path.to_path_buf(),
            });
        }
        let file = std::fs::File::open(path).map_err(|e| RuntimeError::io(path, e))?;
        let len = file.metadata().map_err(|e| RuntimeError::io(path, e))?.len();
        let invalid = |reason: String| RuntimeError::invalid_model(path, reason);
        if len == 0 {
            return Err(invalid("the file is empty".into()));
        }
        // SAFETY: the map is read-only and dropped before returning; a concurrent truncation of the model file
        // would be a user error we cannot guard against (the same holds for ORT and tract).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| RuntimeError::io(path, e))?;
        let mut info = ModelInfo {
            path: path.to_path_buf(),
            ..Default::default()
        };
        parse_model(&map, &mut info).map_err(invalid)?;
        if info.ir_version == 0 && info.nodes.is_empty() {
            return Err(invalid("no ir_version and no graph nodes".into()));
        }
        Ok(info)
    }

    /// The raw value of a metadata key.
    pub fn metadata_prop(&self, key: &str) -> Option<&str> {
        self.metadata_props
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The parsed PixelDiT metadata, or [`RuntimeError::MissingMetadata`] / [`RuntimeError::BadMetadata`].
    pub fn pixeldit_metadata(&self) -> Result<ModelMetadata> {
        let json = self
            .metadata_prop(META_KEY)
            .ok_or_else(|| RuntimeError::MissingMetadata {
                path: self.path.clone(),
                key: META_KEY,
            })?;
        let meta = ModelMetadata::from_json(json).map_err(|e| RuntimeError::BadMetadata {
            path: self.path.clone(),
            key: META_KEY,
            reason: "it does not parse".into(),
            source: Some(e),
        })?;
        if meta.format_version != META_FORMAT_VERSION {
            return Err(RuntimeError::BadMetadata {
                path: self.path.clone(),
                key: META_KEY,
                reason: format!(
                    "format_version {} is not supported (this runtime reads version {META_FORMAT_VERSION})",
                    meta.format_version
                ),
                source: None,
            });
        }
        Ok(meta)
    }

    /// Nodes outside the standard ONNX domains (`""`, `ai.onnx`, `ai.onnx.ml`, `com.microsoft*`).
    pub fn custom_nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| !is_standard_domain(&n.domain))
    }
}

/// Whether ONNX Runtime knows the domain natively.
pub fn is_standard_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx" || domain == "ai.onnx.ml" || domain.starts_with("com.microsoft")
}

/// Reads the PixelDiT metadata of a model file (shorthand for [`ModelInfo::read`] + [`ModelInfo::pixeldit_metadata`]).
pub fn read_metadata(path: &Path) -> Result<ModelMetadata> {
    ModelInfo::read(path)?.pixeldit_metadata()
}

type Wire<'a> = (u32, Field<'a>);

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".into())
    }

    fn next(&mut self) -> std::result::Result<Option<Wire<'a>>, String> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wt) = ((key >> 3) as u32, key & 7);
        let field = match wt {
            0 => Field::Varint(self.varint()?),
            1 | 5 => {
                let n = if wt == 1 { 8 } else { 4 };
                if self.pos + n > self.buf.len() {
                    return Err("truncated fixed-width field".into());
                }
                self.pos += n;
                Field::Fixed
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length overflow")?;
                let end = self
                    .pos
                    .checked_add(n)
                    .filter(|&e| e <= self.buf.len())
                    .ok_or_else(|| {
                        format!("length-delimited field {num} runs past the end of the data ({n} bytes)")
                    })?;
                let b = &self.buf[self.pos..end];
                self.pos = end;
                Field::Bytes(b)
            }
            _ => return Err(format!("unsupported protobuf wire type {wt} (field {num})")),
        };
        if num == 0 {
            return Err("field number 0".into());
        }
        Ok(Some((num, field)))
    }
}

fn string(b: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid UTF-8 in a string field".to_string())
}

fn parse_model(buf: &[u8], info: &mut ModelInfo) -> std::result::Result<(), String> {
    let mut r = Reader::new(buf);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Varint(v)) => info.ir_version = v as i64,
            (7, Field::Bytes(b)) => parse_graph(b, info)?,
            (8, Field::Bytes(b)) => {
                let (mut domain, mut version) = (String::new(), 0i64);
                let mut o = Reader::new(b);
                while let Some((n, f)) = o.next()? {
                    match (n, f) {
                        (1, Field::Bytes(s)) => domain = string(s)?,
                        (2, Field::Varint(v)) => version = v as i64,
                        _ => {}
                    }
                }
                info.opsets.push((domain, version));
            }
            (14, Field::Bytes(b)) => {
                let (mut k, mut v) = (String::new(), String::new());
                let mut o = Reader::new(b);
                while let Some((n, f)) = o.next()? {
                    match (n, f) {
                        (1, Field::Bytes(s)) => k = string(s)?,
                        (2, Field::Bytes(s)) => v = string(s)?,
                        _ => {}
                    }
                }
                info.metadata_props.push((k, v));
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_graph(buf: &[u8], info: &mut ModelInfo) -> std::result::Result<(), String> {
    let mut r = Reader::new(buf);
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(b)) => {
                let mut node = NodeInfo {
                    name: String::new(),
                    op_type: String::new(),
                    domain: String::new(),
                };
                let mut o = Reader::new(b);
                while let Some((n, f)) = o.next()? {
                    match (n, f) {
                        (3, Field::Bytes(s)) => node.name = string(s)?,
                        (4, Field::Bytes(s)) => node.op_type = string(s)?,
                        (7, Field::Bytes(s)) => node.domain = string(s)?,
                        _ => {}
                    }
                }
                info.nodes.push(node);
            }
            (5, Field::Bytes(b)) => {
                let (mut name, mut dt) = (String::new(), 0i32);
                let mut o = Reader::new(b);
                while let Some((n, f)) = o.next()? {
                    match (n, f) {
                        (2, Field::Varint(v)) => dt = v as i32,
                        (8, Field::Bytes(s)) => name = string(s)?,
                        _ => {}
                    }
                }
                info.initializer_types.push((name, dt));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    fn bytes_field(num: u32, b: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(num) << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    #[test]
    fn walks_nodes_opsets_and_metadata() {
        let mut node = Vec::new();
        bytes_field(3, b"attn0", &mut node);
        bytes_field(4, b"RotaryAttention", &mut node);
        bytes_field(7, b"pixeldit", &mut node);
        let mut graph = Vec::new();
        bytes_field(1, &node, &mut graph);
        let mut opset = Vec::new();
        bytes_field(1, b"pixeldit", &mut opset);
        varint(2 << 3, &mut opset);
        varint(1, &mut opset);
        let mut prop = Vec::new();
        bytes_field(1, b"k", &mut prop);
        bytes_field(2, b"v", &mut prop);
        let mut model = Vec::new();
        varint(1 << 3, &mut model);
        varint(8, &mut model);
        bytes_field(7, &graph, &mut model);
        bytes_field(8, &opset, &mut model);
        bytes_field(14, &prop, &mut model);
        let mut info = ModelInfo::default();
        parse_model(&model, &mut info).unwrap();
        assert_eq!(info.ir_version, 8);
        assert_eq!(info.opsets, vec![("pixeldit".to_string(), 1)]);
        assert_eq!(info.metadata_prop("k"), Some("v"));
        assert_eq!(info.nodes[0].op_type, "RotaryAttention");
        assert_eq!(info.custom_nodes().count(), 1);
        assert!(parse_model(&model[..model.len() - 1], &mut ModelInfo::default()).is_err());
    }
}

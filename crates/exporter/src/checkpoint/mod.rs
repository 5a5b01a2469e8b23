//! The official checkpoint formats, read directly and lazily (spec section 3.1):
//!
//! | format | magic | files |
//! |---|---|---|
//! | safetensors | u64 LE header length, then `{` | the bf16 repack `pixeldit_1300m_1024px_bf16.safetensors`, conversions |
//! | `torch.save` zip (PyTorch >= 1.6) | `PK\x03\x04` | Lightning `.ckpt` (ImageNet, `state_dict` with `ema_denoiser.*`), T2I `.pth` (`{"state_dict": {"core.*"}}`) |
//! | legacy `torch.save` (PyTorch < 1.6) | pickle protocol 2 magic `\x80\x02` | not supported: an error says how to re-save |
//!
//! [`torch_zip`] memory-maps the archive, runs a [`pickle`] VM over `data.pkl` (no code is executed;
//! unknown classes are opaque objects) and turns every tensor of the state dict into a byte range of
//! its storage record. Nothing else in the file (optimizer moments, the non-EMA copy when it is
//! dropped, callbacks) is ever read.

pub mod pickle;
mod torch_objects;
pub mod torch_zip;

/// A checkpoint container format, detected from the first bytes of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// safetensors.
    Safetensors,
    /// The zip container of `torch.save` (`.ckpt`, `.pth`, `.pt`, `.bin`).
    TorchZip,
    /// The pre-1.6 `torch.save` format (a sequence of raw pickles).
    TorchLegacy,
}

impl Format {
    /// Detects the format from the first bytes (at least 9 are needed for safetensors).
    pub fn detect(head: &[u8]) -> Option<Self> {
        if head.starts_with(b"PK\x03\x04") {
            return Some(Format::TorchZip);
        }
        // Before the pickle check: a safetensors header length such as 0x0280 also starts with 0x80 0x02.
        if head.len() >= 9 && head[8] == b'{' {
            let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
            if (2..(1 << 32)).contains(&n) {
                return Some(Format::Safetensors);
            }
        }
        if head.len() >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
            return Some(Format::TorchLegacy);
        }
        None
    }

    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::TorchZip => "torch.save zip archive",
            Format::TorchLegacy => "legacy torch.save (PyTorch < 1.6)",
        }
    }
}

/// The safetensors dtype of a torch storage element type.
pub fn safetensors_dtype(d: pickle::StorageDType) -> safetensors::Dtype {
    use pickle::StorageDType as S;
    match d {
        S::F32 => safetensors::Dtype::F32,
        S::F16 => safetensors::Dtype::F16,
        S::BF16 => safetensors::Dtype::BF16,
        S::F64 => safetensors::Dtype::F64,
        S::I64 => safetensors::Dtype::I64,
        S::I32 => safetensors::Dtype::I32,
        S::I16 => safetensors::Dtype::I16,
        S::I8 => safetensors::Dtype::I8,
        S::U8 => safetensors::Dtype::U8,
        S::Bool => safetensors::Dtype::BOOL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_magic() {
        assert_eq!(Format::detect(b"PK\x03\x04rest"), Some(Format::TorchZip));
        assert_eq!(Format::detect(b"\x80\x02\x8a\x0al"), Some(Format::TorchLegacy));
        let mut st = 40u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{\"a\":");
        assert_eq!(Format::detect(&st), Some(Format::Safetensors));
        // a 640-byte header starts with 0x80 0x02 like a pickle
        let mut st = 640u64.to_le_bytes().to_vec();
        st.push(b'{');
        assert_eq!(Format::detect(&st), Some(Format::Safetensors));
        // the legacy torch.save magic: PROTO 2, LONG1 0x1950a86a20f9469cfc6c
        let legacy = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
        assert_eq!(Format::detect(legacy), Some(Format::TorchLegacy));
        assert_eq!(Format::detect(b"hello world"), None);
        assert_eq!(Format::detect(b""), None);
    }
}

//! Element types and the f32 encoders used when weights are materialized.

use pixeldit_onnx_proto::dtype as pb;

/// Element type of a graph value or initializer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// float32
    F32,
    /// float16
    F16,
    /// bfloat16
    BF16,
    /// float8 e4m3fn (saturating)
    F8E4M3,
    /// int8
    I8,
    /// uint8
    U8,
    /// int32
    I32,
    /// int64
    I64,
    /// bool
    Bool,
    /// float64 (size-dependent tables computed in the graph)
    F64,
}

impl DType {
    /// The ONNX `TensorProto.DataType` value.
    pub fn onnx(self) -> i32 {
        match self {
            DType::F32 => pb::FLOAT,
            DType::F16 => pb::FLOAT16,
            DType::BF16 => pb::BFLOAT16,
            DType::F8E4M3 => pb::FLOAT8E4M3FN,
            DType::I8 => pb::INT8,
            DType::U8 => pb::UINT8,
            DType::I32 => pb::INT32,
            DType::I64 => pb::INT64,
            DType::Bool => pb::BOOL,
            DType::F64 => pb::DOUBLE,
        }
    }
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F8E4M3 | DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }
    /// Whether the type is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3 | DType::F64
        )
    }
    /// Short lowercase name used in dumps.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F8E4M3 => "f8e4m3",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
            DType::F64 => "f64",
        }
    }
}

/// Encodes f32 values as little-endian bytes of a float type (f32, f16, bf16 round-to-nearest-even,
/// f8e4m3fn saturating). Panics on non-float types, which callers never pass.
pub fn encode_f32(values: &[f32], dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::F8E4M3 => values.iter().map(|v| fp8_e4m3_encode(*v)).collect(),
        other => panic!("encode_f32 called with non-float type {other:?}"),
    }
}

/// Encodes one value as float8 e4m3fn, round to nearest even, saturating to +/-448 (as ONNX
/// `QuantizeLinear` with `saturate=1`); NaN maps to 0x7f.
pub fn fp8_e4m3_encode(v: f32) -> u8 {
    if v.is_nan() {
        return 0x7f;
    }
    let sign: u8 = if v.is_sign_negative() { 0x80 } else { 0 };
    let a = v.abs();
    if a >= 448.0 {
        return sign | 0x7e;
    }
    // Smallest normal is 2^-6; subnormals have step 2^-9.
    let bits = if a < 2f32.powi(-6) {
        let q = round_half_even(a / 2f32.powi(-9)) as u32; // 0..=8
        q as u8 // q == 8 becomes the smallest normal 0b0001_000, which is correct
    } else {
        let e = a.log2().floor() as i32;
        let e = e.clamp(-6, 8);
        let m = a / 2f32.powi(e) - 1.0; // [0,1)
        let mut q = round_half_even(m * 8.0) as i32;
        let mut e = e;
        if q == 8 {
            q = 0;
            e += 1;
        }
        let code = (((e + 7) as u32) << 3) | q as u32;
        if code >= 0x7f {
            0x7e
        } else {
            code as u8
        }
    };
    sign | bits
}

/// Decodes a float8 e4m3fn byte.
pub fn fp8_e4m3_decode(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0x0f) as i32;
    let m = (b & 0x07) as f32;
    if e == 0x0f && (b & 0x07) == 0x07 {
        return f32::NAN;
    }
    if e == 0 {
        sign * m * 2f32.powi(-9)
    } else {
        sign * (1.0 + m / 8.0) * 2f32.powi(e - 7)
    }
}

fn round_half_even(x: f32) -> f32 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp8_round_trips_every_code() {
        for b in 0u8..=255 {
            let v = fp8_e4m3_decode(b);
            if v.is_nan() {
                continue;
            }
            let back = fp8_e4m3_encode(v);
            // +0 and -0 both survive; every finite code maps to itself.
            assert_eq!(back, b, "code {b:#x} value {v}");
        }
    }

    #[test]
    fn fp8_saturates_and_rounds() {
        assert_eq!(fp8_e4m3_decode(fp8_e4m3_encode(1e6)), 448.0);
        assert_eq!(fp8_e4m3_decode(fp8_e4m3_encode(-1e6)), -448.0);
        // 1.0625 lies halfway between 1.0 and 1.125: ties to even (1.0).
        assert_eq!(fp8_e4m3_decode(fp8_e4m3_encode(1.0625)), 1.0);
        assert_eq!(fp8_e4m3_decode(fp8_e4m3_encode(1.07)), 1.125);
        assert_eq!(fp8_e4m3_decode(fp8_e4m3_encode(2f32.powi(-10))), 0.0);
    }
}

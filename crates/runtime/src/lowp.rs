//! Low-precision float formats tract cannot represent (BFLOAT16 and the four FLOAT8 types of ONNX): decoding of
//! stored values and f32 -> format -> f32 rounding with ONNX `Cast` semantics (round to nearest even; with
//! `saturate`, out-of-range values clamp to the largest finite value, as `Cast` and `QuantizeLinear` do by default).

use pixeldit_onnx_proto::dtype;

/// An ONNX element type without a tract `DatumType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LowFloat {
    /// `BFLOAT16` (16).
    Bf16,
    /// `FLOAT8E4M3FN` (17): bias 7, no infinities, max 448.
    E4M3Fn,
    /// `FLOAT8E4M3FNUZ` (18): bias 8, single NaN 0x80, max 240.
    E4M3Fnuz,
    /// `FLOAT8E5M2` (19): IEEE-like, bias 15, max 57344.
    E5M2,
    /// `FLOAT8E5M2FNUZ` (20): bias 16, single NaN 0x80, max 57344.
    E5M2Fnuz,
}

impl LowFloat {
    /// From an ONNX `TensorProto.DataType` code.
    pub fn from_onnx(code: i32) -> Option<Self> {
        Some(match code {
            dtype::BFLOAT16 => LowFloat::Bf16,
            dtype::FLOAT8E4M3FN => LowFloat::E4M3Fn,
            dtype::FLOAT8E4M3FNUZ => LowFloat::E4M3Fnuz,
            dtype::FLOAT8E5M2 => LowFloat::E5M2,
            dtype::FLOAT8E5M2FNUZ => LowFloat::E5M2Fnuz,
            _ => return None,
        })
    }

    /// The ONNX code.
    pub fn onnx_code(&self) -> i32 {
        match self {
            LowFloat::Bf16 => dtype::BFLOAT16,
            LowFloat::E4M3Fn => dtype::FLOAT8E4M3FN,
            LowFloat::E4M3Fnuz => dtype::FLOAT8E4M3FNUZ,
            LowFloat::E5M2 => dtype::FLOAT8E5M2,
            LowFloat::E5M2Fnuz => dtype::FLOAT8E5M2FNUZ,
        }
    }

    /// The ONNX spelling.
    pub fn name(&self) -> &'static str {
        match self {
            LowFloat::Bf16 => "BFLOAT16",
            LowFloat::E4M3Fn => "FLOAT8E4M3FN",
            LowFloat::E4M3Fnuz => "FLOAT8E4M3FNUZ",
            LowFloat::E5M2 => "FLOAT8E5M2",
            LowFloat::E5M2Fnuz => "FLOAT8E5M2FNUZ",
        }
    }

    /// Bytes per stored element.
    pub fn size(&self) -> usize {
        if *self == LowFloat::Bf16 {
            2
        } else {
            1
        }
    }

    /// (exponent bits, mantissa bits, bias) of the FLOAT8 types.
    fn layout(&self) -> (u32, u32, i32) {
        match self {
            LowFloat::E4M3Fn => (4, 3, 7),
            LowFloat::E4M3Fnuz => (4, 3, 8),
            LowFloat::E5M2 => (5, 2, 15),
            LowFloat::E5M2Fnuz => (5, 2, 16),
            LowFloat::Bf16 => unreachable!("bf16 has no minifloat layout"),
        }
    }

    /// Decodes one stored value (`bits` holds 8 or 16 bits).
    pub fn decode(&self, bits: u16) -> f32 {
        if *self == LowFloat::Bf16 {
            return f32::from_bits(u32::from(bits) << 16);
        }
        let c = (bits & 0xff) as u8;
        let (eb, mb, bias) = self.layout();
        let sign = if c & 0x80 != 0 { -1.0f32 } else { 1.0 };
        let e = i32::from((c >> mb) & ((1 << eb) - 1) as u8);
        let m = i32::from(c & ((1 << mb) - 1) as u8);
        match self {
            LowFloat::E4M3Fn if c & 0x7f == 0x7f => return f32::NAN,
            LowFloat::E4M3Fnuz | LowFloat::E5M2Fnuz if c == 0x80 => return f32::NAN,
            LowFloat::E5M2 if e == 31 => return if m == 0 { sign * f32::INFINITY } else { f32::NAN },
            _ => {}
        }
        let mag = if e == 0 {
            m as f32 * 2f32.powi(1 - bias - mb as i32)
        } else {
            (1.0 + m as f32 / (1 << mb) as f32) * 2f32.powi(e - bias)
        };
        sign * mag
    }

    /// Largest finite value.
    pub fn max_finite(&self) -> f32 {
        match self {
            LowFloat::Bf16 => half::bf16::MAX.to_f32(),
            LowFloat::E4M3Fn => 448.0,
            LowFloat::E4M3Fnuz => 240.0,
            LowFloat::E5M2 | LowFloat::E5M2Fnuz => 57344.0,
        }
    }

    /// The non-negative finite values, ascending; index = code.
    fn positive_table(&self) -> Vec<f32> {
        (0u16..0x80)
            .map(|c| self.decode(c))
            .take_while(|v| v.is_finite())
            .collect()
    }

    /// Rounds f32 values in place to the nearest value of this format (ties to even), keeping f32 storage.
    pub fn round_slice(&self, xs: &mut [f32], saturate: bool) {
        if *self == LowFloat::Bf16 {
            for x in xs {
                *x = half::bf16::from_f32(*x).to_f32();
            }
            return;
        }
        let table = self.positive_table();
        let max = *table.last().expect("non-empty table");
        let fnuz = matches!(self, LowFloat::E4M3Fnuz | LowFloat::E5M2Fnuz);
        for x in xs {
            let v = *x;
            if v.is_nan() {
                continue;
            }
            let a = v.abs();
            let r = if a >= max {
                // Between max and the midpoint to the next (unrepresentable) step, round-to-nearest gives max;
                // beyond it (and for infinities) the value overflows unless saturating.
                let step = max - table[table.len() - 2];
                if saturate || a < max + step / 2.0 {
                    max
                } else if *self == LowFloat::E5M2 {
                    f32::INFINITY
                } else {
                    f32::NAN
                }
            } else {
                let i = table.partition_point(|&t| t <= a) - 1; // table[i] <= a < table[i+1]
                let (lo, hi) = (table[i], table[i + 1]);
                let (dl, dh) = (a - lo, hi - a);
                if dl < dh || (dl == dh && i % 2 == 0) {
                    lo
                } else {
                    hi
                }
            };
            *x = if v.is_sign_negative() && !(fnuz && r == 0.0) {
                -r
            } else {
                r
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_known_values() {
        let f = LowFloat::E4M3Fn;
        assert_eq!(f.decode(0x7e), 448.0);
        assert_eq!(f.decode(0x38), 1.0); // e=7, m=0
        assert_eq!(f.decode(0x01), 2f32.powi(-9)); // smallest subnormal
        assert_eq!(f.decode(0xb8), -1.0);
        assert!(f.decode(0x7f).is_nan());
        assert_eq!(LowFloat::E4M3Fnuz.decode(0x7f), 240.0);
        assert!(LowFloat::E4M3Fnuz.decode(0x80).is_nan());
        assert_eq!(LowFloat::E5M2.decode(0x7b), 57344.0);
        assert_eq!(LowFloat::E5M2.decode(0x7c), f32::INFINITY);
        assert_eq!(LowFloat::E5M2Fnuz.decode(0x7f), 57344.0);
        assert_eq!(LowFloat::Bf16.decode(0x3f80), 1.0);
        assert_eq!(LowFloat::Bf16.decode(0xc000), -2.0);
    }

    #[test]
    fn round_to_nearest_even_and_saturate() {
        let f = LowFloat::E4M3Fn;
        // between 1.0 (code 0x38) and 1.125 (0x39): midpoint 1.0625 ties to the even code 0x38
        let mut v = [1.0625f32, 1.07, 1.1875, 500.0, -500.0, 1e-4, -0.0, 464.0, 465.0];
        f.round_slice(&mut v, true);
        assert_eq!(v[..7], [1.0, 1.125, 1.25, 448.0, -448.0, 0.0, -0.0]);
        assert_eq!(v[7], 448.0);
        let mut w = [465.0f32, 463.0];
        f.round_slice(&mut w, false);
        assert!(w[0].is_nan());
        assert_eq!(w[1], 448.0);
        let mut b = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)];
        LowFloat::Bf16.round_slice(&mut b, true);
        assert_eq!(b, [1.0, 1.0 + 2f32.powi(-6)]);
        // every code round-trips
        for fmt in [
            LowFloat::E4M3Fn,
            LowFloat::E4M3Fnuz,
            LowFloat::E5M2,
            LowFloat::E5M2Fnuz,
        ] {
            for c in 0u16..256 {
                let d = fmt.decode(c);
                if d.is_finite() {
                    let mut r = [d];
                    fmt.round_slice(&mut r, true);
                    assert_eq!(r[0], d, "{fmt:?} code {c:#x}");
                }
            }
        }
    }
}

//! `pixeldit.RotaryAttention` (semantics: [`pixeldit_spec::custom_op`]): the f32 kernel, shared by the ONNX Runtime
//! and tract adapters ([`super::ort`], [`super::tract`]).
//!
//! Per `(batch, head)` the kernel gathers q, k and v into contiguous `[S, Dh]` buffers (normalising and rotating q
//! and k on the way), then attends: `P = softmax(scale Q K^T)` and `O = P V` as two GEMMs around a row softmax
//! ([`super::attention_core`]).

use super::attention_core::{gather_and_attend, run_heads, HeadsShape, Scratch};
use super::{AttentionParams, KernelShapeError, MatmulPrecision, Threads};

/// The operands of one call, as flat row-major slices.
#[derive(Debug, Clone, Copy)]
pub struct RotaryAttentionInputs<'a> {
    /// `[B, S, 3*H*Dh]`.
    pub qkv: &'a [f32],
    /// Batch B.
    pub batch: usize,
    /// Tokens S.
    pub seq: usize,
    /// `[Dh]`.
    pub q_norm_weight: &'a [f32],
    /// `[Dh]`.
    pub k_norm_weight: &'a [f32],
    /// `[S, Dh/2]`.
    pub cos: &'a [f32],
    /// `[S, Dh/2]`.
    pub sin: &'a [f32],
}

impl RotaryAttentionInputs<'_> {
    /// Checks all sizes and returns the head dim Dh.
    pub fn validate(&self, p: &AttentionParams) -> Result<usize, KernelShapeError> {
        let err = |m: String| Err(KernelShapeError(m));
        let dh = self.q_norm_weight.len();
        if p.num_heads == 0 || dh == 0 || !dh.is_multiple_of(2) {
            return err(format!(
                "num_heads {} and head dim {dh} must be positive, Dh even",
                p.num_heads
            ));
        }
        if self.k_norm_weight.len() != dh {
            return err(format!(
                "k_norm_weight has {} elements, q_norm_weight {dh}",
                self.k_norm_weight.len()
            ));
        }
        let width = 3 * p.num_heads * dh;
        if self.qkv.len() != self.batch * self.seq * width {
            return err(format!(
                "qkv has {} elements, expected B*S*3*H*Dh = {}*{}*3*{}*{dh}",
                self.qkv.len(),
                self.batch,
                self.seq,
                p.num_heads
            ));
        }
        for (name, t) in [("cos", self.cos), ("sin", self.sin)] {
            if t.len() != self.seq * dh / 2 {
                return err(format!(
                    "{name} has {} elements, expected S*Dh/2 = {}*{}",
                    t.len(),
                    self.seq,
                    dh / 2
                ));
            }
        }
        Ok(dh)
    }

    /// Output length `B*S*H*Dh`.
    pub fn output_len(&self, p: &AttentionParams) -> usize {
        self.batch * self.seq * p.num_heads * self.q_norm_weight.len()
    }
}

/// Computes `RotaryAttention` into `out` (`[B, S, H*Dh]`, length [`RotaryAttentionInputs::output_len`]).
pub fn rotary_attention(
    inp: &RotaryAttentionInputs<'_>,
    p: &AttentionParams,
    threads: Threads<'_>,
    out: &mut [f32],
) -> Result<(), KernelShapeError> {
    let dh = inp.validate(p)?;
    if out.len() != inp.output_len(p) {
        return Err(KernelShapeError(format!(
            "output has {} elements, expected {}",
            out.len(),
            inp.output_len(p)
        )));
    }
    let shape = HeadsShape {
        batch: inp.batch,
        heads: p.num_heads,
        seq: inp.seq,
        head_dim: dh,
    };
    run_heads(shape, threads, out, |pair, sc| head(inp, p, dh, pair, sc));
    Ok(())
}

/// One `(batch, head)` pair of `RotaryAttention`.
fn head(inp: &RotaryAttentionInputs<'_>, p: &AttentionParams, dh: usize, pair: usize, sc: &mut Scratch) {
    let (s, width) = (inp.seq, 3 * p.num_heads * dh);
    let b = pair / p.num_heads;
    gather_and_attend(sc, p, dh, pair % p.num_heads, s, (inp.cos, inp.sin), |tok| {
        let r = (b * s + tok) * width;
        (&inp.qkv[r..r + width], inp.q_norm_weight, inp.k_norm_weight)
    });
}

/// Straightforward f64 implementation of the op contract, for tests.
#[doc(hidden)]
pub fn rotary_attention_naive(inp: &RotaryAttentionInputs<'_>, p: &AttentionParams) -> Vec<f32> {
    let dh = inp.q_norm_weight.len();
    let (b_n, s, h) = (inp.batch, inp.seq, p.num_heads);
    let width = 3 * h * dh;
    let at = |b: usize, tok: usize, part: usize, hh: usize, d: usize| -> f64 {
        f64::from(inp.qkv[(b * s + tok) * width + part * h * dh + hh * dh + d])
    };
    let prep = |b: usize, tok: usize, part: usize, hh: usize, w: &[f32]| -> Vec<f64> {
        let x: Vec<f64> = (0..dh).map(|d| at(b, tok, part, hh, d)).collect();
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / dh as f64 + f64::from(p.epsilon)).sqrt();
        let x: Vec<f64> = x.iter().zip(w).map(|(v, w)| v / rms * f64::from(*w)).collect();
        let mut y = x.clone();
        for j in 0..dh / 2 {
            let (c, sn) = (
                f64::from(inp.cos[tok * dh / 2 + j]),
                f64::from(inp.sin[tok * dh / 2 + j]),
            );
            y[2 * j] = x[2 * j] * c - x[2 * j + 1] * sn;
            y[2 * j + 1] = x[2 * j] * sn + x[2 * j + 1] * c;
        }
        y
    };
    // The product operands as the kernel rounds them (`matmul_precision`): bf16 via f32, or unchanged.
    let operand = |x: f64| -> f64 {
        match p.matmul {
            MatmulPrecision::F32 => x,
            MatmulPrecision::Bf16 => {
                let mut v = [x as f32];
                super::attention_core::round_to_bf16(&mut v);
                f64::from(v[0])
            }
        }
    };
    let mut out = vec![0f32; b_n * s * h * dh];
    for b in 0..b_n {
        for hh in 0..h {
            let rounded = |part: usize, w: &[f32]| -> Vec<Vec<f64>> {
                (0..s)
                    .map(|t| prep(b, t, part, hh, w).into_iter().map(operand).collect())
                    .collect()
            };
            let (q, k) = (rounded(0, inp.q_norm_weight), rounded(1, inp.k_norm_weight));
            for i in 0..s {
                let logits: Vec<f64> = (0..s)
                    .map(|j| f64::from(p.scale) * q[i].iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f64>())
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dh {
                    let v: f64 = (0..s)
                        .map(|j| operand(e[j] / z) * operand(at(b, j, 2, hh, d)))
                        .sum();
                    out[(b * s + i) * h * dh + hh * dh + d] = v as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::attention_core::{exp_poly, softmax_in_place, softmax_lanes, QUERY_BLOCK};
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    fn check(batch: usize, seq: usize, heads: usize, dh: usize, seed: u64) {
        check_precision(batch, seq, heads, dh, seed, MatmulPrecision::F32);
    }

    /// The kernel against the naive f64 attention with the same operand rounding; returns the kernel's output.
    fn check_precision(
        batch: usize,
        seq: usize,
        heads: usize,
        dh: usize,
        seed: u64,
        matmul: MatmulPrecision,
    ) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let qkv = random(batch * seq * 3 * heads * dh, &mut rng);
        let (qw, kw) = (random(dh, &mut rng), random(dh, &mut rng));
        let (cos, sin) = pixeldit_spec::custom_op::rope_2d_tables(1, seq, dh, 10000.0);
        let inp = RotaryAttentionInputs {
            qkv: &qkv,
            batch,
            seq,
            q_norm_weight: &qw,
            k_norm_weight: &kw,
            cos: &cos,
            sin: &sin,
        };
        let p = AttentionParams {
            num_heads: heads,
            epsilon: 1e-6,
            scale: 1.0 / (dh as f32).sqrt(),
            matmul,
        };
        let mut out = vec![0f32; inp.output_len(&p)];
        rotary_attention(&inp, &p, Threads::Own, &mut out).unwrap();
        let naive = rotary_attention_naive(&inp, &p);
        let err = out
            .iter()
            .zip(&naive)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // bf16: a value near a rounding boundary may round the other way in f32 than in f64 (measured 7.5e-6 at
        // S 288; bf16 vs f32 attention differ by 3e-3 to 1e-2 on these inputs).
        let tolerance = match matmul {
            MatmulPrecision::F32 => 1e-5,
            MatmulPrecision::Bf16 => 1e-4,
        };
        assert!(
            err < tolerance,
            "B{batch} S{seq} H{heads} Dh{dh} {matmul:?}: max abs err {err}"
        );
        out
    }

    /// bf16 operands: the AVX512-BF16 kernel (S, Dh multiples of 32, where the CPU has it) and the rounding around
    /// the f32 kernel (other sizes, other CPUs) both match the naive attention on the same roundings, and differ
    /// from f32 attention by about bf16's precision.
    #[test]
    fn bf16_matmuls_match_the_rounded_naive_attention() {
        #[cfg(target_arch = "x86_64")]
        eprintln!(
            "AVX512-BF16 kernel: {}",
            crate::ops::attention_core::bf16_kernel_applies(64, 64)
        );
        for &(b, s, h, dh, seed) in &[(2, 64, 2, 64, 7), (1, 288, 1, 32, 8), (2, 20, 2, 12, 9)] {
            let bf = check_precision(b, s, h, dh, seed, MatmulPrecision::Bf16);
            let f = check_precision(b, s, h, dh, seed, MatmulPrecision::F32);
            let diff = bf.iter().zip(&f).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(
                diff > 1e-3 && diff < 5e-2,
                "B{b} S{s} H{h} Dh{dh}: bf16 vs f32 max abs diff {diff}"
            );
        }
    }

    #[test]
    fn exp_poly_is_within_3e7_relative_of_exp() {
        let mut worst = 0f64;
        let n = 200_000;
        for i in 0..=n {
            let x = -87.0 + 175.0 * i as f64 / n as f64;
            let got = f64::from(exp_poly(x as f32));
            let want = (x as f32 as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        eprintln!("exp_poly: max relative error {worst:e}");
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp_poly(0.0), 1.0);
        assert_eq!(exp_poly(-100.0), 0.0);
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        assert!(exp_poly(f32::NAN).is_nan());
    }

    #[test]
    fn softmax_matches_f64_for_every_length_and_lane_split() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for len in [1, 2, 7, 8, 9, 16, 31, 256, 1000] {
            let x = random(len, &mut rng).iter().map(|v| v * 20.0).collect::<Vec<_>>();
            // The dispatched path (AVX2 + FMA here when the CPU has them) and the baseline one.
            let (mut dispatched, mut baseline) = (x.clone(), x.clone());
            softmax_in_place(&mut dispatched);
            softmax_lanes(&mut baseline);
            let m = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let z: f64 = x.iter().map(|&v| (f64::from(v) - m).exp()).sum();
            for got in [&dispatched, &baseline] {
                for (g, &v) in got.iter().zip(&x) {
                    let want = (f64::from(v) - m).exp() / z;
                    assert!(
                        (f64::from(*g) - want).abs() <= 1e-6 * want + 1e-12,
                        "len {len}: {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_naive_small() {
        check(2, 6, 2, 8, 0);
        check(1, 1, 1, 4, 1);
        check(3, 17, 4, 12, 2);
    }

    #[test]
    fn matches_naive_threaded() {
        // 2*16*128*128*16 = 8.4M multiply-adds: above the threading threshold.
        check(2, 128, 16, 16, 3);
    }

    #[test]
    fn matches_naive_on_the_avx512_path() {
        // S and Dh multiples of 16 (the AVX-512 GEMMs where the CPU has them): 32- and 16-column blocks, and two
        // query blocks.
        check(2, 48, 2, 32, 5);
        check(1, 272, 1, 16, 6);
    }

    #[test]
    fn matches_naive_over_several_query_blocks() {
        // 300 tokens = one full block of QUERY_BLOCK query rows and a partial one.
        const { assert!(300 > QUERY_BLOCK && 300 % QUERY_BLOCK != 0) };
        check(1, 300, 2, 8, 4);
    }

    #[test]
    fn rejects_bad_shapes() {
        let qkv = vec![0f32; 2 * 3 * 2 * 4];
        let w = vec![1f32; 4];
        let t = vec![0f32; 2 * 2];
        let inp = RotaryAttentionInputs {
            qkv: &qkv,
            batch: 1,
            seq: 2,
            q_norm_weight: &w,
            k_norm_weight: &w,
            cos: &t,
            sin: &t,
        };
        let p = AttentionParams {
            num_heads: 2,
            epsilon: 1e-6,
            scale: 0.5,
            matmul: MatmulPrecision::F32,
        };
        let mut out = vec![0f32; 16];
        assert!(rotary_attention(&inp, &p, Threads::Own, &mut out).is_ok());
        let p3 = AttentionParams { num_heads: 3, ..p };
        assert!(rotary_attention(&inp, &p3, Threads::Own, &mut out)
            .unwrap_err()
            .0
            .contains("qkv has 48 elements"));
        let mut short = vec![0f32; 15];
        assert!(rotary_attention(&inp, &p, Threads::Own, &mut short).is_err());
    }
}

//! The f32 kernel of `pixeldit.JointRotaryAttention`, the MM-DiT joint attention of the text-to-image model
//! (semantics: [`pixeldit_spec::custom_op`]), shared by the ONNX Runtime and tract adapters.
//!
//! It is `RotaryAttention` over the concatenation `[text; image]` whose rows come from two qkv tensors and are
//! normalised with per-stream weights: per `(batch, head)` the kernel gathers q, k and v of all `St + Si` tokens
//! into contiguous `[S, Dh]` buffers (normalising and rotating q and k on the way with row `s` of the stacked RoPE
//! table), then runs the same two-GEMM softmax attention as `RotaryAttention` ([`super::attention_core`]). Work is split
//! over `(batch, head)` pairs on scoped threads when large enough.

use super::attention_core::{gather_and_attend, run_heads, HeadsShape, Scratch};
use super::{AttentionParams, KernelShapeError, Threads};

/// The operands of one call, as flat row-major slices.
#[derive(Debug, Clone, Copy)]
pub struct JointAttentionInputs<'a> {
    /// `[B, St, 3*H*Dh]`, text rows (first in the joint sequence).
    pub qkv_txt: &'a [f32],
    /// `[B, Si, 3*H*Dh]`, image rows.
    pub qkv_img: &'a [f32],
    /// Batch B.
    pub batch: usize,
    /// Text tokens St.
    pub seq_txt: usize,
    /// Image tokens Si.
    pub seq_img: usize,
    /// `[Dh]` each.
    pub q_norm_txt: &'a [f32],
    /// `[Dh]`.
    pub k_norm_txt: &'a [f32],
    /// `[Dh]`.
    pub q_norm_img: &'a [f32],
    /// `[Dh]`.
    pub k_norm_img: &'a [f32],
    /// `[St + Si, Dh/2]`: text rows, then image rows.
    pub cos: &'a [f32],
    /// `[St + Si, Dh/2]`.
    pub sin: &'a [f32],
}

impl JointAttentionInputs<'_> {
    /// Checks all sizes and returns the head dim Dh.
    pub fn validate(&self, p: &AttentionParams) -> Result<usize, KernelShapeError> {
        let err = |m: String| Err(KernelShapeError(format!("JointRotaryAttention: {m}")));
        let dh = self.q_norm_txt.len();
        if p.num_heads == 0 || dh == 0 || !dh.is_multiple_of(2) {
            return err(format!(
                "num_heads {} and head dim {dh} must be positive, Dh even",
                p.num_heads
            ));
        }
        for (name, w) in [
            ("k_norm_txt", self.k_norm_txt),
            ("q_norm_img", self.q_norm_img),
            ("k_norm_img", self.k_norm_img),
        ] {
            if w.len() != dh {
                return err(format!("{name} has {} elements, q_norm_txt {dh}", w.len()));
            }
        }
        let width = 3 * p.num_heads * dh;
        for (name, t, s) in [
            ("qkv_txt", self.qkv_txt, self.seq_txt),
            ("qkv_img", self.qkv_img, self.seq_img),
        ] {
            if t.len() != self.batch * s * width {
                return err(format!(
                    "{name} has {} elements, expected B*S*3*H*Dh = {}*{s}*3*{}*{dh}",
                    t.len(),
                    self.batch,
                    p.num_heads
                ));
            }
        }
        let s = self.seq_txt + self.seq_img;
        for (name, t) in [("cos", self.cos), ("sin", self.sin)] {
            if t.len() != s * dh / 2 {
                return err(format!(
                    "{name} has {} elements, expected (St+Si)*Dh/2 = {s}*{}",
                    t.len(),
                    dh / 2
                ));
            }
        }
        Ok(dh)
    }

    /// Output length `B*(St+Si)*H*Dh`.
    pub fn output_len(&self, p: &AttentionParams) -> usize {
        self.batch * (self.seq_txt + self.seq_img) * p.num_heads * self.q_norm_txt.len()
    }

    /// Row `tok` of the joint sequence of batch `b`: its qkv row and its q/k norm weights.
    fn row(&self, b: usize, tok: usize, width: usize) -> (&[f32], &[f32], &[f32]) {
        if tok < self.seq_txt {
            let r = (b * self.seq_txt + tok) * width;
            (&self.qkv_txt[r..r + width], self.q_norm_txt, self.k_norm_txt)
        } else {
            let r = (b * self.seq_img + tok - self.seq_txt) * width;
            (&self.qkv_img[r..r + width], self.q_norm_img, self.k_norm_img)
        }
    }
}

/// Computes `JointRotaryAttention` into `out` (`[B, St+Si, H*Dh]`).
pub fn joint_rotary_attention(
    inp: &JointAttentionInputs<'_>,
    p: &AttentionParams,
    threads: Threads<'_>,
    out: &mut [f32],
) -> Result<(), KernelShapeError> {
    let dh = inp.validate(p)?;
    if out.len() != inp.output_len(p) {
        return Err(KernelShapeError(format!(
            "JointRotaryAttention: output has {} elements, expected {}",
            out.len(),
            inp.output_len(p)
        )));
    }
    let s = inp.seq_txt + inp.seq_img;
    let shape = HeadsShape {
        batch: inp.batch,
        heads: p.num_heads,
        seq: s,
        head_dim: dh,
    };
    run_heads(shape, threads, out, |pair, sc| head(inp, p, dh, pair, sc));
    Ok(())
}

/// One `(batch, head)` pair of `JointRotaryAttention`.
fn head(inp: &JointAttentionInputs<'_>, p: &AttentionParams, dh: usize, pair: usize, sc: &mut Scratch) {
    let width = 3 * p.num_heads * dh;
    let b = pair / p.num_heads;
    let s = inp.seq_txt + inp.seq_img;
    gather_and_attend(sc, p, dh, pair % p.num_heads, s, (inp.cos, inp.sin), |tok| {
        inp.row(b, tok, width)
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::rotary_attention::{rotary_attention_naive, RotaryAttentionInputs};
    use crate::ops::MatmulPrecision;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
    }

    /// With equal text and image norm weights the op is `RotaryAttention` on the concatenated rows.
    fn check(batch: usize, st: usize, si: usize, heads: usize, dh: usize, seed: u64) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let width = 3 * heads * dh;
        let (qt, qi) = (
            random(batch * st * width, &mut rng),
            random(batch * si * width, &mut rng),
        );
        let (qw, kw) = (random(dh, &mut rng), random(dh, &mut rng));
        let (cos, sin) = pixeldit_spec::custom_op::rope_2d_tables(1, st + si, dh, 10000.0);
        let p = AttentionParams {
            num_heads: heads,
            epsilon: 1e-6,
            scale: 1.0 / (dh as f32).sqrt(),
            matmul: MatmulPrecision::F32,
        };
        let inp = JointAttentionInputs {
            qkv_txt: &qt,
            qkv_img: &qi,
            batch,
            seq_txt: st,
            seq_img: si,
            q_norm_txt: &qw,
            k_norm_txt: &kw,
            q_norm_img: &qw,
            k_norm_img: &kw,
            cos: &cos,
            sin: &sin,
        };
        let mut out = vec![0f32; inp.output_len(&p)];
        joint_rotary_attention(&inp, &p, Threads::Own, &mut out).unwrap();
        let mut joint = Vec::new();
        for b in 0..batch {
            joint.extend_from_slice(&qt[b * st * width..(b + 1) * st * width]);
            joint.extend_from_slice(&qi[b * si * width..(b + 1) * si * width]);
        }
        let naive = rotary_attention_naive(
            &RotaryAttentionInputs {
                qkv: &joint,
                batch,
                seq: st + si,
                q_norm_weight: &qw,
                k_norm_weight: &kw,
                cos: &cos,
                sin: &sin,
            },
            &p,
        );
        let err = out
            .iter()
            .zip(&naive)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            err < 1e-5,
            "B{batch} St{st} Si{si} H{heads} Dh{dh}: max abs err {err}"
        );
    }

    #[test]
    fn matches_rotary_attention_on_the_joint_sequence() {
        check(2, 3, 5, 2, 8, 0);
        check(1, 1, 1, 1, 4, 1);
        check(2, 40, 90, 8, 16, 2); // threaded
    }

    #[test]
    fn per_stream_norms_are_used() {
        // Text q norm scaled by 2 changes only what text queries see: compare against a hand-built reference.
        let (st, si, dh) = (2, 3, 4);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let (qt, qi) = (random(st * 3 * dh, &mut rng), random(si * 3 * dh, &mut rng));
        let ones = vec![1f32; dh];
        let twos = vec![2f32; dh];
        let (cos, sin) = (vec![1f32; (st + si) * dh / 2], vec![0f32; (st + si) * dh / 2]);
        let p = AttentionParams {
            num_heads: 1,
            epsilon: 0.0,
            scale: 0.5,
            matmul: MatmulPrecision::F32,
        };
        let inp = JointAttentionInputs {
            qkv_txt: &qt,
            qkv_img: &qi,
            batch: 1,
            seq_txt: st,
            seq_img: si,
            q_norm_txt: &twos,
            k_norm_txt: &ones,
            q_norm_img: &ones,
            k_norm_img: &ones,
            cos: &cos,
            sin: &sin,
        };
        let mut out = vec![0f32; inp.output_len(&p)];
        joint_rotary_attention(&inp, &p, Threads::Own, &mut out).unwrap();
        // The same with a doubled softmax scale on the text rows' queries (q norm 2 == scale x2, identity RoPE).
        let joint: Vec<f32> = qt.iter().chain(&qi).copied().collect();
        let mk = |scale: f32| {
            rotary_attention_naive(
                &RotaryAttentionInputs {
                    qkv: &joint,
                    batch: 1,
                    seq: st + si,
                    q_norm_weight: &ones,
                    k_norm_weight: &ones,
                    cos: &cos,
                    sin: &sin,
                },
                &AttentionParams { scale, ..p },
            )
        };
        let (text_ref, img_ref) = (mk(1.0), mk(0.5));
        for (i, v) in out.iter().enumerate() {
            let r = if i < st * dh { text_ref[i] } else { img_ref[i] };
            assert!((v - r).abs() < 1e-5, "element {i}: {v} vs {r}");
        }
        let bad = JointAttentionInputs {
            cos: &cos[1..],
            ..inp
        };
        assert!(joint_rotary_attention(&bad, &p, Threads::Own, &mut out)
            .unwrap_err()
            .0
            .contains("cos has"));
    }
}

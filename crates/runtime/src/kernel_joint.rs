//! The f32 kernel of `pixeldit.JointRotaryAttention`, the MM-DiT joint attention of the text-to-image model
//! (semantics: [`pixeldit_spec::custom_op`]), and its registrations for ONNX Runtime and tract.
//!
//! It is `RotaryAttention` over the concatenation `[text; image]` whose rows come from two qkv tensors and are
//! normalised with per-stream weights: per `(batch, head)` the kernel gathers q, k and v of all `St + Si` tokens
//! into contiguous `[S, Dh]` buffers (normalising and rotating q and k on the way with row `s` of the stacked RoPE
//! table), then runs the same two-GEMM softmax attention as `RotaryAttention` ([`crate::kernel`]). Work is split
//! over `(batch, head)` pairs on scoped threads when large enough.

use crate::kernel::{
    gather_and_attend, run_heads, HeadsShape, KernelShapeError, RotaryAttentionParams, Scratch, Threads,
};

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
    pub fn validate(&self, p: &RotaryAttentionParams) -> Result<usize, KernelShapeError> {
        let err = |m: String| Err(KernelShapeError(format!("JointRotaryAttention: {m}")));
        let dh = self.q_norm_txt.len();
        if p.num_heads == 0 || dh == 0 || dh % 2 != 0 {
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
    pub fn output_len(&self, p: &RotaryAttentionParams) -> usize {
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
    p: &RotaryAttentionParams,
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
fn head(inp: &JointAttentionInputs<'_>, p: &RotaryAttentionParams, dh: usize, pair: usize, sc: &mut Scratch) {
    let width = 3 * p.num_heads * dh;
    let b = pair / p.num_heads;
    let s = inp.seq_txt + inp.seq_img;
    gather_and_attend(sc, p, dh, pair % p.num_heads, s, (inp.cos, inp.sin), |tok| {
        inp.row(b, tok, width)
    });
}

fn params_from(num_heads: i64, epsilon: Option<f32>, scale: Option<f32>, dh: usize) -> RotaryAttentionParams {
    RotaryAttentionParams {
        num_heads: num_heads.max(0) as usize,
        epsilon: epsilon.unwrap_or(1e-6),
        scale: scale.unwrap_or_else(|| 1.0 / (dh.max(1) as f32).sqrt()),
    }
}

/// `pixeldit.JointRotaryAttention` for ONNX Runtime (CPU kernel).
#[cfg(feature = "ort")]
pub(crate) mod ort_op {
    use super::{joint_rotary_attention, params_from, JointAttentionInputs};
    use crate::backend::ort::OrtPool;
    use crate::kernel::Threads;
    use ort::operator::{
        BoxedKernel, ComputeContext, KernelContext, Operator, OperatorInput, OperatorOutput,
        ShapeInferenceContext,
    };
    use ort::value::{Shape, SymbolicDimensions, TensorElementType, ValueType};

    /// The operator registered in the `pixeldit` domain.
    pub(crate) struct JointRotaryAttentionOp;

    impl Operator for JointRotaryAttentionOp {
        type Kernel<'a> = BoxedKernel<'a>;

        fn name(&self) -> &str {
            pixeldit_spec::custom_op::JOINT_OP_TYPE
        }

        fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
            [const { OperatorInput::required(TensorElementType::Float32) }; 8]
        }

        fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
            [OperatorOutput::required(TensorElementType::Float32)]
        }

        fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
            let inputs = ctx.inputs();
            if let (
                Some(ValueType::Tensor {
                    shape: st,
                    dimension_symbols,
                    ..
                }),
                Some(ValueType::Tensor { shape: si, .. }),
            ) = (inputs.first(), inputs.get(1))
            {
                if st.len() == 3 && si.len() == 3 {
                    let s = if st[1] > 0 && si[1] > 0 { st[1] + si[1] } else { -1 };
                    let w = if st[2] > 0 { st[2] / 3 } else { -1 };
                    let out = ValueType::Tensor {
                        ty: TensorElementType::Float32,
                        shape: Shape::new([st[0], s, w]),
                        dimension_symbols: SymbolicDimensions::new(
                            dimension_symbols
                                .iter()
                                .take(1)
                                .cloned()
                                .chain([String::new(), String::new()]),
                        ),
                    };
                    return ctx.set_output(0, &out);
                }
            }
            Ok(())
        }

        fn create_kernel<'a>(&self, k: &KernelContext<'a>) -> ort::Result<Self::Kernel<'a>> {
            let node = k.node_name().unwrap_or_default();
            let num_heads = k.get::<i64>("num_heads").filter(|&h| h > 0).ok_or_else(|| {
                ort::Error::new(format!(
                    "pixeldit.JointRotaryAttention node '{node}': missing or invalid 'num_heads'"
                ))
            })?;
            let epsilon = k.get::<f32>("epsilon");
            let scale = k.get::<f32>("scale");
            Ok(Box::new(move |ctx: &ComputeContext| {
                let mut v = Vec::with_capacity(8);
                for i in 0..8 {
                    v.push(ctx.input(i)?.ok_or_else(|| {
                        ort::Error::new(format!("JointRotaryAttention: input {i} is missing"))
                    })?);
                }
                let (ts, qkv_txt) = v[0].try_extract_tensor::<f32>()?;
                let (is, qkv_img) = v[1].try_extract_tensor::<f32>()?;
                if ts.len() != 3 || is.len() != 3 {
                    return Err(ort::Error::new(format!(
                        "JointRotaryAttention '{node}': qkv inputs must be 3-D, got {ts} and {is}"
                    )));
                }
                let (b, st, si, w) = (ts[0] as usize, ts[1] as usize, is[1] as usize, ts[2] as usize);
                let q_norm_txt = v[2].try_extract_tensor::<f32>()?.1;
                let inp = JointAttentionInputs {
                    qkv_txt,
                    qkv_img,
                    batch: b,
                    seq_txt: st,
                    seq_img: si,
                    q_norm_txt,
                    k_norm_txt: v[3].try_extract_tensor::<f32>()?.1,
                    q_norm_img: v[4].try_extract_tensor::<f32>()?.1,
                    k_norm_img: v[5].try_extract_tensor::<f32>()?.1,
                    cos: v[6].try_extract_tensor::<f32>()?.1,
                    sin: v[7].try_extract_tensor::<f32>()?.1,
                };
                let p = params_from(num_heads, epsilon, scale, q_norm_txt.len());
                let mut out = ctx
                    .output(0, vec![b as i64, (st + si) as i64, (w / 3) as i64])?
                    .ok_or_else(|| ort::Error::new("JointRotaryAttention: no output buffer"))?;
                let (_, o) = out.try_extract_tensor_mut::<f32>()?;
                joint_rotary_attention(&inp, &p, Threads::Host(&OrtPool(ctx)), o)
                    .map_err(|e| ort::Error::new(format!("node '{node}': {e}")))
            }))
        }
    }
}

/// `pixeldit.JointRotaryAttention` for tract.
#[cfg(feature = "tract")]
pub(crate) mod tract_op {
    use super::{joint_rotary_attention, params_from, JointAttentionInputs};
    use crate::kernel::Threads;
    use tract_onnx::model::ParsingContext;
    use tract_onnx::pb;
    use tract_onnx::prelude::*;
    use tract_onnx::tract_hir::internal::*;

    /// The `op_register` builder (key: the op type).
    pub(crate) fn builder(
        _ctx: &ParsingContext,
        node: &pb::NodeProto,
    ) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
        let num_heads: i64 = node.get_attr("num_heads")?;
        ensure!(
            num_heads > 0,
            "JointRotaryAttention node '{}': num_heads must be positive",
            node.name
        );
        let op = JointOp {
            num_heads,
            epsilon_bits: node.get_attr_opt::<f32>("epsilon")?.map(f32::to_bits),
            scale_bits: node.get_attr_opt::<f32>("scale")?.map(f32::to_bits),
        };
        Ok((expand(op), vec![]))
    }

    /// Floats kept as bits for `Eq + Hash`.
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    struct JointOp {
        num_heads: i64,
        epsilon_bits: Option<u32>,
        scale_bits: Option<u32>,
    }

    impl Expansion for JointOp {
        fn name(&self) -> StaticName {
            "PixelditJointRotaryAttention".into()
        }

        fn rules<'r, 'p: 'r, 's: 'r>(
            &'s self,
            s: &mut Solver<'r>,
            inputs: &'p [TensorProxy],
            outputs: &'p [TensorProxy],
        ) -> InferenceResult {
            check_input_arity(inputs, 8)?;
            check_output_arity(outputs, 1)?;
            for i in inputs {
                s.equals(&i.datum_type, f32::datum_type())?;
            }
            s.equals(&outputs[0].datum_type, f32::datum_type())?;
            s.equals(&inputs[0].rank, 3)?;
            s.equals(&inputs[1].rank, 3)?;
            s.equals(&outputs[0].rank, 3)?;
            s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
            s.given_2(&inputs[0].shape[1], &inputs[1].shape[1], move |s, a, b| {
                s.equals(&outputs[0].shape[1], a + b)
            })?;
            s.given(&inputs[0].shape[2], move |s, w| {
                s.equals(&outputs[0].shape[2], w / 3)
            })
        }

        fn wire(
            &self,
            prefix: &str,
            model: &mut TypedModel,
            inputs: &[OutletId],
        ) -> TractResult<TVec<OutletId>> {
            model.wire_node(prefix, self.clone(), inputs)
        }
    }

    impl Op for JointOp {
        fn name(&self) -> StaticName {
            "PixelditJointRotaryAttention".into()
        }

        op_as_typed_op!();
    }

    impl EvalOp for JointOp {
        op_out_of_plan!();

        fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
            ensure!(inputs.len() == 8, "JointRotaryAttention takes 8 inputs");
            let (ts, is) = (inputs[0].shape().to_vec(), inputs[1].shape().to_vec());
            ensure!(
                ts.len() == 3 && is.len() == 3,
                "JointRotaryAttention: qkv inputs must be 3-D, got {ts:?} and {is:?}"
            );
            let views = inputs
                .iter()
                .map(|t| t.try_as_plain_ram())
                .collect::<TractResult<Vec<_>>>()?;
            let sl = views
                .iter()
                .map(|v| v.as_slice::<f32>())
                .collect::<TractResult<Vec<_>>>()?;
            let inp = JointAttentionInputs {
                qkv_txt: sl[0],
                qkv_img: sl[1],
                batch: ts[0],
                seq_txt: ts[1],
                seq_img: is[1],
                q_norm_txt: sl[2],
                k_norm_txt: sl[3],
                q_norm_img: sl[4],
                k_norm_img: sl[5],
                cos: sl[6],
                sin: sl[7],
            };
            let p = params_from(
                self.num_heads,
                self.epsilon_bits.map(f32::from_bits),
                self.scale_bits.map(f32::from_bits),
                sl[2].len(),
            );
            let mut out = Tensor::zero::<f32>(&[ts[0], ts[1] + is[1], ts[2] / 3])?;
            {
                let mut view = out.try_as_plain_ram_mut()?;
                joint_rotary_attention(&inp, &p, Threads::Own, view.as_slice_mut::<f32>()?)?;
            }
            Ok(tvec!(out.into_tvalue()))
        }
    }

    impl TypedOp for JointOp {
        fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
            let (a, b) = (&inputs[0].shape, &inputs[1].shape);
            ensure!(
                a.rank() == 3 && b.rank() == 3,
                "JointRotaryAttention: qkv inputs must be 3-D"
            );
            Ok(tvec!(f32::fact([
                a[0].clone(),
                a[1].clone() + b[1].clone(),
                a[2].clone() / 3
            ])))
        }

        as_op!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{rotary_attention_naive, RotaryAttentionInputs};
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
        let p = RotaryAttentionParams {
            num_heads: heads,
            epsilon: 1e-6,
            scale: 1.0 / (dh as f32).sqrt(),
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
        let p = RotaryAttentionParams {
            num_heads: 1,
            epsilon: 0.0,
            scale: 0.5,
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
                &RotaryAttentionParams { scale, ..p },
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

//! The custom ops of domain `pixeldit` (contracts: [`pixeldit_spec::custom_op`]), one home each, and the one
//! registry both backends read ([`CustomOp::ALL`]).
//!
//! * [`rotary_attention`], [`joint_rotary_attention`], [`pixel_ops`], [`patch_ops`]: the f32 kernels; they
//!   import no backend.
//! * [`attention_core`]: what the two kernels share (work split, gather with QK-RMSNorm and RoPE, softmax attention).
//! * `ort`, `tract`: one adapter per backend, generic over [`CustomOp`] (attributes, shapes, kernel dispatch).

/// Defines `fn NAME(args)` that runs `BODY(args)` compiled for AVX-512F, AVX2 + FMA or the build's baseline,
/// whichever the CPU has (checked at run time). `BODY` is `#[inline(always)]`, so its loops vectorise for the chosen
/// instruction set. Unit-returning functions only.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident $(<$($lt:lifetime),*>)? ($($arg:ident: $ty:ty),* $(,)?) => $body:path
    ) => {
        $(#[$meta])*
        $vis fn $name $(<$($lt),*>)? ($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512 $(<$($lt),*>)? ($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2_fma $(<$($lt),*>)? ($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2_fma($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub mod attention_core;
pub mod joint_rotary_attention;
#[cfg(feature = "ort")]
pub(crate) mod ort;
pub mod patch_ops;
pub mod pixel_ops;
pub mod rotary_attention;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(feature = "tract")]
pub(crate) mod tract;

use pixeldit_spec::custom_op;
use std::fmt;

/// The custom ops this runtime has kernels for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CustomOp {
    /// `pixeldit.RotaryAttention(qkv, q_norm_weight, k_norm_weight, cos, sin)`.
    RotaryAttention,
    /// `pixeldit.JointRotaryAttention(qkv_txt, qkv_img, q_norm_txt, k_norm_txt, q_norm_img, k_norm_img, cos, sin)`.
    JointRotaryAttention,
    /// `pixeldit.PixelModulate(x, mod, bias, norm_weight)`.
    PixelModulate,
    /// `pixeldit.PixelGatedMlp(x, branch, mod, bias, norm_weight, fc1_weight, fc1_bias, fc2_weight, fc2_bias)`.
    PixelGatedMlp,
    /// `pixeldit.RmsNormModulate(x, norm_weight, shift, scale)`.
    RmsNormModulate,
    /// `pixeldit.SwiGlu(a, b)`.
    SwiGlu,
}

impl CustomOp {
    /// Every op, in registration order.
    pub const ALL: [CustomOp; 6] = [
        CustomOp::RotaryAttention,
        CustomOp::JointRotaryAttention,
        CustomOp::PixelModulate,
        CustomOp::PixelGatedMlp,
        CustomOp::RmsNormModulate,
        CustomOp::SwiGlu,
    ];

    /// The ONNX op type.
    pub fn op_type(self) -> &'static str {
        match self {
            CustomOp::RotaryAttention => custom_op::OP_TYPE,
            CustomOp::JointRotaryAttention => custom_op::JOINT_OP_TYPE,
            CustomOp::PixelModulate => custom_op::PIXEL_MODULATE_OP_TYPE,
            CustomOp::PixelGatedMlp => custom_op::PIXEL_GATED_MLP_OP_TYPE,
            CustomOp::RmsNormModulate => custom_op::RMS_NORM_MODULATE_OP_TYPE,
            CustomOp::SwiGlu => custom_op::SWIGLU_OP_TYPE,
        }
    }

    /// The op of a node of domain `pixeldit`, if this runtime has it.
    pub fn from_node(domain: &str, op_type: &str) -> Option<CustomOp> {
        (domain == custom_op::DOMAIN)
            .then(|| CustomOp::ALL.into_iter().find(|o| o.op_type() == op_type))
            .flatten()
    }

    /// Number of (f32) inputs.
    pub fn num_inputs(self) -> usize {
        match self {
            CustomOp::RotaryAttention => 5,
            CustomOp::JointRotaryAttention => 8,
            CustomOp::PixelModulate => 4,
            CustomOp::PixelGatedMlp => 9,
            CustomOp::RmsNormModulate => 4,
            CustomOp::SwiGlu => 2,
        }
    }

    /// Whether the op is an attention (attribute `num_heads`, output `[B, S, H*Dh]`); the pixel ops' output has
    /// the shape of their input `x`.
    pub fn is_attention(self) -> bool {
        matches!(self, CustomOp::RotaryAttention | CustomOp::JointRotaryAttention)
    }

    /// Indices of the 3-D inputs the output shape follows: the `[B, S, 3*H*Dh]` qkv inputs of an attention (their
    /// sequence lengths add up to the output's), `x` of a pixel op.
    fn shape_inputs(self) -> &'static [usize] {
        match self {
            CustomOp::JointRotaryAttention => &[0, 1],
            _ => &[0],
        }
    }

    /// Output dims from the dims of [`CustomOp::shape_inputs`] (`None` = unknown): `[B, S, H*Dh]` for an attention,
    /// `x`'s for a pixel op.
    pub fn output_dims(self, qkv_dims: &[[Option<i64>; 3]]) -> [Option<i64>; 3] {
        let first = qkv_dims[0];
        if !self.is_attention() {
            return first;
        }
        let seq = qkv_dims.iter().try_fold(0i64, |acc, d| d[1].map(|s| acc + s));
        [first[0], seq, first[2].map(|w| w / 3)]
    }

    /// The output shape of concrete operands (`inputs` as for [`CustomOp::compute`]); each input of
    /// [`CustomOp::shape_inputs`] must be 3-D.
    pub fn output_shape(self, inputs: &[(&[usize], &[f32])]) -> Result<[usize; 3], KernelShapeError> {
        let mut qkv = Vec::with_capacity(self.shape_inputs().len());
        for &i in self.shape_inputs() {
            let shape = inputs.get(i).map_or(&[][..], |(s, _)| *s);
            let dims: [usize; 3] = shape.try_into().map_err(|_| {
                KernelShapeError(format!(
                    "{}: input {i} must be 3-D ({}), got {shape:?}",
                    self.op_type(),
                    if self.is_attention() {
                        "[B, S, 3*H*Dh]"
                    } else {
                        "[N, P, C] or [B, L, D]"
                    }
                ))
            })?;
            qkv.push(dims.map(|d| Some(d as i64)));
        }
        Ok(self.output_dims(&qkv).map(|d| d.unwrap_or(0) as usize))
    }

    /// Runs the kernel: `inputs` are the op's inputs in order with their shapes, `out` has the output shape
    /// ([`CustomOp::output_shape`]); the pixel ops read only `params.epsilon`.
    pub fn compute(
        self,
        inputs: &[(&[usize], &[f32])],
        params: &AttentionParams,
        threads: Threads<'_>,
        out: &mut [f32],
    ) -> Result<(), KernelShapeError> {
        if inputs.len() != self.num_inputs() {
            return Err(KernelShapeError(format!(
                "{} takes {} inputs, got {}",
                self.op_type(),
                self.num_inputs(),
                inputs.len()
            )));
        }
        self.output_shape(inputs)?;
        let data = |i: usize| inputs[i].1;
        match self {
            CustomOp::RotaryAttention => rotary_attention::rotary_attention(
                &rotary_attention::RotaryAttentionInputs {
                    qkv: data(0),
                    batch: inputs[0].0[0],
                    seq: inputs[0].0[1],
                    q_norm_weight: data(1),
                    k_norm_weight: data(2),
                    cos: data(3),
                    sin: data(4),
                },
                params,
                threads,
                out,
            ),
            CustomOp::JointRotaryAttention => joint_rotary_attention::joint_rotary_attention(
                &joint_rotary_attention::JointAttentionInputs {
                    qkv_txt: data(0),
                    qkv_img: data(1),
                    batch: inputs[0].0[0],
                    seq_txt: inputs[0].0[1],
                    seq_img: inputs[1].0[1],
                    q_norm_txt: data(2),
                    k_norm_txt: data(3),
                    q_norm_img: data(4),
                    k_norm_img: data(5),
                    cos: data(6),
                    sin: data(7),
                },
                params,
                threads,
                out,
            ),
            CustomOp::PixelModulate | CustomOp::PixelGatedMlp => {
                let x = inputs[0].0;
                let modulation = pixel_ops::PixelModulation {
                    rows: x[0],
                    pixels: x[1],
                    channels: x[2],
                    modulation: data(if self == CustomOp::PixelModulate { 1 } else { 2 }),
                    bias: data(if self == CustomOp::PixelModulate { 2 } else { 3 }),
                    norm_weight: data(if self == CustomOp::PixelModulate { 3 } else { 4 }),
                    epsilon: params.epsilon,
                };
                if self == CustomOp::PixelModulate {
                    pixel_ops::pixel_modulate(&modulation, data(0), threads, out)
                } else {
                    let mlp = pixel_ops::PixelMlp {
                        fc1_weight: data(5),
                        fc1_bias: data(6),
                        fc2_weight: data(7),
                        fc2_bias: data(8),
                    };
                    pixel_ops::pixel_gated_mlp(&modulation, data(0), data(1), &mlp, threads, out)
                }
            }
            CustomOp::RmsNormModulate => {
                let x = inputs[0].0;
                patch_ops::rms_norm_modulate(
                    &patch_ops::NormModulateInputs {
                        x: data(0),
                        dims: [x[0], x[1], x[2]],
                        norm_weight: data(1),
                        shift: data(2),
                        scale: data(3),
                        epsilon: params.epsilon,
                    },
                    threads,
                    out,
                )
            }
            CustomOp::SwiGlu => {
                if inputs[1].0 != inputs[0].0 {
                    return Err(KernelShapeError(format!(
                        "SwiGlu: a {:?} and b {:?} differ in shape",
                        inputs[0].0, inputs[1].0
                    )));
                }
                patch_ops::swiglu(data(0), data(1), inputs[0].0[2], threads, out)
            }
        }
    }

    /// Index of the input whose length is the head dim Dh (the first q norm weight; the pixel ops have none).
    fn head_dim_input(self) -> usize {
        match self {
            CustomOp::JointRotaryAttention => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for CustomOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", custom_op::DOMAIN, self.op_type())
    }
}

/// The attributes of one custom node (the pixel ops read only `epsilon`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// Number of heads H (0 for the pixel ops).
    pub num_heads: usize,
    /// RMSNorm epsilon.
    pub epsilon: f32,
    /// Softmax scale (usually `1/sqrt(Dh)`).
    pub scale: f32,
    /// The operands of the two attention products: f32, or rounded to bf16 (f32 accumulation).
    pub matmul: MatmulPrecision,
}

/// The operand precision of an attention op's two products (`QK^T` and `PV`), its `matmul_precision` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MatmulPrecision {
    /// f32 operands (the default).
    #[default]
    F32,
    /// Q, K, the softmax probabilities and V rounded to bf16 (round to nearest even), products summed in f32:
    /// AVX512-BF16 dot products where the CPU has them, else the same roundings around the f32 kernel.
    Bf16,
}

impl MatmulPrecision {
    /// The attribute value (`"f32"` or `"bf16"`) as a precision; `None` for anything else.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "f32" => Some(MatmulPrecision::F32),
            "bf16" => Some(MatmulPrecision::Bf16),
            _ => None,
        }
    }
}

/// The attributes as read from a node, before the defaults that depend on the input shapes are applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionAttributes {
    /// `num_heads` (required, > 0, for the attention ops; 0 for the pixel ops).
    pub num_heads: usize,
    /// `epsilon`, if given.
    pub epsilon: Option<f32>,
    /// `scale`, if given.
    pub scale: Option<f32>,
    /// `matmul_precision` (`"f32"` when absent).
    pub matmul: MatmulPrecision,
}

impl AttentionAttributes {
    /// Checks `num_heads` of an attention (named `node` in the error).
    pub fn new(
        op: CustomOp,
        node: &str,
        num_heads: Option<i64>,
        epsilon: Option<f32>,
        scale: Option<f32>,
        matmul_precision: Option<&str>,
    ) -> Result<Self, KernelShapeError> {
        let matmul = match matmul_precision {
            None => MatmulPrecision::F32,
            Some(v) => MatmulPrecision::parse(v).ok_or_else(|| {
                KernelShapeError(format!(
                    "{op} node '{node}': matmul_precision '{v}' is not one of \"f32\", \"bf16\""
                ))
            })?,
        };
        if !op.is_attention() {
            return Ok(AttentionAttributes {
                num_heads: 0,
                epsilon,
                scale,
                matmul,
            });
        }
        let num_heads = num_heads
            .filter(|&h| h > 0)
            .ok_or_else(|| KernelShapeError(format!("{op} node '{node}': missing or invalid 'num_heads'")))?;
        Ok(AttentionAttributes {
            num_heads: num_heads as usize,
            epsilon,
            scale,
            matmul,
        })
    }

    /// The kernel parameters for inputs whose head dim is that of `op`'s first q norm weight (the defaults of
    /// [`pixeldit_spec::custom_op`] where an attribute is absent).
    pub fn params(&self, op: CustomOp, inputs: &[(&[usize], &[f32])]) -> AttentionParams {
        let dh = inputs.get(op.head_dim_input()).map_or(0, |(_, d)| d.len());
        AttentionParams {
            num_heads: self.num_heads,
            epsilon: self.epsilon.unwrap_or(custom_op::DEFAULT_EPSILON),
            scale: self.scale.unwrap_or_else(|| custom_op::default_scale(dh)),
            matmul: self.matmul,
        }
    }
}

/// Operand sizes that do not match the op contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelShapeError(pub String);

impl fmt::Display for KernelShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pixeldit custom op: {}", self.0)
    }
}

impl std::error::Error for KernelShapeError {}

/// A raw output pointer shared by the tasks of one kernel call, each of which writes only its own disjoint part of
/// the buffer (rows of a pixel op, one head's column of an attention).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint parts of the buffer, and the kernels return only after all of them are done.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer (a method, so that closures capture the `Sync` wrapper, not its raw field).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// A host's parallel-for (ONNX Runtime's intra-op pool through `KernelContext_ParallelFor`): calls `task(i)` once
/// for every `i < n`, possibly on several threads, and returns when all calls are done. Calls it could not make
/// are made by the kernel on the calling thread.
pub trait ParallelFor {
    /// Runs `task(0..n)`.
    fn parallel_for(&self, n: usize, task: &(dyn Fn(usize) + Sync + Send));
}

/// Where a kernel runs its independent `(batch, head)` tasks.
#[derive(Clone, Copy)]
pub enum Threads<'a> {
    /// Scoped threads of its own, one per available core, when the work is large enough (tract, tests).
    Own,
    /// The host's thread pool, so that the kernel does not compete with it for the cores.
    Host(&'a dyn ParallelFor),
}

//! INT8 / FP8 variant of one Linear.
//!
//! * Weight: the checkpoint initializer keeps its name and is stored as int8 / float8e4m3fn with one scale per
//!   output row (axis 0 of `[out, in]`, initializer `<weight>_scale`; INT8 also `<weight>_zero_point` = 0), read
//!   by `DequantizeLinear(axis=0)`.
//! * Activation (unless weight-only): `QuantizeLinear -> DequantizeLinear` on the 2-D input with one scale
//!   (`<scope>.input_scale`) and zero point 0, the explicit-quantization pattern TensorRT fuses into an int8/fp8
//!   GEMM and ONNX Runtime runs (and, for int8, fuses into `QGemm` on the CPU).
//! * INT8 with activations: the bias moves out of the `Gemm` into an `Add`, because ONNX Runtime fuses a Q/DQ
//!   `Gemm` only when every input comes from a `DequantizeLinear`.
//! * SmoothQuant (optional): `Mul` by `1/s` (`<scope>.smooth_inv_scale`) before the activation Q/DQ, and the
//!   weight's input columns multiplied by `s` before it is quantized (the stored weight is the smoothed one).

use super::{node_index, redirect};
use crate::calib::TensorStats;
use crate::config::{Format, QuantConfig};
use crate::scales::{activation_range, column_amax, nonzero, smooth_factors, weight_scales};
use crate::select::Linear;
use crate::{QuantizeError, Result};
use pixeldit_graph::{Attr, DType, Dim, Encoding, F32Source, Graph, TensorData, Value};
use serde::Serialize;
use std::sync::Arc;

/// What was done to one layer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerReport {
    /// Smallest per-channel weight scale.
    pub weight_scale_min: f32,
    /// Largest per-channel weight scale.
    pub weight_scale_max: f32,
    /// Calibrated input range (after smoothing), when activations are quantized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_range: Option<f32>,
    /// Input scale, when activations are quantized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_scale: Option<f32>,
    /// Smallest and largest SmoothQuant factor, when smoothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smooth_range: Option<[f32; 2]>,
}

/// A weight whose input columns are multiplied by per-column factors (SmoothQuant), read lazily.
struct ScaledColumns {
    inner: Arc<dyn F32Source>,
    factors: Arc<Vec<f32>>,
}

impl F32Source for ScaledColumns {
    fn read(&self) -> pixeldit_graph::Result<Vec<f32>> {
        let mut v = self.inner.read()?;
        let cols = self.factors.len();
        for row in v.chunks_mut(cols) {
            for (x, f) in row.iter_mut().zip(self.factors.iter()) {
                *x *= f;
            }
        }
        Ok(v)
    }
}

fn scalar_bytes(v: f32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// Rewrites `l` for `cfg` (INT8 or FP8); `stats` are required when activations are quantized.
pub fn qdq_linear(
    g: &mut Graph,
    l: &Linear,
    cfg: &QuantConfig,
    stats: Option<&TensorStats>,
) -> Result<LayerReport> {
    let dtype = match cfg.format {
        Format::Int8 => DType::I8,
        Format::Fp8 => DType::F8E4M3,
        Format::Bf16 | Format::Mxfp8 => unreachable!("bf16 and mxfp8 have their own passes"),
    };
    let (source, encoding) = deferred_weight(g, &l.weight);
    let stats = if cfg.activations {
        Some(stats.ok_or_else(|| QuantizeError::MissingStats(l.scope.clone()))?)
    } else {
        None
    };
    let SmoothedWeight { values, factors } = smooth_weight(g, l, cfg, stats, source, encoding)?;
    let (wd, weight_range) = quantize_weight(g, l, cfg, dtype, values)?;
    let act = match stats {
        Some(st) => {
            let smooth = factors.as_deref().map(Vec::as_slice);
            Some(insert_activation_qdq(g, l, cfg, dtype, st, smooth)?)
        }
        None => None,
    };
    rewire_gemm(g, l, cfg, wd, act.as_ref().map(|a| a.output))?;
    Ok(LayerReport {
        weight_scale_min: weight_range[0],
        weight_scale_max: weight_range[1],
        input_range: act.as_ref().map(|a| a.range),
        input_scale: act.as_ref().map(|a| a.scale),
        smooth_range: factors.map(|s| min_max(&s)),
    })
}

/// Smallest and largest of `v` (`[inf, 0]` when empty).
fn min_max(v: &[f32]) -> [f32; 2] {
    [
        v.iter().copied().fold(f32::INFINITY, f32::min),
        v.iter().copied().fold(0.0f32, f32::max),
    ]
}

/// The lazy source and encoding of the checkpoint weight `name`.
fn deferred_weight(g: &Graph, name: &str) -> (Arc<dyn F32Source>, Encoding) {
    g.initializers()
        .find(|(_, i)| i.name == name)
        .and_then(|(_, i)| match &i.data {
            TensorData::Deferred { source, encoding } => Some((source.clone(), encoding.clone())),
            TensorData::Bytes(_) => None,
        })
        .expect("find_linears returns deferred weights")
}

/// The weight values to quantize and the SmoothQuant factors `s` they were multiplied by, if any.
struct SmoothedWeight {
    values: Vec<f32>,
    factors: Option<Arc<Vec<f32>>>,
}

/// Reads the weight and, with SmoothQuant, migrates the activation range into its input columns: the
/// stored initializer becomes the smoothed weight.
fn smooth_weight(
    g: &mut Graph,
    l: &Linear,
    cfg: &QuantConfig,
    stats: Option<&TensorStats>,
    source: Arc<dyn F32Source>,
    encoding: Encoding,
) -> Result<SmoothedWeight> {
    let mut w = source.read()?;
    let (Some(alpha), Some(st)) = (cfg.smoothquant, stats) else {
        return Ok(SmoothedWeight {
            values: w,
            factors: None,
        });
    };
    let s = smooth_factors(&st.channel_amax, &column_amax(&w, l.in_features), alpha);
    for row in w.chunks_mut(l.in_features) {
        for (x, f) in row.iter_mut().zip(&s) {
            *x *= f;
        }
    }
    let factors = Arc::new(s);
    let scaled: Arc<dyn F32Source> = Arc::new(ScaledColumns {
        inner: source,
        factors: factors.clone(),
    });
    g.initializer_mut(&l.weight).expect("weight exists").data = TensorData::Deferred {
        source: scaled,
        encoding,
    };
    Ok(SmoothedWeight {
        values: w,
        factors: Some(factors),
    })
}

/// Stores the weight quantized under its checkpoint name with per-output-channel scales
/// (`<weight>_scale`, INT8 also `<weight>_zero_point`) and adds its `DequantizeLinear(axis=0)`.
/// Returns the dequantized weight and the smallest and largest scale.
fn quantize_weight(
    g: &mut Graph,
    l: &Linear,
    cfg: &QuantConfig,
    dtype: DType,
    w: Vec<f32>,
) -> Result<(Value, [f32; 2])> {
    let scales = weight_scales(&w, l.out_features, cfg.weight_qmax());
    drop(w);
    let range = min_max(&scales);
    let scale_bytes = pixeldit_graph::encode_f32(&scales, DType::F32);
    g.set_weight_encoding(
        &l.weight,
        Encoding::Quantized {
            dtype,
            axis: 0,
            scales: Arc::new(scales),
            qmax: cfg.weight_qmax(),
        },
    )?;
    let wv = g.value_by_name(&l.weight).expect("weight exists");
    let ws = g.initializer(
        &format!("{}_scale", l.weight),
        DType::F32,
        vec![l.out_features],
        TensorData::Bytes(scale_bytes),
    )?;
    // INT8: zero points are 0, but ONNX Runtime fuses Q/DQ into its integer QGemm only when the weight's is
    // given. FP8: none, because ONNX Runtime would then also fuse FLOAT8 into QGemm, which has no float8 kernel.
    let wz = match cfg.format {
        Format::Int8 => Some(g.initializer(
            &format!("{}_zero_point", l.weight),
            dtype,
            vec![l.out_features],
            TensorData::Bytes(vec![0u8; l.out_features]),
        )?),
        _ => None,
    };
    let wshape = vec![Dim::Fixed(l.out_features), Dim::Fixed(l.in_features)];
    let mut dq_inputs = vec![Some(wv), Some(ws)];
    dq_inputs.extend(wz.map(Some));
    let wd = g.scoped(&l.scope, |g| {
        Ok(g.add_node(
            "DequantizeLinear",
            "",
            &dq_inputs,
            vec![("axis", Attr::Int(0))],
            vec![(DType::F32, wshape)],
        )?[0])
    })?;
    Ok((wd, range))
}

/// The activation side of a layer: its Q/DQ output and the calibrated range and scale.
struct ActivationQdq {
    output: Value,
    range: f32,
    scale: f32,
}

/// Adds the per-tensor `QuantizeLinear -> DequantizeLinear` on the layer input (after the SmoothQuant
/// `Mul` by `1/s` when `smooth` is given), with the scale `<scope>.input_scale` and zero point 0.
fn insert_activation_qdq(
    g: &mut Graph,
    l: &Linear,
    cfg: &QuantConfig,
    dtype: DType,
    st: &TensorStats,
    smooth: Option<&[f32]>,
) -> Result<ActivationQdq> {
    let range = match smooth {
        // The smoothed input's range is exact from the per-channel maxima.
        Some(s) => st
            .channel_amax
            .iter()
            .zip(s.iter())
            .fold(0.0f32, |m, (a, f)| m.max(a / f)),
        None => activation_range(st, cfg.method),
    };
    let scale = nonzero(range / cfg.activation_qmax());
    let inv = match smooth {
        Some(s) => {
            let inv: Vec<f32> = s.iter().map(|f| 1.0 / f).collect();
            Some(g.initializer(
                &format!("{}.smooth_inv_scale", l.scope),
                DType::F32,
                vec![l.in_features],
                TensorData::Bytes(pixeldit_graph::encode_f32(&inv, DType::F32)),
            )?)
        }
        None => None,
    };
    let sv = g.initializer(
        &format!("{}.input_scale", l.scope),
        DType::F32,
        vec![],
        TensorData::Bytes(scalar_bytes(scale)),
    )?;
    let zp = g.constant(dtype, vec![], vec![0u8])?;
    let output = g.scoped(&l.scope, |g| {
        let x = match inv {
            Some(inv) => g.mul(l.input, inv)?,
            None => l.input,
        };
        let q = g.quantize_linear(x, sv, zp, None)?;
        g.dequantize_linear(q, sv, zp, None)
    })?;
    Ok(ActivationQdq { output, range, scale })
}

/// Points the `Gemm` at the dequantized weight `wd` and input `xq`. INT8 with activations moves the bias into
/// an `Add` after it (ONNX Runtime fuses a Q/DQ `Gemm` only when every input is dequantized), unless the
/// `Gemm` output is a graph output.
fn rewire_gemm(g: &mut Graph, l: &Linear, cfg: &QuantConfig, wd: Value, xq: Option<Value>) -> Result<()> {
    let i = node_index(g, &l.node);
    let split_bias = cfg.format == Format::Int8 && xq.is_some() && l.bias.is_some();
    let out = g.nodes()[i].outputs[0];
    let split_bias = split_bias && !g.outputs().contains(&out);
    {
        let n = &mut g.nodes_mut()[i];
        n.inputs[1] = Some(wd);
        if let Some(x) = xq {
            n.inputs[0] = Some(x);
        }
        if split_bias {
            n.inputs.truncate(2);
        }
    }
    if split_bias {
        let b = g
            .value_by_name(l.bias.as_deref().expect("checked"))
            .expect("bias exists");
        let added = g.scoped(&l.scope, |g| g.add(out, b))?;
        let add_name = g.nodes().last().expect("just added").name.clone();
        redirect(g, out, added, &add_name);
    }
    Ok(())
}

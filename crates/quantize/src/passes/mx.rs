//! MXFP8 weights (`mxfp8-weights`): the checkpoint initializer keeps its name and is stored as float8e4m3fn
//! `[out, in]` with one power-of-two scale per block of 32 inputs (`<weight>_scale`, f32 `[out, in / 32]`), read by
//! a blocked `DequantizeLinear(axis=1, block_size=32)` (opset 21) before the unchanged f32 `Gemm`.
//!
//! The scales follow comfy-kitchen's `quantize_mxfp8`: `2^ceil(log2(amax / 448))` per block (1 for an all-zero
//! block), so the weights of an MXFP8 checkpoint, which the exporter dequantized exactly, are stored with their
//! values unchanged (`w / 2^k` is again an E4M3 value).

use super::node_index;
use crate::passes::qdq::LayerReport;
use crate::select::Linear;
use crate::Result;
use pixeldit_graph::{Attr, DType, Dim, Encoding, Graph, TensorData};
use std::sync::Arc;

/// The MXFP8 block size along the input dimension.
pub const BLOCK: usize = 32;

/// The power-of-two block scales of a row-major `[rows, cols]` weight (`cols` a multiple of [`BLOCK`]).
pub fn block_scales(w: &[f32], cols: usize) -> Vec<f32> {
    w.chunks(BLOCK)
        .map(|b| {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 {
                return 1.0;
            }
            let e = ((amax / 448.0).max(2f32.powi(-127)) as f64).log2().ceil() as i32;
            2f64.powi(e.clamp(-127, 127)) as f32
        })
        .collect::<Vec<_>>()
        .chunks(cols / BLOCK)
        .flatten()
        .copied()
        .collect()
}

/// Rewrites `l` to MXFP8 weights.
pub fn mx_linear(g: &mut Graph, l: &Linear) -> Result<LayerReport> {
    let w = g
        .initializers()
        .find(|(_, i)| i.name == l.weight)
        .and_then(|(_, i)| i.read_f32())
        .expect("find_linears returns deferred weights")?;
    let scales = block_scales(&w, l.in_features);
    drop(w);
    let min = scales.iter().copied().fold(f32::INFINITY, f32::min);
    let max = scales.iter().copied().fold(0f32, f32::max);
    let bytes = pixeldit_graph::encode_f32(&scales, DType::F32);
    g.set_weight_encoding(
        &l.weight,
        Encoding::Blocked {
            dtype: DType::F8E4M3,
            block: BLOCK,
            scales: Arc::new(scales),
        },
    )?;
    let wv = g.value_by_name(&l.weight).expect("weight exists");
    let ws = g.initializer(
        &format!("{}_scale", l.weight),
        DType::F32,
        vec![l.out_features, l.in_features / BLOCK],
        TensorData::Bytes(bytes),
    )?;
    let wshape = vec![Dim::Fixed(l.out_features), Dim::Fixed(l.in_features)];
    let wd = g.scoped(&l.scope, |g| {
        Ok(g.add_node(
            "DequantizeLinear",
            "",
            &[Some(wv), Some(ws)],
            vec![("axis", Attr::Int(1)), ("block_size", Attr::Int(BLOCK as i64))],
            vec![(DType::F32, wshape)],
        )?[0])
    })?;
    let i = node_index(g, &l.node);
    g.nodes_mut()[i].inputs[1] = Some(wd);
    Ok(LayerReport {
        weight_scale_min: min,
        weight_scale_max: max,
        input_range: None,
        input_scale: None,
        smooth_range: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_scales_are_powers_of_two_covering_each_block() {
        let mut w = vec![0f32; 2 * 64];
        w[0] = 448.0; // exactly representable with scale 1
        w[40] = 449.0; // needs scale 2
        w[64] = -0.001; // row 1, block 0: 2^ceil(log2(0.001 / 448))
        let s = block_scales(&w, 64);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], 1.0);
        assert_eq!(s[1], 2.0);
        assert_eq!(s[2], 2f32.powi(-18));
        assert_eq!(s[3], 1.0); // an all-zero block
        for (i, b) in w.chunks(32).enumerate() {
            assert!(b.iter().all(|v| (v / s[i]).abs() <= 448.0));
        }
    }
}

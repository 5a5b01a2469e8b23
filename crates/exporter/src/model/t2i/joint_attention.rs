//! `patch_blocks.{i}.attn`: `MMDiTJointAttention` (spec 5.2). Two qkv projections (image `qkv_x`, text `qkv_y`,
//! no bias), per-stream QK-RMSNorm, 2D RoPE on image tokens and 1D RoPE on text tokens, one SDPA over
//! `[text; image]`, split back and projected by `proj_x` / `proj_y`.
//!
//! Lowerings, as for the C2I attention:
//! * `custom`: one `pixeldit.JointRotaryAttention` node (semantics in [`pixeldit_spec::custom_op`]) with the text
//!   and image RoPE tables stacked into one `[Lt + L, Dh/2]` table;
//! * `onnx23`: `RMSNormalization` + `RotaryEmbedding` per stream, `Concat` on the sequence axis, `Attention`;
//! * `decomposed`: opset-17 primitives.

use crate::nn::{rotate_heads_first, split_heads, Ctx, Grid};
use crate::{ExportError, Result};
use pixeldit_graph::{Attr, DType, Dim, Symbol, Value};
use pixeldit_spec::{custom_op, AttentionMode, ModelConfig};

/// Returns `(out_x [B, L, D], out_y [B, Lt, D])`; `out_y` only when `text_out` (the last block's is dead).
#[allow(clippy::too_many_arguments)]
pub fn joint_rotary_attention(
    cx: &mut Ctx,
    cfg: &ModelConfig,
    prefix: &str,
    x: Value,
    y: Value,
    grid: Grid,
    text_out: bool,
) -> Result<(Value, Option<Value>)> {
    let text = cfg
        .text
        .as_ref()
        .ok_or_else(|| ExportError::Unsupported("joint attention needs a text config".into()))?;
    let heads = cfg.num_heads;
    let width = cfg.hidden_size;
    let dh = width / heads;
    let si = grid.tokens();
    let st = cx.g.shape(y)[1].fixed().expect("fixed text length");
    // The joint length: fixed, or the graph's `Joint` symbol (bound to `rows * cols + st` by the model).
    let sj = match si {
        Dim::Fixed(n) => Dim::Fixed(st + n),
        _ => Dim::of(Symbol::Joint, 1),
    };
    let batch = cx.g.shape(x)[0];
    let qkv_x = cx.linear(x, &format!("{prefix}.qkv_x"), 3 * width, false)?;
    let qkv_y = cx.linear(y, &format!("{prefix}.qkv_y"), 3 * width, false)?;
    let (tcos, tsin) = custom_op::rope_1d_tables(st, dh, text.rope_theta);
    let scale = 1.0 / (dh as f32).sqrt();
    let eps = cx.eps;
    let joint_shape = [batch, sj, Dim::Fixed(width)];
    let Some((hs, ws)) = grid.sizes() else {
        let rope = (&tcos[..], &tsin[..], cfg.rope_theta);
        let out = dynamic_joint(
            cx,
            prefix,
            (qkv_x, qkv_y),
            grid,
            st,
            sj,
            &joint_shape,
            rope,
            heads,
        )?;
        return project(cx, prefix, out, st, si, width, text_out);
    };
    let (icos, isin) = custom_op::rope_2d_tables(hs, ws, dh, cfg.rope_theta);
    let si = hs * ws;

    let out = match cx.attention {
        AttentionMode::Custom => {
            let cos: Vec<f32> = tcos.iter().chain(&icos).copied().collect();
            let sin: Vec<f32> = tsin.iter().chain(&isin).copied().collect();
            let name = format!("pixeldit.rope_joint.{st}+{hs}x{ws}.d{dh}");
            let cos = cx.table(&format!("{name}.cos"), vec![st + si, dh / 2], &cos)?;
            let sin = cx.table(&format!("{name}.sin"), vec![st + si, dh / 2], &sin)?;
            let mut norms = Vec::new();
            for k in ["q_norm_y", "k_norm_y", "q_norm_x", "k_norm_x"] {
                norms.push(cx.weight(&format!("{prefix}.{k}.weight"), &[dh], DType::F32)?);
            }
            cx.g.scoped(prefix, |g| {
                g.set_domain_version(custom_op::DOMAIN, custom_op::VERSION);
                let attrs = vec![
                    ("num_heads", Attr::Int(heads as i64)),
                    ("epsilon", Attr::Float(eps)),
                    ("scale", Attr::Float(scale)),
                ];
                let ins = [
                    Some(qkv_y),
                    Some(qkv_x),
                    Some(norms[0]),
                    Some(norms[1]),
                    Some(norms[2]),
                    Some(norms[3]),
                    Some(cos),
                    Some(sin),
                ];
                let out = vec![(DType::F32, joint_shape.to_vec())];
                Ok(g.add_node(custom_op::JOINT_OP_TYPE, custom_op::DOMAIN, &ins, attrs, out)?[0])
            })?
        }
        AttentionMode::Decomposed | AttentionMode::Onnx23 => {
            let decomposed = cx.attention == AttentionMode::Decomposed;
            // Per-stream q, k, v [B, H, S, Dh] with their own norms and rotations.
            let mut streams = Vec::new();
            for (qkv, s, tag, cos, sin, table) in [
                (
                    qkv_y,
                    st,
                    "y",
                    &tcos,
                    &tsin,
                    format!("pixeldit.rope1d.{st}.d{dh}"),
                ),
                (
                    qkv_x,
                    si,
                    "x",
                    &icos,
                    &isin,
                    format!("pixeldit.rope2d.{hs}x{ws}.d{dh}"),
                ),
            ] {
                let shape = if decomposed {
                    vec![s, 1, dh / 2, 1]
                } else {
                    vec![s, dh / 2]
                };
                let cos = cx.table(&format!("{table}.cos"), shape.clone(), cos)?;
                let sin = cx.table(&format!("{table}.sin"), shape, sin)?;
                let (q, k, v) = cx.g.scoped(prefix, |g| split_heads(g, qkv, heads, dh))?;
                let q = cx.rms_norm(q, &format!("{prefix}.q_norm_{tag}.weight"))?;
                let k = cx.rms_norm(k, &format!("{prefix}.k_norm_{tag}.weight"))?;
                let pos = if decomposed {
                    None
                } else {
                    Some(cx.position_ids(qkv, Dim::Fixed(s))?)
                };
                let (q, k, v) = cx.g.scoped(&format!("{prefix}.rope_{tag}"), |g| {
                    rotate_heads_first(g, (q, k, v), cos, sin, pos, dh)
                })?;
                streams.push((q, k, v));
            }
            cx.g.scoped(prefix, |g| {
                let q = g.concat(&[streams[0].0, streams[1].0], 2)?;
                let k = g.concat(&[streams[0].1, streams[1].1], 2)?;
                let v = g.concat(&[streams[0].2, streams[1].2], 2)?;
                let o = if decomposed {
                    let kt = g.transpose(k, &[0, 1, 3, 2])?;
                    let sc = g.matmul(q, kt)?;
                    let sv = g.scalar(DType::F32, scale)?;
                    let sc = g.mul(sc, sv)?;
                    let p = g.softmax(sc, -1)?;
                    g.matmul(p, v)?
                } else {
                    g.attention(q, k, v, scale)?
                };
                let o = g.transpose(o, &[0, 2, 1, 3])?;
                g.reshape(o, &joint_shape)
            })?
        }
    };
    project(cx, prefix, out, st, Dim::Fixed(si), width, text_out)
}

/// Splits the joint output `[B, st + si, width]` into text and image tokens and projects them.
fn project(
    cx: &mut Ctx,
    prefix: &str,
    out: Value,
    st: usize,
    si: Dim,
    width: usize,
    text_out: bool,
) -> Result<(Value, Option<Value>)> {
    let parts = cx.g.scoped(prefix, |g| match si {
        Dim::Fixed(si) => g.split(out, 1, &[st, si]),
        _ => g.split_as(out, 1, &[Dim::Fixed(st), si]),
    })?;
    let ox = cx.linear(parts[1], &format!("{prefix}.proj_x"), width, true)?;
    let oy = if text_out {
        Some(cx.linear(parts[0], &format!("{prefix}.proj_y"), width, true)?)
    } else {
        None
    };
    Ok((ox, oy))
}

/// The joint attention of a dynamic-size export: the image RoPE tables come from [`Ctx::rope_2d`] (computed in the
/// graph), the text tables are constants, and the joint sequence has the symbolic length `sj`.
#[allow(clippy::too_many_arguments)]
fn dynamic_joint(
    cx: &mut Ctx,
    prefix: &str,
    (qkv_x, qkv_y): (Value, Value),
    grid: Grid,
    st: usize,
    sj: Dim,
    joint_shape: &[Dim; 3],
    (tcos, tsin, theta): (&[f32], &[f32], f64),
    heads: usize,
) -> Result<Value> {
    let dh = joint_shape[2].fixed().expect("fixed width") / heads;
    let scale = 1.0 / (dh as f32).sqrt();
    let eps = cx.eps;
    let (icos, isin) = cx.rope_2d(grid, dh, theta)?;
    let decomposed = cx.attention == AttentionMode::Decomposed;
    let text_shape = if decomposed {
        vec![st, 1, dh / 2, 1]
    } else {
        vec![st, dh / 2]
    };
    let table = format!("pixeldit.rope1d.{st}.d{dh}");
    let tcos = cx.table(&format!("{table}.cos"), text_shape.clone(), tcos)?;
    let tsin = cx.table(&format!("{table}.sin"), text_shape, tsin)?;
    if cx.attention == AttentionMode::Custom {
        let cos = cx.g.scoped(prefix, |g| g.concat_as(&[tcos, icos], 0, sj))?;
        let sin = cx.g.scoped(prefix, |g| g.concat_as(&[tsin, isin], 0, sj))?;
        let mut norms = Vec::new();
        for k in ["q_norm_y", "k_norm_y", "q_norm_x", "k_norm_x"] {
            norms.push(cx.weight(&format!("{prefix}.{k}.weight"), &[dh], DType::F32)?);
        }
        return Ok(cx.g.scoped(prefix, |g| {
            g.set_domain_version(custom_op::DOMAIN, custom_op::VERSION);
            let attrs = vec![
                ("num_heads", Attr::Int(heads as i64)),
                ("epsilon", Attr::Float(eps)),
                ("scale", Attr::Float(scale)),
            ];
            let ins = [
                Some(qkv_y),
                Some(qkv_x),
                Some(norms[0]),
                Some(norms[1]),
                Some(norms[2]),
                Some(norms[3]),
                Some(cos),
                Some(sin),
            ];
            let out = vec![(DType::F32, joint_shape.to_vec())];
            Ok(g.add_node(custom_op::JOINT_OP_TYPE, custom_op::DOMAIN, &ins, attrs, out)?[0])
        })?);
    }
    let mut streams = Vec::new();
    for (qkv, s, tag, cos, sin) in [
        (qkv_y, Dim::Fixed(st), "y", tcos, tsin),
        (qkv_x, grid.tokens(), "x", icos, isin),
    ] {
        let (q, k, v) = cx.g.scoped(prefix, |g| split_heads(g, qkv, heads, dh))?;
        let q = cx.rms_norm(q, &format!("{prefix}.q_norm_{tag}.weight"))?;
        let k = cx.rms_norm(k, &format!("{prefix}.k_norm_{tag}.weight"))?;
        let pos = if decomposed {
            None
        } else {
            Some(cx.position_ids(qkv, s)?)
        };
        let (q, k, v) = cx.g.scoped(&format!("{prefix}.rope_{tag}"), |g| {
            rotate_heads_first(g, (q, k, v), cos, sin, pos, dh)
        })?;
        streams.push((q, k, v));
    }
    Ok(cx.g.scoped(prefix, |g| {
        let q = g.concat_as(&[streams[0].0, streams[1].0], 2, sj)?;
        let k = g.concat_as(&[streams[0].1, streams[1].1], 2, sj)?;
        let v = g.concat_as(&[streams[0].2, streams[1].2], 2, sj)?;
        let o = if decomposed {
            let kt = g.transpose(k, &[0, 1, 3, 2])?;
            let sc = g.matmul(q, kt)?;
            let sv = g.scalar(DType::F32, scale)?;
            let sc = g.mul(sc, sv)?;
            let p = g.softmax(sc, -1)?;
            g.matmul(p, v)?
        } else {
            g.attention(q, k, v, scale)?
        };
        let o = g.transpose(o, &[0, 2, 1, 3])?;
        g.reshape(o, joint_shape)
    })?)
}

//! `pixel_blocks.{i}`: the PiT block (pixel-wise AdaLN, token compaction, attention, GELU MLP),
//! spec 2.3 step 10, and its post-modulation variant (shared docs `checkpoints-in-the-wild.md`
//! section 2; official `PiTBlock(adaln_post_modulation=True)`); with [`PixelOps::Fused`] the per-pixel work is
//! two `pixeldit` nodes (`PixelModulate`, `PixelGatedMlp`) around the token compaction.

use crate::nn::{AdaLn, Ctx, Grid};
use crate::Result;
use pixeldit_graph::{Attr, DType, Dim, Value};
use pixeldit_spec::{custom_op, ModelConfig, PixelOps};

/// One PiT block: pixels `x [B*L, p*p, 16]`, `s_cond [B*L, D]` -> `[B*L, p*p, 16]`.
pub fn pixel_block(
    cx: &mut Ctx,
    cfg: &ModelConfig,
    i: usize,
    x: Value,
    s_cond: Value,
    grid: Grid,
) -> Result<Value> {
    let pre = format!("pixel_blocks.{i}");
    let p2 = cfg.patch_pixels();
    let dp = cfg.pixel_hidden_size;
    let rows = cx.g.shape(x)[0];
    let pix = [rows, Dim::Fixed(p2), Dim::Fixed(dp)];
    let fused = cx.pixel_ops == PixelOps::Fused;

    // Pixel-wise AdaLN: rows are laid out [pixel][n_mod][D_pix] (6 chunks, or 4 with post-modulation). The fused
    // ops add the bias themselves.
    let n_mod = cfg.pit_modulation_chunks();
    let m = cx.linear(
        s_cond,
        &format!("{pre}.adaLN_modulation.0"),
        n_mod * dp * p2,
        !fused,
    )?;
    let m = if cx.patch_cut == Some(pixeldit_spec::PatchCut::Modulation) {
        let name = format!("{}.{i}", super::PIXEL_MODULATION);
        let named = cx.g.named(m, &name)?;
        cx.cut_values.push((name, named));
        named
    } else {
        m
    };
    if fused {
        return fused_pixel_block(cx, cfg, &pre, x, m, grid);
    }
    let chunks = cx.g.scoped(&format!("{pre}.adaLN_modulation"), |g| {
        let m = g.reshape(m, &[rows, Dim::Fixed(p2), Dim::Fixed(n_mod), Dim::Fixed(dp)])?;
        let parts = g.split(m, 2, &vec![1; n_mod])?;
        parts
            .into_iter()
            .map(|v| g.reshape(v, &pix))
            .collect::<pixeldit_graph::Result<Vec<_>>>()
    })?;
    // Default: the branch inputs are modulated and the outputs gated. Post-modulation (official
    // `pit_adaln_post_modulation`): chunks scale1, shift1, scale2, shift2 modulate the branch outputs, no gates.
    let post = cfg.pit_adaln_post_modulation;
    let (attn_mod, mlp_mod) = if post {
        let [scale1, shift1, scale2, shift2] = chunks[..] else {
            unreachable!("four chunks")
        };
        (
            Branch::Post {
                shift: shift1,
                scale: scale1,
            },
            Branch::Post {
                shift: shift2,
                scale: scale2,
            },
        )
    } else {
        let AdaLn {
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        } = AdaLn::from_chunks(&chunks);
        (
            Branch::Pre {
                shift: shift_msa,
                scale: scale_msa,
                gate: gate_msa,
            },
            Branch::Pre {
                shift: shift_mlp,
                scale: scale_mlp,
                gate: gate_mlp,
            },
        )
    };

    let xn = cx.rms_norm(x, &format!("{pre}.norm1.weight"))?;
    let xn = attn_mod.input(cx, xn)?;
    let exp = compact_attend_expand(cx, cfg, &pre, xn, grid)?;
    let e = cx.g.scoped(&pre, |g| g.reshape(exp, &pix))?;
    let x = attn_mod.residual(cx, &pre, x, e)?;

    let h = cx.rms_norm(x, &format!("{pre}.norm2.weight"))?;
    let h = mlp_mod.input(cx, h)?;
    let h = cx.linear(h, &format!("{pre}.mlp.fc1"), dp * cfg.pixel_mlp_ratio, true)?;
    let h = cx.gelu(h, &format!("{pre}.mlp.act"))?;
    let h = cx.linear(h, &format!("{pre}.mlp.fc2"), dp, true)?;
    mlp_mod.residual(cx, &pre, x, h)
}

/// The token compaction around the attention: the modulated pixels `xn [B*L, p*p, 16]` -> `compress_to_attn` ->
/// one token per patch -> attention over the patches -> `expand_from_attn` -> `[B*L, p*p*16]`.
fn compact_attend_expand(cx: &mut Ctx, cfg: &ModelConfig, pre: &str, xn: Value, grid: Grid) -> Result<Value> {
    let (p2, dp, a) = (
        cfg.patch_pixels(),
        cfg.pixel_hidden_size,
        cfg.pixel_attn_hidden_size,
    );
    let l = grid.tokens();
    let rows = cx.g.shape(xn)[0];
    let batch = rows.divided_by(l).unwrap_or(rows);
    let flat =
        cx.g.scoped(pre, |g| g.reshape(xn, &[rows, Dim::Fixed(p2 * dp)]))?;
    let tok = cx.linear(flat, &format!("{pre}.compress_to_attn"), a, true)?;
    let tok = cx.g.scoped(pre, |g| g.reshape(tok, &[batch, l, Dim::Fixed(a)]))?;
    let att = cx.rotary_attention(
        tok,
        &format!("{pre}.attn"),
        cfg.pixel_num_heads,
        grid,
        cfg.rope_theta,
    )?;
    let att = cx.g.scoped(pre, |g| g.reshape(att, &[rows, Dim::Fixed(a)]))?;
    cx.linear(att, &format!("{pre}.expand_from_attn"), p2 * dp, true)
}

/// The PiT block with [`PixelOps::Fused`]: `PixelModulate(x, m, bias, norm1)` -> compaction and attention ->
/// `PixelGatedMlp(x, expanded, m, bias, norm2, fc1, fc2)`, `m` being the adaLN projection without its bias.
fn fused_pixel_block(
    cx: &mut Ctx,
    cfg: &ModelConfig,
    pre: &str,
    x: Value,
    m: Value,
    grid: Grid,
) -> Result<Value> {
    let (p2, dp) = (cfg.patch_pixels(), cfg.pixel_hidden_size);
    let hidden = dp * cfg.pixel_mlp_ratio;
    let n_mod = custom_op::PIXEL_MODULATION_CHUNKS;
    let bias = cx.weight(
        &format!("{pre}.adaLN_modulation.0.bias"),
        &[n_mod * dp * p2],
        DType::F32,
    )?;
    let norm1 = cx.weight(&format!("{pre}.norm1.weight"), &[dp], DType::F32)?;
    let shape = cx.g.shape(x).to_vec();
    let eps = cx.eps;
    let pixel_op = |cx: &mut Ctx, op: &str, ins: &[Value]| -> Result<Value> {
        let ins: Vec<Option<Value>> = ins.iter().map(|&v| Some(v)).collect();
        Ok(cx.g.scoped(pre, |g| {
            g.set_domain_version(custom_op::DOMAIN, custom_op::VERSION);
            let attrs = vec![("epsilon", Attr::Float(eps))];
            Ok(g.add_node(
                op,
                custom_op::DOMAIN,
                &ins,
                attrs,
                vec![(DType::F32, shape.clone())],
            )?[0])
        })?)
    };
    let xn = pixel_op(cx, custom_op::PIXEL_MODULATE_OP_TYPE, &[x, m, bias, norm1])?;
    let exp = compact_attend_expand(cx, cfg, pre, xn, grid)?;
    let norm2 = cx.weight(&format!("{pre}.norm2.weight"), &[dp], DType::F32)?;
    let fc1_w = cx.weight(&format!("{pre}.mlp.fc1.weight"), &[hidden, dp], DType::F32)?;
    let fc1_b = cx.weight(&format!("{pre}.mlp.fc1.bias"), &[hidden], DType::F32)?;
    let fc2_w = cx.weight(&format!("{pre}.mlp.fc2.weight"), &[dp, hidden], DType::F32)?;
    let fc2_b = cx.weight(&format!("{pre}.mlp.fc2.bias"), &[dp], DType::F32)?;
    pixel_op(
        cx,
        custom_op::PIXEL_GATED_MLP_OP_TYPE,
        &[x, exp, m, bias, norm2, fc1_w, fc1_b, fc2_w, fc2_b],
    )
}

/// How one branch (attention or MLP) of a PiT block is conditioned.
#[derive(Clone, Copy)]
enum Branch {
    /// `x + gate * f(N(x) * (1 + scale) + shift)` (the default, 6-way).
    Pre { shift: Value, scale: Value, gate: Value },
    /// `x + f(N(x)) * (1 + scale) + shift` (post-modulation, 4-way).
    Post { shift: Value, scale: Value },
}

impl Branch {
    /// The branch input from the normalized stream.
    fn input(self, cx: &mut Ctx, xn: Value) -> Result<Value> {
        match self {
            Branch::Pre { shift, scale, .. } => cx.modulate(xn, shift, scale),
            Branch::Post { .. } => Ok(xn),
        }
    }

    /// The residual update `x + ...` with the branch output `f`.
    fn residual(self, cx: &mut Ctx, pre: &str, x: Value, f: Value) -> Result<Value> {
        match self {
            Branch::Pre { gate, .. } => Ok(cx.g.scoped(pre, |g| {
                let gf = g.mul(gate, f)?;
                g.add(x, gf)
            })?),
            Branch::Post { shift, scale } => {
                let mf = cx.modulate(f, shift, scale)?;
                Ok(cx.g.scoped(pre, |g| g.add(x, mf))?)
            }
        }
    }
}

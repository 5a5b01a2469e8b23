"""Reference forward pass of the text-to-image PixelDiT (``PixDiT_T2I``, arXiv 2511.20645).

Written from /work/shared/docs/pixeldit-architecture.md sections 3.3, 4.2 and 5, independent of the
Rust exporter in crates/.  It reuses the layer functions of :mod:`pixeldit_ref` (RMSNorm, adaLN,
2D RoPE, the PiT block, ...) and adds the T2I parts:

* text stream: ``y = RMSNorm(Linear(2304 -> D)(text)) + y_pos_embedding[:, :Ltxt]``;
* conditioning ``c = SiLU(t_emb)`` (no pooled text), with ``t = sigma * 1000``;
* MM-DiT patch blocks (``MMDiTBlockT2I``): separate image (x) and text (y) weights, two adaLN heads
  on the same c, joint attention over the concatenation [text; image] with per-stream QK-RMSNorm,
  1D RoPE on text (positions 0..Ltxt-1, pair j angle p * theta^(-2j/Dh)) and the normalised 2D
  RoPE on image tokens, one softmax over all tokens, no mask;
* ``s_cond = SiLU(t_emb + s_img)``, then the PiT blocks of the C2I model with the decoupled
  pixel-attention width A / pixel heads, the final layer and the unpatchify.

The text stream output of the last block is discarded (its proj/MLP are dead compute, as in the
official model).  Run ``.venv/bin/python reference/pixeldit_t2i_ref.py`` for a smoke test.
"""

import math

import numpy as np

from pixeldit_ref import (apply_rope, linear, modulate, pixel_block, pixel_pos_embed, rms_norm, rope_2d_tables, silu,
                          softmax, timestep_embedding)


def rope_1d_tables(length, dim, theta):
    """Text RoPE tables (cos, sin), each [length, dim/2] float64: pair j of token p uses p * theta^(-2j/dim)."""
    freqs = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.arange(length, dtype=np.float64)[:, None] * freqs[None, :]
    return np.cos(angles), np.sin(angles)


def swiglu(params, prefix, h, xp=np):
    """SwiGLU feed-forward ``w2(SiLU(w1 h) * w3 h)`` without biases."""
    a = silu(linear(h, params[prefix + "w1.weight"]), xp)
    return linear(a * linear(h, params[prefix + "w3.weight"]), params[prefix + "w2.weight"])


def joint_attention(params, prefix, x, y, num_heads, img_rope, txt_rope, eps, xp=np):
    """``MMDiTJointAttention``: returns (out_x, out_y) for image tokens x [B,Nx,D] and text tokens y [B,Ny,D]."""
    bsz, nx, width = x.shape
    ny = y.shape[1]
    hd = width // num_heads

    def heads(inp, key, n):
        qkv = linear(inp, params[prefix + key]).reshape(bsz, n, 3, num_heads, hd)
        return qkv.transpose(2, 0, 3, 1, 4)  # [3, B, heads, n, hd]

    tx, ty = heads(x, "qkv_x.weight", nx), heads(y, "qkv_y.weight", ny)
    qx = apply_rope(rms_norm(tx[0], params[prefix + "q_norm_x.weight"], eps, xp), *img_rope, xp)
    kx = apply_rope(rms_norm(tx[1], params[prefix + "k_norm_x.weight"], eps, xp), *img_rope, xp)
    qy = apply_rope(rms_norm(ty[0], params[prefix + "q_norm_y.weight"], eps, xp), *txt_rope, xp)
    ky = apply_rope(rms_norm(ty[1], params[prefix + "k_norm_y.weight"], eps, xp), *txt_rope, xp)
    q = xp.concatenate([qy, qx], axis=2)
    k = xp.concatenate([ky, kx], axis=2)
    v = xp.concatenate([ty[2], tx[2]], axis=2)
    attn = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd), xp)
    out = (attn @ v).transpose(0, 2, 1, 3).reshape(bsz, ny + nx, width)
    out_y, out_x = out[:, :ny], out[:, ny:]
    return (linear(out_x, params[prefix + "proj_x.weight"], params[prefix + "proj_x.bias"]),
            linear(out_y, params[prefix + "proj_y.weight"], params[prefix + "proj_y.bias"]))


def mmdit_block(params, prefix, x, y, c, num_heads, img_rope, txt_rope, eps, xp=np):
    """``MMDiTBlockT2I`` on image tokens x and text tokens y with conditioning c [B, D]."""
    mx = linear(c, params[prefix + "adaLN_modulation_img.0.weight"], params[prefix + "adaLN_modulation_img.0.bias"])
    my = linear(c, params[prefix + "adaLN_modulation_txt.0.weight"], params[prefix + "adaLN_modulation_txt.0.bias"])
    sh_ax, sc_ax, g_ax, sh_mx, sc_mx, g_mx = xp.split(mx[:, None, :], 6, axis=-1)
    sh_ay, sc_ay, g_ay, sh_my, sc_my, g_my = xp.split(my[:, None, :], 6, axis=-1)
    xn = modulate(rms_norm(x, params[prefix + "norm_x1.weight"], eps, xp), sh_ax, sc_ax)
    yn = modulate(rms_norm(y, params[prefix + "norm_y1.weight"], eps, xp), sh_ay, sc_ay)
    ax, ay = joint_attention(params, prefix + "attn.", xn, yn, num_heads, img_rope, txt_rope, eps, xp)
    x = x + g_ax * ax
    y = y + g_ay * ay
    x = x + g_mx * swiglu(params, prefix + "mlp_x.", modulate(rms_norm(x, params[prefix + "norm_x2.weight"], eps, xp),
                                                               sh_mx, sc_mx), xp)
    y = y + g_my * swiglu(params, prefix + "mlp_y.", modulate(rms_norm(y, params[prefix + "norm_y2.weight"], eps, xp),
                                                               sh_my, sc_my), xp)
    return x, y


def forward(params, cfg, x, t, text, xp=np, dtype="float64"):
    """Text-to-image PixelDiT forward pass: predicted flow velocity v = noise - x0, [B, 3, H, W].

    Args:
        params: official-name parameters (``core.`` stripped), arrays of any float dtype.
        cfg: T2I preset (graphs/t2i*.json fields, with a ``text`` section).
        x: noisy image x_sigma = (1 - sigma) x0 + sigma noise, [B, C, H, W].
        t: network time sigma * 1000, [B] (1000 = pure noise).
        text: text-encoder hidden states [B, Ltxt, embed_dim], Ltxt <= text max_length.
    """
    p = {k: xp.asarray(v, dtype=dtype) for k, v in params.items()}
    x = xp.asarray(x, dtype=dtype)
    t = xp.asarray(t, dtype=dtype).reshape(-1)
    text = xp.asarray(text, dtype=dtype)
    eps = cfg["norm_eps"]
    patch = cfg["patch_size"]
    bsz, chans, height, width = x.shape
    hs, ws = height // patch, width // patch
    n_tok, p2, dp = hs * ws, patch * patch, cfg["pixel_hidden_size"]
    if hs * patch != height or ws * patch != width:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch}")
    ltxt = min(text.shape[1], cfg["text"]["max_length"])
    text = text[:, :ltxt]

    t_freq = timestep_embedding(t, cfg["timestep_freq_dim"], cfg["timestep_max_period"], xp)
    t_emb = linear(silu(linear(t_freq, p["t_embedder.mlp.0.weight"], p["t_embedder.mlp.0.bias"]), xp),
                   p["t_embedder.mlp.2.weight"], p["t_embedder.mlp.2.bias"])
    c = silu(t_emb, xp)
    y = rms_norm(linear(text, p["y_embedder.proj.weight"], p["y_embedder.proj.bias"]), p["y_embedder.norm.weight"],
                 eps, xp)
    y = y + p["y_pos_embedding"][:, :ltxt]

    patches = x.reshape(bsz, chans, hs, patch, ws, patch).transpose(0, 2, 4, 1, 3, 5).reshape(bsz, n_tok, chans * p2)
    s = linear(patches, p["s_embedder.proj.weight"], p["s_embedder.proj.bias"])
    head_dim = cfg["hidden_size"] // cfg["num_heads"]
    img_rope = tuple(xp.asarray(a, dtype=dtype) for a in rope_2d_tables(hs, ws, head_dim, cfg["rope_theta"]))
    txt_rope = tuple(xp.asarray(a, dtype=dtype) for a in rope_1d_tables(ltxt, head_dim, cfg["text"]["rope_theta"]))
    for i in range(cfg["patch_depth"]):
        s, y = mmdit_block(p, f"patch_blocks.{i}.", s, y, c, cfg["num_heads"], img_rope, txt_rope, eps, xp)
    s_cond = silu(t_emb[:, None, :] + s, xp).reshape(bsz * n_tok, -1)

    pe = xp.asarray(pixel_pos_embed(height, width, dp), dtype=dtype)
    pix = linear(x.transpose(0, 2, 3, 1), p["pixel_embedder.proj.weight"], p["pixel_embedder.proj.bias"]) + pe
    pix = pix.reshape(bsz, hs, patch, ws, patch, dp).transpose(0, 1, 3, 2, 4, 5).reshape(bsz * n_tok, p2, dp)
    pcos, psin = (xp.asarray(a, dtype=dtype) for a in
                  rope_2d_tables(hs, ws, cfg["pixel_attn_hidden_size"] // cfg["pixel_num_heads"], cfg["rope_theta"]))
    for i in range(cfg["pixel_depth"]):
        pix = pixel_block(p, f"pixel_blocks.{i}.", pix, s_cond, bsz, cfg["pixel_num_heads"], pcos, psin, eps, xp,
                          cfg.get("pit_adaln_post_modulation", False))
    out = linear(rms_norm(pix, p["final_layer.norm.weight"], eps, xp), p["final_layer.linear.weight"],
                 p["final_layer.linear.bias"])
    out = out.reshape(bsz, hs, ws, patch, patch, chans).transpose(0, 5, 1, 3, 2, 4)
    return out.reshape(bsz, chans, height, width)


def parameter_shapes(cfg):
    """Ordered (official key, shape) list of a T2I preset (spec section 3.3, ``core.`` stripped)."""
    from checkpoint import parameter_shapes as c2i_shapes

    d, c = cfg["hidden_size"], cfg["in_channels"]
    f = 2 * (4 * d) // 3
    hd = d // cfg["num_heads"]
    text = cfg["text"]
    shapes = [
        ("s_embedder.proj.weight", (d, c * cfg["patch_size"] ** 2)),
        ("s_embedder.proj.bias", (d,)),
        ("pixel_embedder.proj.weight", (cfg["pixel_hidden_size"], c)),
        ("pixel_embedder.proj.bias", (cfg["pixel_hidden_size"],)),
        ("t_embedder.mlp.0.weight", (d, cfg["timestep_freq_dim"])),
        ("t_embedder.mlp.0.bias", (d,)),
        ("t_embedder.mlp.2.weight", (d, d)),
        ("t_embedder.mlp.2.bias", (d,)),
        ("y_embedder.proj.weight", (d, text["embed_dim"])),
        ("y_embedder.proj.bias", (d,)),
        ("y_embedder.norm.weight", (d,)),
        ("y_pos_embedding", (1, text["max_length"], d)),
    ]
    for i in range(cfg["patch_depth"]):
        b = f"patch_blocks.{i}."
        shapes += [(b + n + ".weight", (d,)) for n in ("norm_x1", "norm_y1", "norm_x2", "norm_y2")]
        shapes += [(b + "attn.qkv_x.weight", (3 * d, d)), (b + "attn.qkv_y.weight", (3 * d, d))]
        shapes += [(b + f"attn.{n}.weight", (hd,)) for n in ("q_norm_x", "k_norm_x", "q_norm_y", "k_norm_y")]
        for s in ("x", "y"):
            shapes += [(b + f"attn.proj_{s}.weight", (d, d)), (b + f"attn.proj_{s}.bias", (d,))]
        for s in ("x", "y"):
            shapes += [(b + f"mlp_{s}.w1.weight", (f, d)), (b + f"mlp_{s}.w3.weight", (f, d)),
                       (b + f"mlp_{s}.w2.weight", (d, f))]
        for s in ("img", "txt"):
            shapes += [(b + f"adaLN_modulation_{s}.0.weight", (6 * d, d)), (b + f"adaLN_modulation_{s}.0.bias", (6 * d,))]
    # PiT blocks and the final layer are the C2I ones (with A = pixel_attn_hidden_size).
    shapes += [(k, s) for k, s in c2i_shapes({**cfg, "patch_depth": 0, "num_classes": 0})
               if k.startswith(("pixel_blocks.", "final_layer."))]
    return shapes


def repa_projector_shapes(cfg, hidden=2048, out=768):
    """Training-only ``_repa_projector.{0,2,4}`` (Linear D->2048->2048->768), dropped at load."""
    d = cfg["hidden_size"]
    return [("_repa_projector.0.weight", (hidden, d)), ("_repa_projector.0.bias", (hidden,)),
            ("_repa_projector.2.weight", (hidden, hidden)), ("_repa_projector.2.bias", (hidden,)),
            ("_repa_projector.4.weight", (out, hidden)), ("_repa_projector.4.bias", (out,))]


def make_random_checkpoint(cfg, seed):
    """Random float32 T2I weights, every value exactly representable in bfloat16.

    Scales as in :func:`checkpoint._random_tensor` (norm weights 1 + 0.1 N, biases 0.1 N, adaLN
    0.5 N/sqrt(fan_in), other Linear weights N/sqrt(fan_in)), plus ``y_pos_embedding`` 0.5 N and
    ``t_embedder.mlp.0.weight`` with gain 1 (the network time is sigma * 1000, whose sinusoidal
    features already vary by O(1)).  Rounding to bfloat16 lets the bf16 safetensors repack of the same
    weights export to identical ONNX bytes (tests/golden/checkpoints/).
    """
    import ml_dtypes

    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in parameter_shapes(cfg):
        module = key.split(".")[-2] if "." in key else key
        if "norm" in module:
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif key == "y_pos_embedding":
            value = 0.5 * rng.standard_normal(shape)
        elif key.endswith(".bias"):
            value = 0.1 * rng.standard_normal(shape)
        else:
            gain = 0.5 if "adaLN_modulation" in key else 1.0
            value = gain * rng.standard_normal(shape) / np.sqrt(shape[1])
        out[key] = value.astype(np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    return out


if __name__ == "__main__":
    import json
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent
    tiny = json.loads((root / "graphs" / "t2i-tiny.json").read_text())
    rng = np.random.default_rng(0)
    text = rng.standard_normal((2, tiny["text"]["max_length"], tiny["text"]["embed_dim"]))
    v = forward(make_random_checkpoint(tiny, 0), tiny, rng.standard_normal((2, 3, 32, 48)), np.array([130.0, 870.0]),
                text)
    print("v", v.shape, v.dtype, "std", float(v.std()))

"""Reference forward pass of the class-conditional PixelDiT (arXiv 2511.20645).

Written from /work/shared/docs/pixeldit-architecture.md, sections 2 and 3, and
independent of the Rust exporter in crates/.  Every function takes the array
module as a parameter ``xp`` (numpy by default) so that ``jax.numpy`` can reuse
the exact same code for training (reference/train_digits.py).

Shapes follow the spec: B batch, H x W image, p patch size, Hs = H/p,
Ws = W/p, L = Hs*Ws patch tokens, P2 = p*p pixels per patch, D patch hidden
size, Dp pixel hidden size, A pixel-attention width.  Parameters use the
official checkpoint names (``patch_blocks.0.attn.qkv.weight`` ...) and every
Linear weight is stored [out, in].

Run ``.venv/bin/python reference/pixeldit_ref.py`` for a small smoke test.
"""

import math

import numpy as np


def _erf(xp):
    """Return the error function matching the array module ``xp``."""
    if xp is np:
        from scipy.special import erf
    else:
        from jax.scipy.special import erf
    return erf


def silu(x, xp=np):
    """SiLU x*sigmoid(x), with sigmoid written via tanh so it never overflows."""
    return x * 0.5 * (1.0 + xp.tanh(0.5 * x))


def gelu(x, xp=np):
    """Exact (erf) GELU, as torch ``nn.GELU()`` with its default approximation='none'."""
    return 0.5 * x * (1.0 + _erf(xp)(x / math.sqrt(2.0)))


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` with a torch-layout weight [out, in]."""
    y = x @ weight.T
    return y if bias is None else y + bias


def rms_norm(x, weight, eps, xp=np):
    """RMSNorm over the last axis with a learned weight: x / sqrt(mean(x^2) + eps) * weight."""
    return x / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def modulate(x, shift, scale):
    """adaLN modulation x * (1 + scale) + shift."""
    return x * (1.0 + scale) + shift


def softmax(x, xp=np):
    """Numerically stable softmax over the last axis."""
    e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
    return e / xp.sum(e, axis=-1, keepdims=True)


def timestep_embedding(t, dim, max_period, xp=np):
    """Sinusoidal timestep features [B, dim], cos first (spec 2.1 step 1).

    freqs[k] = exp(-ln(max_period) * k / (dim/2)), args = t * freqs,
    result = concat[cos(args), sin(args)].
    """
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half)
    args = t[:, None] * xp.asarray(freqs, dtype=t.dtype)[None, :]
    return xp.concatenate([xp.cos(args), xp.sin(args)], axis=-1)


def rope_2d_tables(hs, ws, dim, theta):
    """2D RoPE tables (spec 2.4) for an hs x ws token grid and head dim ``dim``.

    Positions are normalised: x_pos = linspace(0, 16, ws) per column and
    y_pos = linspace(0, 16, hs) per row.  Rotation pair j (elements 2j, 2j+1)
    uses angle x_pos * freqs[j/2] for even j and y_pos * freqs[(j-1)/2] for odd
    j, with freqs[k] = theta^(-4k/dim), k = 0..dim/4-1.  Tokens are row-major.

    Returns float64 numpy arrays (cos, sin), each [hs*ws, dim/2].
    """
    if dim % 4 != 0:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {dim}")
    freqs = theta ** (-4.0 * np.arange(dim // 4, dtype=np.float64) / dim)
    x_pos = np.linspace(0.0, 16.0, ws)
    y_pos = np.linspace(0.0, 16.0, hs)
    rows, cols = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
    x_ang = x_pos[cols.reshape(-1)][:, None] * freqs[None, :]  # [L, dim/4], pairs 0, 2, 4, ...
    y_ang = y_pos[rows.reshape(-1)][:, None] * freqs[None, :]  # [L, dim/4], pairs 1, 3, 5, ...
    angles = np.stack([x_ang, y_ang], axis=-1).reshape(hs * ws, dim // 2)
    return np.cos(angles), np.sin(angles)


def apply_rope(x, cos, sin, xp=np):
    """Rotate adjacent pairs (2j, 2j+1) of the last axis of x [..., L, Dh] by the table angles."""
    shape = x.shape
    pairs = x.reshape(shape[:-1] + (shape[-1] // 2, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    out = xp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return out.reshape(shape)


def pixel_pos_embed(height, width, dim):
    """Fixed 2D sin-cos pixel PE [H, W, dim] over full-image pixel coordinates (spec 2.3 step 9).

    With omega_k = 10000^(-k/(dim/4)), the layout per pixel (row h, column w) is
    [sin(w*omega), cos(w*omega), sin(h*omega), cos(h*omega)].  float64 numpy.
    """
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)
    h, w = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    w_ang = w[..., None] * omega
    h_ang = h[..., None] * omega
    return np.concatenate([np.sin(w_ang), np.cos(w_ang), np.sin(h_ang), np.cos(h_ang)], axis=-1)


def rotary_attention(params, prefix, x, num_heads, cos, sin, eps, xp=np):
    """``RotaryAttention``: qkv (no bias) -> QK RMSNorm over head dim -> 2D RoPE -> SDPA -> proj.

    x is [B, L, W]; the qkv output features are ordered [q|k|v], heads contiguous.
    """
    bsz, length, width = x.shape
    head_dim = width // num_heads
    qkv = linear(x, params[prefix + "qkv.weight"]).reshape(bsz, length, 3, num_heads, head_dim)
    qkv = qkv.transpose(2, 0, 3, 1, 4)  # [3, B, heads, L, Dh]
    q = rms_norm(qkv[0], params[prefix + "q_norm.weight"], eps, xp)
    k = rms_norm(qkv[1], params[prefix + "k_norm.weight"], eps, xp)
    q = apply_rope(q, cos, sin, xp)
    k = apply_rope(k, cos, sin, xp)
    attn = softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim), xp)
    out = (attn @ qkv[2]).transpose(0, 2, 1, 3).reshape(bsz, length, width)
    return linear(out, params[prefix + "proj.weight"], params[prefix + "proj.bias"])


def patch_block(params, prefix, s, c, num_heads, cos, sin, eps, xp=np):
    """``AugmentedDiTBlock``: adaLN-modulated RoPE attention and SwiGLU on patch tokens s [B, L, D].

    c is the conditioning vector [B, D]; the adaLN output is chunked as
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
    """
    mod = linear(c, params[prefix + "adaLN_modulation.0.weight"], params[prefix + "adaLN_modulation.0.bias"])
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = xp.split(mod[:, None, :], 6, axis=-1)
    h = modulate(rms_norm(s, params[prefix + "norm1.weight"], eps, xp), shift_msa, scale_msa)
    s = s + gate_msa * rotary_attention(params, prefix + "attn.", h, num_heads, cos, sin, eps, xp)
    h = modulate(rms_norm(s, params[prefix + "norm2.weight"], eps, xp), shift_mlp, scale_mlp)
    swiglu = linear(silu(linear(h, params[prefix + "mlp.w1.weight"]), xp) * linear(h, params[prefix + "mlp.w3.weight"]),
                    params[prefix + "mlp.w2.weight"])
    return s + gate_mlp * swiglu


def pixel_block(params, prefix, x, s_cond, batch, num_heads, cos, sin, eps, xp=np, post_modulation=False):
    """``PiTBlock`` on pixel tokens x [B*L, P2, Dp] conditioned by s_cond [B*L, D].

    Pixel-wise adaLN: Linear(D -> n*P2*Dp) viewed [B*L, P2, n, Dp] (pixel-major), n = 6 by default.
    The attention branch compresses each patch's P2*Dp features to A, runs
    RotaryAttention over the L patch tokens of each image and expands back.

    ``post_modulation`` is the official ``PiTBlock(adaln_post_modulation=True)`` (pixdit_core/pixeldit_c2i.py of
    NVlabs/PixelDiT as mirrored by Apache0ne/PixelDiT at 8f83fa88): n = 4 chunks scale1, shift1, scale2, shift2;
    the branch inputs are only normalized and the branch outputs are modulated, without gates:
    ``x + f(N(x)) * (1 + scale) + shift``.
    """
    bl, p2, dp = x.shape
    n_mod = 4 if post_modulation else 6
    mod = linear(s_cond, params[prefix + "adaLN_modulation.0.weight"], params[prefix + "adaLN_modulation.0.bias"])
    mod = mod.reshape(bl, p2, n_mod, dp)
    chunks = [mod[:, :, i, :] for i in range(n_mod)]
    if post_modulation:
        scale1, shift1, scale2, shift2 = chunks
        h = rms_norm(x, params[prefix + "norm1.weight"], eps, xp)
    else:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = chunks
        h = modulate(rms_norm(x, params[prefix + "norm1.weight"], eps, xp), shift_msa, scale_msa)
    tokens = linear(h.reshape(bl, p2 * dp), params[prefix + "compress_to_attn.weight"],
                    params[prefix + "compress_to_attn.bias"])
    tokens = tokens.reshape(batch, bl // batch, -1)
    attn = rotary_attention(params, prefix + "attn.", tokens, num_heads, cos, sin, eps, xp)
    expanded = linear(attn.reshape(bl, -1), params[prefix + "expand_from_attn.weight"],
                      params[prefix + "expand_from_attn.bias"]).reshape(bl, p2, dp)

    def mlp(h):
        return linear(gelu(linear(h, params[prefix + "mlp.fc1.weight"], params[prefix + "mlp.fc1.bias"]), xp),
                      params[prefix + "mlp.fc2.weight"], params[prefix + "mlp.fc2.bias"])

    if post_modulation:
        x = x + modulate(expanded, shift1, scale1)
        return x + modulate(mlp(rms_norm(x, params[prefix + "norm2.weight"], eps, xp)), shift2, scale2)
    x = x + gate_msa * expanded
    return x + gate_mlp * mlp(modulate(rms_norm(x, params[prefix + "norm2.weight"], eps, xp), shift_mlp, scale_mlp))


def forward(params, cfg, x, t, y, xp=np, dtype="float64"):
    """Class-conditional PixelDiT forward pass (spec section 2): predicted velocity v [B, 3, H, W].

    Args:
        params: official-name parameter dict (arrays of any float dtype, cast to ``dtype``).
        cfg: model preset (graphs/*.json fields).
        x: noisy image x_t [B, C, H, W], H and W multiples of the patch size.
        t: time [B] in [0, 1], t = 0 is pure noise, t = 1 is data.
        y: class labels [B] (int); ``cfg["num_classes"]`` is the null class.
        xp: array module (numpy or jax.numpy).
        dtype: compute dtype (float64 by default; use float32 under jax).
    """
    p = {k: xp.asarray(v, dtype=dtype) for k, v in params.items()}
    x = xp.asarray(x, dtype=dtype)
    t = xp.asarray(t, dtype=dtype).reshape(-1)
    eps = cfg["norm_eps"]
    patch = cfg["patch_size"]
    bsz, chans, height, width = x.shape
    hs, ws = height // patch, width // patch
    n_tok, p2, dp = hs * ws, patch * patch, cfg["pixel_hidden_size"]
    if hs * patch != height or ws * patch != width:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {patch}")

    # 2.1 conditioning vector c = SiLU(t_emb + y_emb), [B, D].
    t_freq = timestep_embedding(t, cfg["timestep_freq_dim"], cfg["timestep_max_period"], xp)
    t_emb = linear(silu(linear(t_freq, p["t_embedder.mlp.0.weight"], p["t_embedder.mlp.0.bias"]), xp),
                   p["t_embedder.mlp.2.weight"], p["t_embedder.mlp.2.bias"])
    c = silu(t_emb + p["y_embedder.embedding_table.weight"][y], xp)

    # 2.2 patch level: unfold in (channel, row, col) order, then N AugmentedDiTBlocks.
    patches = x.reshape(bsz, chans, hs, patch, ws, patch).transpose(0, 2, 4, 1, 3, 5).reshape(bsz, n_tok, chans * p2)
    s = linear(patches, p["s_embedder.proj.weight"], p["s_embedder.proj.bias"])
    cos, sin = (xp.asarray(a, dtype=dtype) for a in
                rope_2d_tables(hs, ws, cfg["hidden_size"] // cfg["num_heads"], cfg["rope_theta"]))
    for i in range(cfg["patch_depth"]):
        s = patch_block(p, f"patch_blocks.{i}.", s, c, cfg["num_heads"], cos, sin, eps, xp)
    s_cond = silu(t_emb[:, None, :] + s, xp).reshape(bsz * n_tok, -1)

    # 2.3 pixel level: per-pixel embedding + fixed PE, grouped per patch, M PiT blocks.
    pe = xp.asarray(pixel_pos_embed(height, width, dp), dtype=dtype)
    pix = linear(x.transpose(0, 2, 3, 1), p["pixel_embedder.proj.weight"], p["pixel_embedder.proj.bias"]) + pe
    pix = pix.reshape(bsz, hs, patch, ws, patch, dp).transpose(0, 1, 3, 2, 4, 5).reshape(bsz * n_tok, p2, dp)
    pcos, psin = (xp.asarray(a, dtype=dtype) for a in
                  rope_2d_tables(hs, ws, cfg["pixel_attn_hidden_size"] // cfg["pixel_num_heads"], cfg["rope_theta"]))
    for i in range(cfg["pixel_depth"]):
        pix = pixel_block(p, f"pixel_blocks.{i}.", pix, s_cond, bsz, cfg["pixel_num_heads"], pcos, psin, eps, xp,
                          cfg.get("pit_adaln_post_modulation", False))

    # Final layer (RMSNorm + Linear, no adaLN) and the inverse of the pixel grouping (F.fold).
    out = linear(rms_norm(pix, p["final_layer.norm.weight"], eps, xp), p["final_layer.linear.weight"],
                 p["final_layer.linear.bias"])
    out = out.reshape(bsz, hs, ws, patch, patch, chans).transpose(0, 5, 1, 3, 2, 4)
    return out.reshape(bsz, chans, height, width)


if __name__ == "__main__":
    import json
    import pathlib

    from checkpoint import make_random_checkpoint

    root = pathlib.Path(__file__).resolve().parent.parent
    tiny = json.loads((root / "graphs" / "tiny.json").read_text())
    rng = np.random.default_rng(0)
    v = forward(make_random_checkpoint(tiny, 0), tiny, rng.standard_normal((2, 3, 32, 48)),
                np.array([0.2, 0.8]), np.array([1, tiny["num_classes"]]))
    print("v", v.shape, v.dtype, "std", float(v.std()))

"""PixelDiT forward in PyTorch eager: the baseline a user would otherwise run.

A direct port of reference/pixeldit_ref.py (spec sections 2 and 3) to torch
ops, with ``F.scaled_dot_product_attention`` for the attention core as an
idiomatic PyTorch implementation would have.  Parameters use the official
checkpoint names, Linear weights are [out, in].  float32 throughout.
"""

import math
import sys
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "reference"))
from pixeldit_ref import pixel_pos_embed, rope_2d_tables  # noqa: E402  (numpy tables, computed once)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def modulate(x, shift, scale):
    return x * (1.0 + scale) + shift


def apply_rope(x, cos, sin):
    """Adjacent-pair rotation of the last axis of x [..., L, Dh]."""
    pairs = x.unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


class PixelDiT(torch.nn.Module):
    """Functional PixelDiT over an official-name parameter dict (no nn.Linear wrappers needed)."""

    def __init__(self, params, cfg, height, width):
        super().__init__()
        self.cfg = cfg
        self.p = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
        patch = cfg["patch_size"]
        self.hs, self.ws = height // patch, width // patch
        d, a = cfg["hidden_size"], cfg["pixel_attn_hidden_size"]
        t = lambda arr: torch.as_tensor(arr, dtype=torch.float32)  # noqa: E731
        cos, sin = rope_2d_tables(self.hs, self.ws, d // cfg["num_heads"], cfg["rope_theta"])
        self.cos, self.sin = t(cos), t(sin)
        pcos, psin = rope_2d_tables(self.hs, self.ws, a // cfg["pixel_num_heads"], cfg["rope_theta"])
        self.pcos, self.psin = t(pcos), t(psin)
        self.pe = t(pixel_pos_embed(height, width, cfg["pixel_hidden_size"]))

    def lin(self, x, name, bias=True):
        return F.linear(x, self.p[name + ".weight"], self.p[name + ".bias"] if bias else None)

    def attention(self, prefix, x, heads, cos, sin):
        b, n, w = x.shape
        dh = w // heads
        qkv = self.lin(x, prefix + "qkv", bias=False).view(b, n, 3, heads, dh).permute(2, 0, 3, 1, 4)
        eps = self.cfg["norm_eps"]
        q = apply_rope(rms_norm(qkv[0], self.p[prefix + "q_norm.weight"], eps), cos, sin)
        k = apply_rope(rms_norm(qkv[1], self.p[prefix + "k_norm.weight"], eps), cos, sin)
        o = F.scaled_dot_product_attention(q, k, qkv[2])
        return self.lin(o.transpose(1, 2).reshape(b, n, w), prefix + "proj")

    def patch_block(self, i, s, c):
        pre, eps, cfg = f"patch_blocks.{i}.", self.cfg["norm_eps"], self.cfg
        mod = self.lin(c, pre + "adaLN_modulation.0")[:, None, :].chunk(6, dim=-1)
        h = modulate(rms_norm(s, self.p[pre + "norm1.weight"], eps), mod[0], mod[1])
        s = s + mod[2] * self.attention(pre + "attn.", h, cfg["num_heads"], self.cos, self.sin)
        h = modulate(rms_norm(s, self.p[pre + "norm2.weight"], eps), mod[3], mod[4])
        m = self.lin(F.silu(self.lin(h, pre + "mlp.w1", False)) * self.lin(h, pre + "mlp.w3", False), pre + "mlp.w2",
                     False)
        return s + mod[5] * m

    def pixel_block(self, i, x, s_cond, batch):
        pre, eps, cfg = f"pixel_blocks.{i}.", self.cfg["norm_eps"], self.cfg
        bl, p2, dp = x.shape
        mod = self.lin(s_cond, pre + "adaLN_modulation.0").view(bl, p2, 6, dp).unbind(2)
        h = modulate(rms_norm(x, self.p[pre + "norm1.weight"], eps), mod[0], mod[1])
        tok = self.lin(h.reshape(bl, p2 * dp), pre + "compress_to_attn").view(batch, bl // batch, -1)
        att = self.attention(pre + "attn.", tok, cfg["pixel_num_heads"], self.pcos, self.psin)
        x = x + mod[2] * self.lin(att.reshape(bl, -1), pre + "expand_from_attn").view(bl, p2, dp)
        h = modulate(rms_norm(x, self.p[pre + "norm2.weight"], eps), mod[3], mod[4])
        return x + mod[5] * self.lin(F.gelu(self.lin(h, pre + "mlp.fc1")), pre + "mlp.fc2")

    def forward(self, x, t, y):
        cfg, eps = self.cfg, self.cfg["norm_eps"]
        patch, dp = cfg["patch_size"], cfg["pixel_hidden_size"]
        b, ch, height, width = x.shape
        hs, ws = self.hs, self.ws
        n = hs * ws
        half = cfg["timestep_freq_dim"] // 2
        steps = torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(-math.log(cfg["timestep_max_period"]) * steps / half)
        args = t[:, None] * freqs[None]
        t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        t_emb = self.lin(F.silu(self.lin(t_freq, "t_embedder.mlp.0")), "t_embedder.mlp.2")
        c = F.silu(t_emb + self.p["y_embedder.embedding_table.weight"][y])
        patches = x.view(b, ch, hs, patch, ws, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, n, ch * patch * patch)
        s = self.lin(patches, "s_embedder.proj")
        for i in range(cfg["patch_depth"]):
            s = self.patch_block(i, s, c)
        s_cond = F.silu(t_emb[:, None, :] + s).reshape(b * n, -1)
        pix = self.lin(x.permute(0, 2, 3, 1), "pixel_embedder.proj") + self.pe
        pix = pix.view(b, hs, patch, ws, patch, dp).permute(0, 1, 3, 2, 4, 5).reshape(b * n, patch * patch, dp)
        for i in range(cfg["pixel_depth"]):
            pix = self.pixel_block(i, pix, s_cond, b)
        out = self.lin(rms_norm(pix, self.p["final_layer.norm.weight"], eps), "final_layer.linear")
        out = out.view(b, hs, ws, patch, patch, ch).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, ch, height, width)

"""Print parameter counts of every preset in graphs/*.json and forward FLOPs (spec section 6).

Parameters are summed over reference/checkpoint.py:parameter_shapes (expected:
B 184.75M, L 569.65M, XL 797.38M).  FLOPs follow the convention of the official
tools/compute_flops.py as described in spec section 6: 2*tokens*in*out per
Linear, 4*S^2*C for the attention core, norms/RoPE/softmax/activations ignored,
batch 1, one CFG branch (XL at 256 px: 311.2 GFLOPs).

Usage: ``.venv/bin/python reference/param_count.py``
"""

import json
import pathlib

import numpy as np

from checkpoint import mlp_hidden, parameter_shapes

ROOT = pathlib.Path(__file__).resolve().parent.parent


def parameter_count(cfg):
    """Number of parameters of a preset (the T2I shapes for ``kind: t2i``, spec section 3.3)."""
    if cfg.get("kind") == "t2i":
        from pixeldit_t2i_ref import parameter_shapes as t2i_shapes

        return sum(int(np.prod(shape)) for _, shape in t2i_shapes(cfg))
    return sum(int(np.prod(shape)) for _, shape in parameter_shapes(cfg))


def flops(cfg, height, width):
    """Forward FLOPs of one image: dict with ``patch``, ``patch_attn_core``, ``pixel``, ``embed``, ``total``."""
    d, a, dp = cfg["hidden_size"], cfg["pixel_attn_hidden_size"], cfg["pixel_hidden_size"]
    p2, f = cfg["patch_size"] ** 2, mlp_hidden(cfg)
    hw = height * width
    n_tok = hw // p2
    hm = dp * cfg["pixel_mlp_ratio"]
    patch_core = 4 * n_tok ** 2 * d
    patch_block = 2 * n_tok * (4 * d * d + 3 * d * f) + patch_core + 2 * 6 * d * d
    pixel_block = (2 * n_tok * d * 6 * p2 * dp          # pixel-wise adaLN
                   + 2 * 2 * n_tok * p2 * dp * a        # compress + expand
                   + 2 * n_tok * 4 * a * a              # qkv + proj
                   + 4 * n_tok ** 2 * a                 # attention core
                   + 2 * hw * 2 * dp * hm)              # pixel MLP
    embed = (2 * n_tok * cfg["in_channels"] * p2 * d    # s_embedder
             + 2 * hw * cfg["in_channels"] * dp         # pixel embedder
             + 2 * (cfg["timestep_freq_dim"] * d + d * d)  # timestep MLP
             + 2 * hw * dp * cfg["in_channels"])        # final layer
    result = {"patch": cfg["patch_depth"] * patch_block, "patch_attn_core": cfg["patch_depth"] * patch_core,
              "pixel": cfg["pixel_depth"] * pixel_block, "embed": embed}
    result["total"] = result["patch"] + result["pixel"] + embed
    return result


def main():
    """Print both tables."""
    presets = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "graphs").glob("*.json"))}
    print("preset      parameters")
    for name, cfg in presets.items():
        count = parameter_count(cfg)
        print(f"{name:10s} {count:12,d}  ({count / 1e6:.2f}M)")
    print()
    print("model @ res   total GFLOPs   patch (attn core)   pixel   embed+final")
    for name, preset in (("B", "B"), ("L", "L"), ("XL", "XL-256")):
        for res in (256, 512):
            fl = {k: v / 1e9 for k, v in flops(presets[preset], res, res).items()}
            print(f"{name:3s} @ {res:4d}   {fl['total']:12.1f}   {fl['patch']:7.1f} ({fl['patch_attn_core']:6.1f})"
                  f"   {fl['pixel']:6.1f}   {fl['embed']:6.2f}")


if __name__ == "__main__":
    main()

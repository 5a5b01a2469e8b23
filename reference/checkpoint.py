"""Checkpoint helpers for the reference PixelDiT: key list, random weights, safetensors I/O.

The key names and shapes follow spec section 3.2 (official C2I names after the
``ema_denoiser.`` prefix is stripped), in the same order as
``parameter_shapes()`` in crates/spec/src/lib.rs.  All Linear weights are
[out, in].
"""

import numpy as np
from safetensors.numpy import load_file, save_file

#: Prefixes stripped by :func:`load_checkpoint` (Lightning EMA copy, T2I trainer wrapper).
STRIP_PREFIXES = ("ema_denoiser.", "core.")
#: Training-only tensors that are dropped at load.
DROP_PREFIXES = ("denoiser.", "diffusion_trainer.", "_repa_projector.")


def mlp_hidden(cfg):
    """SwiGLU hidden width F = int(2 * 4D / 3)."""
    return 2 * (4 * cfg["hidden_size"]) // 3


def parameter_shapes(cfg):
    """Ordered list of (official key, shape) for a class-conditional preset."""
    d, c = cfg["hidden_size"], cfg["in_channels"]
    p2, dp = cfg["patch_size"] ** 2, cfg["pixel_hidden_size"]
    a, f = cfg["pixel_attn_hidden_size"], mlp_hidden(cfg)
    hd, phd = d // cfg["num_heads"], a // cfg["pixel_num_heads"]
    hm = dp * cfg["pixel_mlp_ratio"]
    n_mod = 4 if cfg.get("pit_adaln_post_modulation", False) else 6  # post-modulation PiT blocks: 4 chunks
    shapes = [
        ("s_embedder.proj.weight", (d, c * p2)),
        ("s_embedder.proj.bias", (d,)),
        ("pixel_embedder.proj.weight", (dp, c)),
        ("pixel_embedder.proj.bias", (dp,)),
        ("t_embedder.mlp.0.weight", (d, cfg["timestep_freq_dim"])),
        ("t_embedder.mlp.0.bias", (d,)),
        ("t_embedder.mlp.2.weight", (d, d)),
        ("t_embedder.mlp.2.bias", (d,)),
        ("y_embedder.embedding_table.weight", (cfg["num_classes"] + 1, d)),
    ]
    for i in range(cfg["patch_depth"]):
        b = f"patch_blocks.{i}."
        shapes += [
            (b + "norm1.weight", (d,)),
            (b + "norm2.weight", (d,)),
            (b + "attn.qkv.weight", (3 * d, d)),
            (b + "attn.q_norm.weight", (hd,)),
            (b + "attn.k_norm.weight", (hd,)),
            (b + "attn.proj.weight", (d, d)),
            (b + "attn.proj.bias", (d,)),
            (b + "mlp.w1.weight", (f, d)),
            (b + "mlp.w3.weight", (f, d)),
            (b + "mlp.w2.weight", (d, f)),
            (b + "adaLN_modulation.0.weight", (6 * d, d)),
            (b + "adaLN_modulation.0.bias", (6 * d,)),
        ]
    for i in range(cfg["pixel_depth"]):
        b = f"pixel_blocks.{i}."
        shapes += [
            (b + "compress_to_attn.weight", (a, p2 * dp)),
            (b + "compress_to_attn.bias", (a,)),
            (b + "expand_from_attn.weight", (p2 * dp, a)),
            (b + "expand_from_attn.bias", (p2 * dp,)),
            (b + "norm1.weight", (dp,)),
            (b + "norm2.weight", (dp,)),
            (b + "attn.qkv.weight", (3 * a, a)),
            (b + "attn.q_norm.weight", (phd,)),
            (b + "attn.k_norm.weight", (phd,)),
            (b + "attn.proj.weight", (a, a)),
            (b + "attn.proj.bias", (a,)),
            (b + "mlp.fc1.weight", (hm, dp)),
            (b + "mlp.fc1.bias", (hm,)),
            (b + "mlp.fc2.weight", (dp, hm)),
            (b + "mlp.fc2.bias", (dp,)),
            (b + "adaLN_modulation.0.weight", (n_mod * dp * p2, d)),
            (b + "adaLN_modulation.0.bias", (n_mod * dp * p2,)),
        ]
    shapes += [
        ("final_layer.norm.weight", (dp,)),
        ("final_layer.linear.weight", (c, dp)),
        ("final_layer.linear.bias", (c,)),
    ]
    return shapes


def _random_tensor(rng, key, shape):
    """One random tensor whose scale keeps activations O(1) through the whole network.

    * norm weights (``norm*.weight``, ``q_norm``/``k_norm``): 1 + 0.1 N(0,1);
    * class embeddings: N(0,1);
    * adaLN weights: 0.5 N(0,1)/sqrt(fan_in), so shifts, scales and gates are
      O(0.3) and every block contributes (deliberately not the official zero init);
    * ``t_embedder.mlp.0.weight``: 4 N(0,1)/sqrt(fan_in); with max_period 10 the
      sinusoidal features move little over t in [0, 1], and this gain makes the
      output change by O(1) between t = 0 and t = 1;
    * other Linear weights: N(0,1)/sqrt(fan_in);
    * biases: 0.1 N(0,1).
    """
    if key.endswith("norm.weight") or key.endswith("norm1.weight") or key.endswith("norm2.weight"):
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if key == "y_embedder.embedding_table.weight":
        return rng.standard_normal(shape)
    if key.endswith(".bias"):
        return 0.1 * rng.standard_normal(shape)
    if "adaLN_modulation" in key:
        gain = 0.5
    elif key == "t_embedder.mlp.0.weight":
        gain = 4.0
    else:
        gain = 1.0
    return gain * rng.standard_normal(shape) / np.sqrt(shape[1])


def make_random_checkpoint(cfg, seed):
    """Random, non-zero float32 weights for every key of ``cfg``, in parameter_shapes order."""
    rng = np.random.default_rng(seed)
    return {k: _random_tensor(rng, k, s).astype(np.float32) for k, s in parameter_shapes(cfg)}


def save_checkpoint(params, path, prefix=""):
    """Save ``params`` as float32 safetensors, optionally prefixing every key (e.g. ``ema_denoiser.``)."""
    save_file({prefix + k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}, str(path))


def load_checkpoint(path):
    """Load a safetensors checkpoint with official key names.

    Keys prefixed ``ema_denoiser.`` or ``core.`` lose the prefix; training-only
    tensors (``denoiser.``, ``diffusion_trainer.``, ``_repa_projector.``) are dropped.
    """
    out = {}
    for key, value in load_file(str(path)).items():
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        else:
            if key.startswith(DROP_PREFIXES):
                continue
        out[key] = value
    return out


def check_checkpoint(params, cfg):
    """Raise ValueError unless ``params`` has exactly the keys and shapes of ``cfg``."""
    expected = dict(parameter_shapes(cfg))
    if set(params) != set(expected):
        missing, extra = sorted(set(expected) - set(params)), sorted(set(params) - set(expected))
        raise ValueError(f"checkpoint keys differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, shape in expected.items():
        if tuple(params[key].shape) != shape:
            raise ValueError(f"{key}: shape {tuple(params[key].shape)}, expected {shape}")

"""Write small LoRA adapters for the tiny checkpoint, and the checkpoint with them merged, into OUT_DIR.

Base: tests/golden/forward/tiny.safetensors (the C2I tiny preset, f32). Layouts:

* ``lora_v1.safetensors``: ``pixeldit2-lora-v1`` of the official fork (Apache0ne/PixelDiT ``pixdit_core/lora.py``
  at 0c855a81): ``<module>.lora_A`` [r, in], ``<module>.lora_B`` [out, r] in bf16, metadata ``format`` and
  ``modules`` (JSON list of name, rank, alpha, dropout, in/out features); the fork's default targets
  ``patch_blocks.*.attn.qkv``, ``attn.proj``, ``mlp.w1/w2/w3``, rank 4, alpha 8.
* ``lora_peft.safetensors``: PEFT keys ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` (f32, rank
  2, no alpha: alpha = rank) on ``pixel_blocks.0.compress_to_attn`` and ``expand_from_attn``.
* ``lora_kohya.safetensors``: kohya keys ``lora_unet_<module with underscores>.lora_down.weight`` / ``.lora_up.weight``
  / ``.alpha`` (rank 2, alpha 1) on ``pixel_blocks.0.adaLN_modulation.0`` (whose name has underscores of its own)
  and ``t_embedder.mlp.2``.
* ``tiny_lora_merged.safetensors``: the base with all three merged, at scales 1, 0.5 and 0.75 (SCALES):
  ``W + scale * alpha / rank * B @ A`` in float64, rounded to float32.
* ``lora_other_model.safetensors``: a pixeldit2-lora-v1 adapter for another model: ``patch_blocks.5.attn.qkv`` (tiny
  has 2 patch blocks) and ``patch_blocks.0.attn.qkv`` with the wrong input width.

Usage: ``.venv/bin/python tools/gen_lora_fixtures.py OUT_DIR``
"""

import json
import pathlib
import sys

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from gen_comfy_fixtures import ROOT, save  # noqa: E402  pylint: disable=wrong-import-position

SEED = 21
SCALES = {"lora_v1": 1.0, "lora_peft": 0.5, "lora_kohya": 0.75}


def pair(rng, w, rank):
    """A [r, in] and B [out, r] whose update is a few percent of the weight."""
    out, inp = w.shape
    a = rng.standard_normal((rank, inp)) / np.sqrt(inp)
    b = 0.15 * rng.standard_normal((out, rank)) / np.sqrt(rank)
    return a.astype(np.float32), b.astype(np.float32)


def main(out_dir):
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = load_file(str(ROOT / "tests/golden/forward/tiny.safetensors"))
    rng = np.random.default_rng(SEED)
    merged = {k: v.astype(np.float64) for k, v in base.items()}

    def merge(module, a, b, factor):
        merged[module + ".weight"] += factor * (b.astype(np.float64) @ a.astype(np.float64))

    v1, modules = {}, []
    for i in range(2):
        for leaf in ("attn.qkv", "attn.proj", "mlp.w1", "mlp.w2", "mlp.w3"):
            name = f"patch_blocks.{i}.{leaf}"
            w = base[name + ".weight"]
            a, b = (x.astype(ml_dtypes.bfloat16) for x in pair(rng, w, 4))
            v1[name + ".lora_A"], v1[name + ".lora_B"] = a, b
            modules.append({"name": name, "rank": 4, "alpha": 8.0, "dropout": 0.0,
                            "in_features": w.shape[1], "out_features": w.shape[0]})
            merge(name, a, b, SCALES["lora_v1"] * 8.0 / 4)
    save(out / "lora_v1.safetensors", v1,
         {"format": "pixeldit2-lora-v1", "modules": json.dumps(modules, separators=(",", ":"))})

    peft = {}
    for name in ("pixel_blocks.0.compress_to_attn", "pixel_blocks.0.expand_from_attn"):
        a, b = pair(rng, base[name + ".weight"], 2)
        peft[f"base_model.model.{name}.lora_A.weight"], peft[f"base_model.model.{name}.lora_B.weight"] = a, b
        merge(name, a, b, SCALES["lora_peft"])
    save(out / "lora_peft.safetensors", peft)

    kohya = {}
    for name in ("pixel_blocks.0.adaLN_modulation.0", "t_embedder.mlp.2"):
        a, b = pair(rng, base[name + ".weight"], 2)
        k = "lora_unet_" + name.replace(".", "_")
        kohya[k + ".lora_down.weight"], kohya[k + ".lora_up.weight"] = a, b
        kohya[k + ".alpha"] = np.array(1.0, dtype=np.float32)
        merge(name, a, b, SCALES["lora_kohya"] * 1.0 / 2)
    save(out / "lora_kohya.safetensors", kohya)

    save(out / "tiny_lora_merged.safetensors", {k: v.astype(np.float32) for k, v in merged.items()})

    other = {"patch_blocks.5.attn.qkv.lora_A": np.zeros((4, 64), np.float32),
             "patch_blocks.5.attn.qkv.lora_B": np.zeros((192, 4), np.float32),
             "patch_blocks.0.attn.qkv.lora_A": np.zeros((4, 128), np.float32),
             "patch_blocks.0.attn.qkv.lora_B": np.zeros((192, 4), np.float32)}
    mods = [{"name": n, "rank": 4, "alpha": 4.0} for n in ("patch_blocks.5.attn.qkv", "patch_blocks.0.attn.qkv")]
    save(out / "lora_other_model.safetensors", other, {"format": "pixeldit2-lora-v1", "modules": json.dumps(mods)})


if __name__ == "__main__":
    main(*sys.argv[1:])

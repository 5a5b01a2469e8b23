"""Write small checkpoints in ComfyUI's layouts, and their official-layout f32 equivalents, into OUT_DIR.

The files are made from the committed golden checkpoints (never downloaded), following the layouts of ComfyUI
(Comfy-Org/ComfyUI 0271a469: ``comfy/ops.py``, ``comfy/quant_ops.py``, ``comfy/utils.py convert_old_quants``) and
comfy-kitchen (``tensor/mxfp8.py``, ``backends/eager/quantization.py quantize_mxfp8``, ``float_utils.py
to_blocked``), written independently of the Rust reader (the blocked scale layout below is the tile permutation of
``to_blocked``, the reader uses the cuBLAS offset formula). ``crates/cli/tests/checkpoint_layouts.rs`` runs this
script into a temporary directory and checks that each layout exports to the same model as its equivalent.

Files (t2i-tiny from tests/golden/t2i/t2i_tiny.safetensors, whose values are exact in bf16; tiny from
tests/golden/forward/tiny.safetensors):

* ``t2i_bf16.safetensors``: the Comfy-Org bf16 repack layout: every tensor bf16 under ``model.diffusion_model.``.
  Equivalent: ``t2i_tiny.safetensors`` itself.
* ``t2i_mxfp8.safetensors``: the Comfy-Org mxfp8 layout: every 2-D Linear weight but the PiT adaLN as MXFP8
  (``F8_E4M3`` weight zero-padded to multiples of 32, ``weight_scale`` E8M0 bytes in the blocked 128x4 layout, a
  ``comfy_quant`` uint8 JSON tag), everything else bf16, under ``model.diffusion_model.``. Equivalent:
  ``t2i_mxfp8_official.safetensors`` (f32, official keys, the exactly dequantized weights).
* ``t2i_mxfp8_oldmeta.safetensors``: the same tensors, but the layers listed in the safetensors metadata
  ``_quantization_metadata`` instead of ``comfy_quant`` tags (older files). Same equivalent.
* ``t2i_split.safetensors``: a state dict saved from a ComfyUI model object: bf16, ``model.diffusion_model.``,
  each PiT ``adaLN_modulation.0`` split into ``adaLN_modulation_msa``/``_mlp``. Equivalent: ``t2i_tiny.safetensors``.
* ``tiny_net_bf16.safetensors``: the C2I tiny model in bf16 under ``net.``. Equivalent:
  ``tiny_bf16_official.safetensors`` (the same bf16 values as f32, official keys).
* ``gemma_bf16.safetensors``: ComfyUI's single-file Gemma-2 layout (``gemma_2_2b_it_elm_bf16.safetensors``: the
  Hugging Face names in one file, bf16) of the gemma-tiny golden model (tests/golden/gemma/model). Equivalent:
  ``gemma_bf16_official.safetensors`` (the same values as f32).
* ``gemma_fp8_scaled.safetensors``: ComfyUI's ``fp8_scaled`` layout (``convert_old_quants``: a ``scaled_fp8``
  marker, every Linear weight ``F8_E4M3`` with a per-tensor f32 ``scale_weight`` = amax / 448), the rest bf16, under
  the text-encoder object prefix ``gemma2_2b.transformer.``. Equivalent: ``gemma_fp8_official.safetensors``
  (``fp8 * scale`` in f32, Hugging Face names).
* Bad inputs (from ``t2i_mxfp8``): ``bad_scale_length`` (one ``weight_scale`` 16 bytes short, truncated),
  ``bad_scale_long`` (one ``weight_scale`` twice as long),
  ``bad_no_scale`` (one layer's ``weight_scale`` and tag removed: an F8_E4M3 tensor without a scale),
  ``bad_tag_no_scale`` (the tag kept, the scale removed), ``bad_nvfp4`` (one tag says ``nvfp4``).

Usage: ``.venv/bin/python tools/gen_comfy_fixtures.py OUT_DIR``
"""

import json
import pathlib
import sys

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file

ROOT = pathlib.Path(__file__).resolve().parent.parent
PREFIX = "model.diffusion_model."
DTYPES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.uint8): "U8",
          np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3", np.dtype(ml_dtypes.float8_e8m0fnu): "F8_E8M0"}


def save(path, tensors, metadata=None):
    """A safetensors file (written by hand: safetensors.numpy does not know the float8 dtypes)."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        data = a.tobytes()
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def to_blocked(scales):
    """comfy-kitchen ``to_blocked``: pad [R, C] to [128k, 4m], then 128x4 tiles, each rearranged (32, 4, 4)."""
    rows, cols = scales.shape
    nrb, ncb = -(-rows // 128), -(-cols // 4)
    padded = np.zeros((nrb * 128, ncb * 4), dtype=scales.dtype)
    padded[:rows, :cols] = scales
    blocks = padded.reshape(nrb, 128, ncb, 4).transpose(0, 2, 1, 3)
    tiles = blocks.reshape(-1, 4, 32, 4).transpose(0, 2, 1, 3).reshape(-1, 32, 16)
    return tiles.reshape(nrb * 128, ncb * 4)


def quantize_mxfp8(w):
    """comfy-kitchen ``quantize_mxfp8`` (pad_32x): E4M3 data, E8M0 exponents; returns (q, blocked scales, w_dq)."""
    rows, cols = w.shape
    pr, pc = -(-rows // 32) * 32, -(-cols // 32) * 32
    x = np.zeros((pr, pc), dtype=np.float32)
    x[:rows, :cols] = w
    blocks = x.reshape(pr, pc // 32, 32)
    amax = np.abs(blocks).max(axis=-1)
    needed = np.maximum(amax / 448.0, 2.0 ** -127)
    exp = np.clip(np.ceil(np.log2(needed)).astype(np.int32) + 127, 0, 254)
    exp = np.where(amax == 0, 0, exp)
    scale = np.where(amax == 0, 1.0, np.exp2(exp.astype(np.float64) - 127)).astype(np.float32)
    data = np.clip(blocks / scale[..., None], -448.0, 448.0).reshape(pr, pc).astype(ml_dtypes.float8_e4m3fn)
    deq = (data.astype(np.float32).reshape(pr, pc // 32, 32) * scale[..., None]).reshape(pr, pc)[:rows, :cols]
    return data, to_blocked(exp.astype(np.uint8)).view(ml_dtypes.float8_e8m0fnu), deq


def is_quantized(key, value):
    """The layers the fixture quantizes: 2-D Linear weights except the PiT adaLN (kept bf16, like ComfyUI's)."""
    return key.endswith(".weight") and value.ndim == 2 and not (
        key.startswith("pixel_blocks.") and "adaLN_modulation" in key) and "embedding_table" not in key


def bf16(a):
    return np.asarray(a, dtype=np.float32).astype(ml_dtypes.bfloat16)


def tag(conf):
    return np.frombuffer(json.dumps(conf).encode(), dtype=np.uint8)


def main(out_dir):
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t2i = load_file(str(ROOT / "tests/golden/t2i/t2i_tiny.safetensors"))
    save(out / "t2i_bf16.safetensors", {PREFIX + k: bf16(v) for k, v in t2i.items()})

    mx, official, layers = {}, {}, {}
    for k, v in t2i.items():
        if is_quantized(k, v):
            layer = PREFIX + k[: -len(".weight")]
            q, s, deq = quantize_mxfp8(v)
            mx[layer + ".weight"], mx[layer + ".weight_scale"] = q, s
            layers[layer] = {"format": "mxfp8"}
            official[k] = deq
        else:
            mx[PREFIX + k] = bf16(v)
            official[k] = np.asarray(bf16(v), dtype=np.float32)
    tags = {f"{layer}.comfy_quant": tag(conf) for layer, conf in layers.items()}
    save(out / "t2i_mxfp8.safetensors", {**mx, **tags})
    save(out / "t2i_mxfp8_official.safetensors", official)
    save(out / "t2i_mxfp8_oldmeta.safetensors", mx, {"_quantization_metadata": json.dumps({"layers": layers})})

    split = {}
    dp = t2i["pixel_blocks.0.norm1.weight"].shape[0]
    for k, v in t2i.items():
        if k.startswith("pixel_blocks.") and ".adaLN_modulation.0." in k:
            block, leaf = k.split(".adaLN_modulation.0.")
            per_pixel = v.reshape(-1, 6, dp, *v.shape[1:])
            split[f"{PREFIX}{block}.adaLN_modulation_msa.{leaf}"] = bf16(per_pixel[:, :3].reshape(-1, *v.shape[1:]))
            split[f"{PREFIX}{block}.adaLN_modulation_mlp.{leaf}"] = bf16(per_pixel[:, 3:].reshape(-1, *v.shape[1:]))
        else:
            split[PREFIX + k] = bf16(v)
    save(out / "t2i_split.safetensors", split)

    tiny = load_file(str(ROOT / "tests/golden/forward/tiny.safetensors"))
    save(out / "tiny_net_bf16.safetensors", {"net." + k: bf16(v) for k, v in tiny.items()})
    save(out / "tiny_bf16_official.safetensors", {k: np.asarray(bf16(v), dtype=np.float32) for k, v in tiny.items()})

    gemma = {}
    for shard in sorted((ROOT / "tests/golden/gemma/model").glob("model-*.safetensors")):
        gemma.update(load_file(str(shard)))
    save(out / "gemma_bf16.safetensors", {k: bf16(v) for k, v in gemma.items()})
    save(out / "gemma_bf16_official.safetensors", {k: np.asarray(bf16(v), dtype=np.float32) for k, v in gemma.items()})
    fp8, fp8_official = {"gemma2_2b.transformer.scaled_fp8": np.zeros(0, dtype=ml_dtypes.float8_e4m3fn)}, {}
    for k, v in gemma.items():
        if v.ndim == 2 and k.endswith("_proj.weight"):
            scale = np.float32(np.abs(v).max() / 448.0)
            q = np.clip(v / scale, -448, 448).astype(ml_dtypes.float8_e4m3fn)
            layer = "gemma2_2b.transformer." + k[: -len(".weight")]
            fp8[layer + ".weight"], fp8[layer + ".scale_weight"] = q, np.array(scale, dtype=np.float32)
            fp8_official[k] = q.astype(np.float32) * scale
        else:
            fp8["gemma2_2b.transformer." + k] = bf16(v)
            fp8_official[k] = np.asarray(bf16(v), dtype=np.float32)
    save(out / "gemma_fp8_scaled.safetensors", fp8)
    save(out / "gemma_fp8_official.safetensors", fp8_official)

    victim = PREFIX + "patch_blocks.0.attn.qkv_x"
    short = dict(mx, **tags)
    short[victim + ".weight_scale"] = short[victim + ".weight_scale"].reshape(-1)[:-16]
    save(out / "bad_scale_length.safetensors", short)
    long = dict(mx, **tags)
    long[victim + ".weight_scale"] = np.concatenate([long[victim + ".weight_scale"]] * 2)
    save(out / "bad_scale_long.safetensors", long)
    save(out / "bad_no_scale.safetensors", {k: v for k, v in {**mx, **tags}.items()
                                              if k not in (victim + ".weight_scale", victim + ".comfy_quant")})
    save(out / "bad_tag_no_scale.safetensors", {k: v for k, v in {**mx, **tags}.items() if k != victim + ".weight_scale"})
    save(out / "bad_nvfp4.safetensors", {**mx, **tags, victim + ".comfy_quant": tag({"format": "nvfp4"})})


if __name__ == "__main__":
    main(*sys.argv[1:])

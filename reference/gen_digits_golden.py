"""Write the golden images of the embedded default model (digits) into tests/golden/digits/ (or another directory).

One image per class 0-9 from the committed weights graphs/digits.safetensors, sampled with the numpy reference
sampler (samplers.py) in float64 with the model's default sampler settings (the ``sampler`` block of
graphs/digits.json: flow_dpm, 25 steps, CFG 3.0, guidance interval (0, 1), time shift 1).

Files:
* ``digits_golden.safetensors``: ``noise`` [10,3,32,32] f32 (the initial x at t = 0,
  ``numpy.random.default_rng(NOISE_SEED).standard_normal`` as float32), ``classes`` [10] i64, the time grid
  ``timesteps`` [26] f64, the per-step CFG flags ``guided`` [25] i64 and the raw final ``x`` [10,3,32,32] f32
  (computed in float64 from the float32 noise and weights, then cast).
* ``noise.npy``: the same noise as a .npy file, for ``pixeldit-run --noise``.
* ``class_<c>.png``: the 32x32 RGB image of class c, ``samplers.to_uint8(x)`` (the official fp2uint8).
* ``grid.png``: the ten images side by side (classes 0-9 left to right), 4x upscaled, for humans.

Usage: ``.venv/bin/python reference/gen_digits_golden.py [OUT_DIR]`` (default OUT_DIR is tests/golden/digits).
"""

import hashlib
import json
import pathlib
import sys

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from checkpoint import check_checkpoint, load_checkpoint
from samplers import is_guided, make_forward_fn, sample, time_grid, to_uint8

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden" / "digits"
CONFIG = ROOT / "graphs" / "digits.json"
WEIGHTS = ROOT / "graphs" / "digits.safetensors"
NOISE_SEED = 0
CLASSES = list(range(10))


def settings(cfg):
    """The model's default sampler settings (graphs/digits.json ``sampler``)."""
    s = cfg["sampler"]
    return {"sampler": s["name"], "steps": s["steps"], "cfg": s["cfg_scale"],
            "interval": tuple(s["guidance_interval"]), "shift": s["time_shift"]}


def golden_tensors():
    """Noise, labels, time grid, CFG flags and the float64 reference sample, as a flat tensor dict, and metadata."""
    cfg = json.loads(CONFIG.read_text())
    params = load_checkpoint(str(WEIGHTS))
    check_checkpoint(params, cfg)
    st = settings(cfg)
    classes = np.asarray(CLASSES, dtype=np.int64)
    shape = (len(classes), cfg["in_channels"], cfg["default_height"], cfg["default_width"])
    noise = np.random.default_rng(NOISE_SEED).standard_normal(shape).astype(np.float32)
    x = sample(make_forward_fn(params, cfg), noise.astype(np.float64), classes, st["steps"], st["cfg"],
               st["interval"], st["shift"], st["sampler"], cfg["num_classes"])
    grid = time_grid(st["steps"], st["shift"])
    guided = np.array([is_guided(t, st["interval"]) for t in grid[:-1]], dtype=np.int64)
    tensors = {"noise": noise, "classes": classes, "timesteps": grid, "guided": guided, "x": x.astype(np.float32)}
    meta = {"generator": "reference/gen_digits_golden.py", "preset": "digits", "noise_seed": str(NOISE_SEED),
            "weights_sha256": hashlib.sha256(WEIGHTS.read_bytes()).hexdigest(),
            **{k: str(v) for k, v in st.items()}}
    return tensors, meta


def save_npy(path, array):
    """np.save without pickling."""
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def main(out_dir=DEFAULT_OUT):
    """Generate every digits golden file into ``out_dir``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, meta = golden_tensors()
    save_file(tensors, str(out_dir / "digits_golden.safetensors"), metadata=meta)
    save_npy(out_dir / "noise.npy", tensors["noise"])
    images = to_uint8(tensors["x"]).transpose(0, 2, 3, 1)  # [K, H, W, 3]
    for c, img in zip(CLASSES, images):
        Image.fromarray(img).save(out_dir / f"class_{c}.png")
    strip = np.concatenate(list(images), axis=1).repeat(4, axis=0).repeat(4, axis=1)
    Image.fromarray(strip).save(out_dir / "grid.png")


if __name__ == "__main__":
    main(*sys.argv[1:])

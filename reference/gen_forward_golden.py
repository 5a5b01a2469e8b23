"""Write the forward-pass golden files in tests/golden/forward/ (or another directory).

Files:
* ``tiny.safetensors``: random tiny checkpoint (graphs/tiny.json, seed 0), official key names, float32.
* ``cases.safetensors``: per case ``case_<n>.x`` [B,3,H,W] f32, ``case_<n>.t`` [B] f32,
  ``case_<n>.y`` [B] i64 and ``case_<n>.v`` [B,3,H,W] f32, the reference output computed in
  float64 from the float32 inputs and weights, then cast to float32.
* ``tiny_p8_postmod.safetensors`` and ``cases_postmod.safetensors``: the same cases for a post-modulation model
  (official ``pit_adaln_post_modulation``; POSTMOD below: the tiny preset with patch size 8 to keep the file small,
  seed 1), whose flag the exporter must detect from the PiT adaLN row count.
* ``sample_tiny.safetensors``: ``noise`` [2,3,32,32] f32, ``classes`` [2] i64, the time grid
  ``timesteps`` [N+1] f64, per-step CFG flags ``guided`` [N] i64 and the final image ``x``
  [2,3,32,32] f32 of a reference sample (SAMPLE settings below, computed in float64).

Usage: ``.venv/bin/python reference/gen_forward_golden.py [OUT_DIR]``
(default OUT_DIR is tests/golden/forward).
"""

import json
import pathlib
import sys

import numpy as np
from safetensors.numpy import save_file

from checkpoint import make_random_checkpoint, save_checkpoint
from pixeldit_ref import forward
from samplers import is_guided, make_forward_fn, sample, time_grid

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden" / "forward"
CHECKPOINT_SEED = 0
INPUT_SEED = 1234
NOISE_SEED = 4321

#: name -> (height, width, t, y); y = 10 is the null class of the tiny preset.
CASES = {
    "case_a": (32, 48, [0.13, 0.87], [3, 10]),
    "case_b": (32, 32, [0.0, 1.0], [0, 9]),
    "case_c": (48, 32, [0.5], [10]),
}

#: The post-modulation model: the tiny preset with these fields replaced, and its checkpoint seed.
POSTMOD = {"patch_size": 8, "pit_adaln_post_modulation": True}
POSTMOD_SEED = 1

#: Sampler settings of sample_tiny.safetensors (32x32, two images).
SAMPLE = {"sampler": "flow_dpm", "steps": 10, "cfg": 2.0, "interval": (0.1, 0.9), "shift": 1.0, "classes": [1, 7]}


def load_preset(name):
    """Load graphs/<name>.json."""
    return json.loads((ROOT / "graphs" / f"{name}.json").read_text())


def forward_cases(params, cfg):
    """Inputs and float64 reference outputs of every case, as a flat tensor dict."""
    rng = np.random.default_rng(INPUT_SEED)
    tensors = {}
    for name, (height, width, t, y) in CASES.items():
        x = rng.standard_normal((len(t), cfg["in_channels"], height, width)).astype(np.float32)
        t = np.asarray(t, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        v = forward(params, cfg, x.astype(np.float64), t.astype(np.float64), y)
        tensors.update({f"{name}.x": x, f"{name}.t": t, f"{name}.y": y, f"{name}.v": v.astype(np.float32)})
    return tensors


def sample_case(params, cfg):
    """Noise, labels, time grid, CFG flags and the float64 reference sample, as a flat tensor dict."""
    classes = np.asarray(SAMPLE["classes"], dtype=np.int64)
    noise = np.random.default_rng(NOISE_SEED).standard_normal((len(classes), cfg["in_channels"], 32, 32))
    noise = noise.astype(np.float32)
    grid = time_grid(SAMPLE["steps"], SAMPLE["shift"])
    x = sample(make_forward_fn(params, cfg), noise.astype(np.float64), classes, SAMPLE["steps"], SAMPLE["cfg"],
               SAMPLE["interval"], SAMPLE["shift"], SAMPLE["sampler"], cfg["num_classes"])
    guided = np.array([is_guided(t, SAMPLE["interval"]) for t in grid[:-1]], dtype=np.int64)
    return {"noise": noise, "classes": classes, "timesteps": grid, "guided": guided, "x": x.astype(np.float32)}


def main(out_dir=DEFAULT_OUT):
    """Generate all forward golden files into ``out_dir``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_preset("tiny")
    params = make_random_checkpoint(cfg, CHECKPOINT_SEED)
    save_checkpoint(params, out_dir / "tiny.safetensors")
    save_file(forward_cases(params, cfg), str(out_dir / "cases.safetensors"),
              metadata={"generator": "reference/gen_forward_golden.py", "preset": "tiny"})
    save_file(sample_case(params, cfg), str(out_dir / "sample_tiny.safetensors"),
              metadata={"generator": "reference/gen_forward_golden.py", "preset": "tiny",
                        **{k: str(v) for k, v in SAMPLE.items()}})
    post_cfg = {**cfg, **POSTMOD}
    post = make_random_checkpoint(post_cfg, POSTMOD_SEED)
    save_checkpoint(post, out_dir / "tiny_p8_postmod.safetensors")
    save_file(forward_cases(post, post_cfg), str(out_dir / "cases_postmod.safetensors"),
              metadata={"generator": "reference/gen_forward_golden.py", "preset": "tiny",
                        **{k: str(v) for k, v in POSTMOD.items()}})


if __name__ == "__main__":
    main(*sys.argv[1:])

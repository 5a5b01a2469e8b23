"""Write the forward-pass golden files in tests/golden/forward/ (or another directory).

Files:
* ``tiny.safetensors``: random tiny checkpoint (graphs/tiny.json, seed 0), official key names, float32.
* ``cases.safetensors``: per case ``case_<n>.x`` [B,3,H,W] f32, ``case_<n>.t`` [B] f32,
  ``case_<n>.y`` [B] i64 and ``case_<n>.v`` [B,3,H,W] f32, the reference output computed in
  float64 from the float32 inputs and weights, then cast to float32.

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

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden" / "forward"
CHECKPOINT_SEED = 0
INPUT_SEED = 1234

#: name -> (height, width, t, y); y = 10 is the null class of the tiny preset.
CASES = {
    "case_a": (32, 48, [0.13, 0.87], [3, 10]),
    "case_b": (32, 32, [0.0, 1.0], [0, 9]),
    "case_c": (48, 32, [0.5], [10]),
}


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


def main(out_dir=DEFAULT_OUT):
    """Generate all forward golden files into ``out_dir``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_preset("tiny")
    params = make_random_checkpoint(cfg, CHECKPOINT_SEED)
    save_checkpoint(params, out_dir / "tiny.safetensors")
    save_file(forward_cases(params, cfg), str(out_dir / "cases.safetensors"),
              metadata={"generator": "reference/gen_forward_golden.py", "preset": "tiny"})


if __name__ == "__main__":
    main(*sys.argv[1:])

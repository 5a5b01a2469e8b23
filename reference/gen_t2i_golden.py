"""Write the text-to-image golden files in tests/golden/t2i/ (or another directory).

Files:
* ``t2i_tiny.safetensors``: random t2i-tiny checkpoint (graphs/t2i-tiny.json, seed 0), official key names
  without the ``core.`` prefix, float32 values that are exact in bfloat16.
* ``cases.safetensors``: per case ``case_<n>.x`` [B,3,H,W] f32, ``case_<n>.t`` [B] f32 (sigma * 1000),
  ``case_<n>.text`` [B,8,48] f32 and ``case_<n>.v`` [B,3,H,W] f32, the reference output computed in float64
  from the float32 inputs and weights, then cast to float32.
* ``sample_t2i_tiny.safetensors``: a DPM-Solver++ 2M sample with CFG and a negative prompt (SAMPLE below):
  ``noise``, ``text``, ``negative`` (f32), the sigma grid ``sigmas`` [N+1] f64, per-evaluation CFG flags
  ``guided`` [N] i64 and the final image ``x`` [2,3,32,32] f32 (computed in float64).
* ``t2i_tiny_postmod.safetensors`` and ``cases_postmod.safetensors``: the same cases for t2i-tiny with
  post-modulation PiT blocks (official ``pit_adaln_post_modulation``, POSTMOD below, checkpoint seed 1).

Usage: ``.venv/bin/python reference/gen_t2i_golden.py [OUT_DIR]`` (default OUT_DIR is tests/golden/t2i).
"""

import json
import pathlib
import sys

import numpy as np
from safetensors.numpy import save_file

from pixeldit_t2i_ref import forward, make_random_checkpoint
from samplers import flow_sigmas, sample_t2i

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden" / "t2i"
CHECKPOINT_SEED = 0
INPUT_SEED = 2024
SAMPLE_SEED = 77

#: The post-modulation model (official ``pit_adaln_post_modulation``): t2i-tiny with this flag, its checkpoint seed.
POSTMOD = {"pit_adaln_post_modulation": True}
POSTMOD_SEED = 1

#: name -> (height, width, t = sigma * 1000)
CASES = {
    "case_a": (32, 48, [130.0, 870.0]),
    "case_b": (32, 32, [0.0, 999.75]),
    "case_c": (48, 32, [1000.0]),
}

#: DPM-Solver++ settings of sample_t2i_tiny.safetensors (32x32, two images; the interval leaves the first
#: evaluation at sigma = 0.99975 unguided, so both branches of the rule are exercised).
SAMPLE = {"sampler": "dpmpp_2m", "steps": 6, "cfg": 3.0, "interval": (0.0, 0.99), "shift": 4.0}


def load_preset(name):
    """Load graphs/<name>.json."""
    return json.loads((ROOT / "graphs" / f"{name}.json").read_text())


def forward_cases(params, cfg):
    """Inputs and float64 reference outputs of every case, as a flat tensor dict."""
    rng = np.random.default_rng(INPUT_SEED)
    text_shape = (cfg["text"]["max_length"], cfg["text"]["embed_dim"])
    tensors = {}
    for name, (height, width, t) in CASES.items():
        x = rng.standard_normal((len(t), cfg["in_channels"], height, width)).astype(np.float32)
        text = rng.standard_normal((len(t), *text_shape)).astype(np.float32)
        t = np.asarray(t, dtype=np.float32)
        v = forward(params, cfg, x.astype(np.float64), t.astype(np.float64), text.astype(np.float64))
        tensors.update({f"{name}.x": x, f"{name}.t": t, f"{name}.text": text, f"{name}.v": v.astype(np.float32)})
    return tensors


def sample_case(params, cfg):
    """Noise, text, negative text, sigma grid, CFG flags and the float64 reference sample."""
    rng = np.random.default_rng(SAMPLE_SEED)
    text_shape = (cfg["text"]["max_length"], cfg["text"]["embed_dim"])
    noise = rng.standard_normal((2, cfg["in_channels"], 32, 32)).astype(np.float32)
    text = rng.standard_normal((2, *text_shape)).astype(np.float32)
    negative = rng.standard_normal((1, *text_shape)).astype(np.float32)

    def fwd(x, t, txt):
        return forward(params, cfg, x, t, txt)

    x, guided = sample_t2i(fwd, noise.astype(np.float64), text.astype(np.float64),
                           np.repeat(negative, 2, axis=0).astype(np.float64), SAMPLE["steps"], SAMPLE["cfg"],
                           SAMPLE["interval"], SAMPLE["shift"])
    return {"noise": noise, "text": text, "negative": negative, "sigmas": flow_sigmas(SAMPLE["steps"], SAMPLE["shift"]),
            "guided": guided, "x": x.astype(np.float32)}


def main(out_dir=DEFAULT_OUT):
    """Generate all T2I golden files into ``out_dir``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_preset("t2i-tiny")
    params = make_random_checkpoint(cfg, CHECKPOINT_SEED)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()},
              str(out_dir / "t2i_tiny.safetensors"))
    meta = {"generator": "reference/gen_t2i_golden.py", "preset": "t2i-tiny"}
    save_file(forward_cases(params, cfg), str(out_dir / "cases.safetensors"), metadata=meta)
    save_file(sample_case(params, cfg), str(out_dir / "sample_t2i_tiny.safetensors"),
              metadata={**meta, **{k: str(v) for k, v in SAMPLE.items()}})
    post_cfg = {**cfg, **POSTMOD}
    post = make_random_checkpoint(post_cfg, POSTMOD_SEED)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in post.items()},
              str(out_dir / "t2i_tiny_postmod.safetensors"))
    save_file(forward_cases(post, post_cfg), str(out_dir / "cases_postmod.safetensors"),
              metadata={**meta, **{k: str(v) for k, v in POSTMOD.items()}})


if __name__ == "__main__":
    main(*sys.argv[1:])

"""Write the golden images of the text-to-image default model (digits-t2i) into tests/golden/digits-t2i/.

One image per class 0-9 for the held-out prompt "an image of the digit <word>" (a phrasing the model was not
trained on), from the committed weights graphs/digits-t2i.safetensors, sampled with the numpy reference
DPM-Solver++ (samplers.sample_t2i) in float64 with the model's default settings (graphs/digits-t2i.json
``sampler``: 20 steps, CFG 3.0 with the negative prompt "", interval [0, 1], shift 1).

The text embeddings are inputs: ``text.npy`` [10, 300, 64], ``negative.npy`` [1, 300, 64] and ``calib.npy``
[10, 300, 64] ("the digit <word>", the calibration set of the quantized variants), the tiny Gemma-2 of
tests/golden/gemma/ run by the official recipe through ``pixeldit-run encode`` (the Rust tokenizer + exported
encoder, which tests/golden/gemma/ checks against transformers within ~1e-6). ``--encode PIXELDIT_RUN GEMMA_ONNX``
remakes them; without it the committed ones are used (so check_golden.py needs no Rust build).

Files: ``digits_t2i_golden.safetensors`` (``noise`` f32 [10,3,32,32] = default_rng(0) standard normal, ``sigmas`` f64
[21], ``guided`` i64 [20], raw final ``x`` f32 [10,3,32,32]); ``noise.npy``; ``prompt_<c>.png``; ``grid.png``.

Usage: ``.venv/bin/python reference/gen_digits_t2i_golden.py [OUT_DIR] [--encode PIXELDIT_RUN GEMMA_ONNX]``.
"""

import argparse
import hashlib
import json
import pathlib

import numpy as np
from PIL import Image
from safetensors.numpy import save_file

from checkpoint import load_checkpoint
from pixeldit_t2i_ref import forward
from samplers import flow_sigmas, sample_t2i, to_uint8
from text_embeddings import encode

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "golden" / "digits-t2i"
CONFIG = ROOT / "graphs" / "digits-t2i.json"
WEIGHTS = ROOT / "graphs" / "digits-t2i.safetensors"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PROMPTS = [f"an image of the digit {w}" for w in WORDS]
NEGATIVE = ""
#: Calibration prompts of the quantized variants: a training phrasing per class (not the held-out PROMPTS).
CALIB_PROMPTS = [f"the digit {w}" for w in WORDS]
NOISE_SEED = 0


def golden_tensors(text, negative):
    """Noise, sigmas, CFG flags and the float64 reference samples, and metadata."""
    cfg = json.loads(CONFIG.read_text())
    params = load_checkpoint(str(WEIGHTS))
    s = cfg["sampler"]
    shape = (len(PROMPTS), cfg["in_channels"], cfg["default_height"], cfg["default_width"])
    noise = np.random.default_rng(NOISE_SEED).standard_normal(shape).astype(np.float32)
    uncond = np.repeat(negative, len(PROMPTS), axis=0).astype(np.float64)

    def fwd(x, t, txt):
        return forward(params, cfg, x, t, txt)

    x, guided = sample_t2i(fwd, noise.astype(np.float64), text.astype(np.float64), uncond, s["steps"],
                           s["cfg_scale"], tuple(s["guidance_interval"]), s["time_shift"])
    tensors = {"noise": noise, "sigmas": flow_sigmas(s["steps"], s["time_shift"]), "guided": guided,
               "x": x.astype(np.float32)}
    meta = {"generator": "reference/gen_digits_t2i_golden.py", "preset": "digits-t2i",
            "noise_seed": str(NOISE_SEED), "prompts": json.dumps(PROMPTS), "negative_prompt": NEGATIVE,
            "weights_sha256": hashlib.sha256(WEIGHTS.read_bytes()).hexdigest(),
            "steps": str(s["steps"]), "cfg": str(s["cfg_scale"]), "shift": str(s["time_shift"])}
    return tensors, meta


def main(out_dir=DEFAULT_OUT, encode_with=None):
    """Generate every digits-t2i golden file into ``out_dir``; ``encode_with`` = (pixeldit-run, gemma.onnx) remakes
    the embeddings, else the committed ones are read."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if encode_with:
        text = encode(*encode_with, PROMPTS, False)
        negative = encode(*encode_with, [NEGATIVE], True)
        calib = encode(*encode_with, CALIB_PROMPTS, False)
    else:
        text = np.load(DEFAULT_OUT / "text.npy")
        negative = np.load(DEFAULT_OUT / "negative.npy")
        calib = np.load(DEFAULT_OUT / "calib.npy")
    tensors, meta = golden_tensors(text, negative)
    save_file(tensors, str(out_dir / "digits_t2i_golden.safetensors"), metadata=meta)
    for name, arr in [("noise.npy", tensors["noise"]), ("text.npy", text), ("negative.npy", negative),
                      ("calib.npy", calib)]:
        np.save(out_dir / name, np.ascontiguousarray(arr), allow_pickle=False)
    images = to_uint8(tensors["x"]).transpose(0, 2, 3, 1)
    for c, img in enumerate(images):
        Image.fromarray(img).save(out_dir / f"prompt_{c}.png")
    grid = np.concatenate(list(images), axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(out_dir / "grid.png")
    print(f"wrote {out_dir}: prompts {PROMPTS[0]!r} .. {PROMPTS[-1]!r}, guided steps {int(tensors['guided'].sum())}")


if __name__ == "__main__":
    PARSER = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    PARSER.add_argument("out_dir", nargs="?", default=str(DEFAULT_OUT))
    PARSER.add_argument("--encode", nargs=2, metavar=("PIXELDIT_RUN", "GEMMA_ONNX"))
    ARGS = PARSER.parse_args()
    main(ARGS.out_dir, ARGS.encode)

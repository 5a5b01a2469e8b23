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

``--nonsquare`` writes the non-square set instead, into ``tests/golden/digits-t2i/32x48/`` (for the dynamic-size
export): the prompts of NONSQUARE_DIGITS at height 32 x width 48, their embeddings the matching rows of the committed
``text.npy`` (so ``--encode`` does not apply), noise ``default_rng(NONSQUARE_SEED)`` drawn for [3, 3, 32, 48]. Files:
``digits_t2i_32x48_golden.safetensors`` (``noise``, ``sigmas``, ``guided``, ``x`` as above at [3,3,32,48], plus
``x_last_input`` f64 [3,3,32,48], the x the last model evaluation (sigma_19) was given, so that
``check_golden.py`` can verify the last step without rerunning the sampler), ``noise.npy``, ``prompt_<c>.png``
(32 rows x 48 columns) and ``grid.png``. About 40 s.

Usage: ``.venv/bin/python reference/gen_digits_t2i_golden.py [OUT_DIR] [--encode PIXELDIT_RUN GEMMA_ONNX]``,
``.venv/bin/python reference/gen_digits_t2i_golden.py --nonsquare [OUT_DIR]``.
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
#: The non-square set: image size (height, width), the digits whose PROMPTS it samples, its noise seed and folder.
NONSQUARE_SIZE = (32, 48)
NONSQUARE_DIGITS = [2, 3, 7]
NONSQUARE_SEED = 0
NONSQUARE_OUT = DEFAULT_OUT / "32x48"
NONSQUARE_FILE = "digits_t2i_32x48_golden.safetensors"


def golden_tensors(text, negative, prompts=None, size=None, seed=NOISE_SEED):
    """Noise, sigmas, CFG flags and the float64 reference samples, and metadata.

    ``text`` [K, 300, 64] are the embeddings of ``prompts`` (default: PROMPTS), ``size`` (height, width) defaults to the
    model's. Also returns the x of the last model evaluation (float64), which the non-square set keeps."""
    prompts = PROMPTS if prompts is None else prompts
    cfg = json.loads(CONFIG.read_text())
    params = load_checkpoint(str(WEIGHTS))
    s = cfg["sampler"]
    height, width = size or (cfg["default_height"], cfg["default_width"])
    shape = (len(prompts), cfg["in_channels"], height, width)
    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    uncond = np.repeat(negative, len(prompts), axis=0).astype(np.float64)
    last = {}

    def fwd(x, t, txt):
        last["x"] = x[:len(prompts)]
        return forward(params, cfg, x, t, txt)

    x, guided = sample_t2i(fwd, noise.astype(np.float64), text.astype(np.float64), uncond, s["steps"],
                           s["cfg_scale"], tuple(s["guidance_interval"]), s["time_shift"])
    tensors = {"noise": noise, "sigmas": flow_sigmas(s["steps"], s["time_shift"]), "guided": guided,
               "x": x.astype(np.float32)}
    meta = {"generator": "reference/gen_digits_t2i_golden.py", "preset": "digits-t2i",
            "noise_seed": str(seed), "prompts": json.dumps(prompts), "negative_prompt": NEGATIVE,
            "weights_sha256": hashlib.sha256(WEIGHTS.read_bytes()).hexdigest(),
            "steps": str(s["steps"]), "cfg": str(s["cfg_scale"]), "shift": str(s["time_shift"])}
    return tensors, meta, last["x"]


def write_images(out_dir, x, digits):
    """``prompt_<c>.png`` per image (digit c of ``digits``) and ``grid.png`` (left to right, 4x upscaled)."""
    images = to_uint8(x).transpose(0, 2, 3, 1)
    for c, img in zip(digits, images):
        Image.fromarray(img).save(out_dir / f"prompt_{c}.png")
    grid = np.concatenate(list(images), axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST).save(out_dir / "grid.png")


def nonsquare_inputs():
    """(prompts, text [3, 300, 64], negative [1, 300, 64]) of the non-square set: rows of the committed embeddings."""
    text = np.load(DEFAULT_OUT / "text.npy")[NONSQUARE_DIGITS]
    negative = np.load(DEFAULT_OUT / "negative.npy")
    return [PROMPTS[c] for c in NONSQUARE_DIGITS], text, negative


def main_nonsquare(out_dir=NONSQUARE_OUT):
    """Generate the non-square (32x48) golden files into ``out_dir``."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts, text, negative = nonsquare_inputs()
    tensors, meta, x_last = golden_tensors(text, negative, prompts, NONSQUARE_SIZE, NONSQUARE_SEED)
    tensors["x_last_input"] = np.ascontiguousarray(x_last)
    meta["size"] = f"{NONSQUARE_SIZE[0]}x{NONSQUARE_SIZE[1]}"
    meta["text_rows"] = json.dumps(NONSQUARE_DIGITS)
    meta["text_sha256"] = hashlib.sha256(np.ascontiguousarray(text).tobytes()).hexdigest()
    meta["negative_sha256"] = hashlib.sha256(np.ascontiguousarray(negative).tobytes()).hexdigest()
    save_file(tensors, str(out_dir / NONSQUARE_FILE), metadata=meta)
    np.save(out_dir / "noise.npy", tensors["noise"], allow_pickle=False)
    write_images(out_dir, tensors["x"], NONSQUARE_DIGITS)
    print(f"wrote {out_dir}: {NONSQUARE_SIZE[0]}x{NONSQUARE_SIZE[1]}, prompts {prompts}")


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
    tensors, meta, _ = golden_tensors(text, negative)
    save_file(tensors, str(out_dir / "digits_t2i_golden.safetensors"), metadata=meta)
    for name, arr in [("noise.npy", tensors["noise"]), ("text.npy", text), ("negative.npy", negative),
                      ("calib.npy", calib)]:
        np.save(out_dir / name, np.ascontiguousarray(arr), allow_pickle=False)
    write_images(out_dir, tensors["x"], range(len(PROMPTS)))
    print(f"wrote {out_dir}: prompts {PROMPTS[0]!r} .. {PROMPTS[-1]!r}, guided steps {int(tensors['guided'].sum())}")


if __name__ == "__main__":
    PARSER = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    PARSER.add_argument("out_dir", nargs="?")
    PARSER.add_argument("--encode", nargs=2, metavar=("PIXELDIT_RUN", "GEMMA_ONNX"))
    PARSER.add_argument("--nonsquare", action="store_true", help="write the 32x48 set (tests/golden/digits-t2i/32x48)")
    ARGS = PARSER.parse_args()
    if ARGS.nonsquare:
        if ARGS.encode:
            PARSER.error("--nonsquare reads the committed text.npy rows; remake them first without --nonsquare")
        main_nonsquare(ARGS.out_dir or NONSQUARE_OUT)
    else:
        main(ARGS.out_dir or DEFAULT_OUT, ARGS.encode)

"""Sample a grid of digits from graphs/digits.safetensors with the numpy reference sampler.

Rows are the classes 0-9, columns are different noise seeds.  The sampler
settings default to the ``sampler`` block of graphs/digits.json and can be
overridden on the command line.

Usage: ``.venv/bin/python reference/sample_digits.py [--out reference/digits_samples.png] [--steps N] ...``
"""

import argparse
import json
import pathlib

import numpy as np
from PIL import Image

from checkpoint import check_checkpoint, load_checkpoint
from samplers import make_forward_fn, sample, to_uint8

ROOT = pathlib.Path(__file__).resolve().parent.parent


def image_grid(images, rows, cols, scale, gap):
    """Tile uint8 images [rows*cols, 3, H, W] row by row into one RGB PIL image."""
    _, _, height, width = images.shape
    cell_h, cell_w = height * scale + gap, width * scale + gap
    canvas = np.full((rows * cell_h + gap, cols * cell_w + gap, 3), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        big = img.transpose(1, 2, 0).repeat(scale, axis=0).repeat(scale, axis=1)
        canvas[gap + r * cell_h: gap + r * cell_h + height * scale,
               gap + c * cell_w: gap + c * cell_w + width * scale] = big
    return Image.fromarray(canvas)


def main():
    """Parse arguments, sample every class and save the grid."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "graphs" / "digits.json"))
    parser.add_argument("--weights", default=str(ROOT / "graphs" / "digits.safetensors"))
    parser.add_argument("--out", default=str(ROOT / "reference" / "digits_samples.png"))
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--cfg", type=float)
    parser.add_argument("--interval", type=float, nargs=2)
    parser.add_argument("--shift", type=float)
    args = parser.parse_args()

    cfg = json.loads(pathlib.Path(args.config).read_text())
    defaults = cfg["sampler"]
    settings = {
        "sampler": args.sampler or defaults["name"],
        "steps": args.steps or defaults["steps"],
        "cfg": defaults["cfg_scale"] if args.cfg is None else args.cfg,
        "interval": tuple(args.interval or defaults["guidance_interval"]),
        "shift": args.shift or defaults["time_shift"],
    }
    params = load_checkpoint(args.weights)
    check_checkpoint(params, cfg)
    n_classes = cfg["num_classes"]
    classes = np.repeat(np.arange(n_classes), args.per_class)
    noise = np.random.default_rng(args.seed).standard_normal(
        (len(classes), cfg["in_channels"], cfg["default_height"], cfg["default_width"])).astype(np.float32)
    x = sample(make_forward_fn(params, cfg, "float32"), noise, classes, settings["steps"], settings["cfg"],
               settings["interval"], settings["shift"], settings["sampler"], n_classes)
    image_grid(to_uint8(x), n_classes, args.per_class, scale=2, gap=2).save(args.out)
    print(f"wrote {args.out} with {settings}")


if __name__ == "__main__":
    main()

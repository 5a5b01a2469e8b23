"""Does a ``digits-t2i`` checkpoint draw the digit its prompt names? Prompt-following accuracy, per class.

Exports the checkpoint with ``pixeldit-export --config graphs/digits-t2i.json --checkpoint CKPT``, samples
``--seeds`` images for every training and held-out phrasing of every digit with ``pixeldit-run --prompts-file``
(the model's default sampler: DPM-Solver++ 2M, CFG, negative ""), and judges each image with the digit classifier
of ``tools/digit_classifier.py``. Prints the accuracy per digit for the training and the held-out phrasings.

Usage: ``.venv/bin/python reference/eval_digits_t2i.py CKPT --text-encoder gemma.onnx [--seeds N] [--cfg W]``
(CKPT defaults to graphs/digits-t2i.safetensors; the binaries default to target/release/).
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from digit_classifier import classify  # noqa: E402  pylint: disable=wrong-import-position
from train_t2i_digits import HELDOUT, TRAIN, phrasings  # noqa: E402  pylint: disable=wrong-import-position


def sample(args, tmp, prompts):
    """uint8 [K, 32, 32, 3] images of ``prompts`` (one each, seeds in the stream of --seed)."""
    model = tmp / "model.onnx"
    subprocess.run([args.bin_dir / "pixeldit-export", "--config", args.config, "--checkpoint", args.checkpoint,
                    "-q", "-o", model], check=True, capture_output=True)
    prompts_file = tmp / "prompts.txt"
    prompts_file.write_text("".join(p + "\n" for p in prompts))
    raw = tmp / "x.npy"
    cmd = [args.bin_dir / "pixeldit-run", model, "--prompts-file", prompts_file, "--text-encoder", args.text_encoder,
           "--seed", str(args.seed), "--save-raw", raw, "-o", tmp / "grid.png", "--grid", "-q"]
    if args.cfg is not None:
        cmd += ["--cfg", str(args.cfg)]
    subprocess.run(cmd, check=True, capture_output=True)
    x = np.load(raw)
    return np.clip(np.round((x.transpose(0, 2, 3, 1) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def main():
    """Sample, classify, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", default=str(ROOT / "graphs" / "digits-t2i.safetensors"))
    parser.add_argument("--config", default=str(ROOT / "graphs" / "digits-t2i.json"))
    parser.add_argument("--text-encoder", required=True)
    parser.add_argument("--bin-dir", type=pathlib.Path, default=ROOT / "target" / "release")
    parser.add_argument("--seeds", type=int, default=4, help="images per phrasing")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cfg", type=float, help="CFG weight (default: the model's)")
    args = parser.parse_args()

    groups = {"train": phrasings(TRAIN), "held-out": phrasings(HELDOUT)}
    prompts, meta = [], []
    for group, table in groups.items():
        for digit, row in enumerate(table):
            for text in row:
                prompts += [text] * args.seeds
                meta += [(group, digit)] * args.seeds
    with tempfile.TemporaryDirectory() as tmp:
        predicted = classify(sample(args, pathlib.Path(tmp), prompts))
    print(f"{args.checkpoint}: {args.seeds} images per phrasing, cfg {args.cfg or 'default'}")
    print("digit | " + " | ".join(groups))
    totals = {g: [] for g in groups}
    for digit in range(10):
        cells = []
        for group in groups:
            hits = [p == digit for p, (g, d) in zip(predicted, meta) if g == group and d == digit]
            totals[group] += hits
            cells.append(f"{np.mean(hits):.2f}")
        print(f"{digit} | " + " | ".join(cells))
    print("all | " + " | ".join(f"{np.mean(totals[g]):.3f}" for g in groups))


if __name__ == "__main__":
    main()

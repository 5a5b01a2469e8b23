"""Train the small text-to-image PixelDiT ``digits-t2i`` on scikit-learn's digits, conditioned on prompts.

Model: the official T2I architecture (MM-DiT patch blocks, PiT pixel blocks) with the sizes of
graphs/digits-t2i.json, using the reference forward pass (reference/pixeldit_t2i_ref.py) under jax.numpy.
Text: the hidden states of the tiny Gemma-2 of tests/golden/gemma/model (frozen, never trained here) for prompts
such as "the digit seven" / "a 7", made by the official recipe through pixeldit's own tokenizer and exported encoder
(``pixeldit-run encode``, the same path that ``pixeldit-run --prompt`` takes): ``[300, 64]`` per prompt. Sixteen
phrasings per class are trained on (many contexts, so that the model keys on the digit's own token rather than on
whole sequences); the ``HELDOUT`` phrasings are kept for evaluation (reference/eval_digits_t2i.py).
Data: ``sklearn.datasets.load_digits`` (1797 images, 8x8) upscaled to 32x32, grey replicated to RGB, [-1, 1].

Objective (rectified flow in the T2I convention, spec 4.2): x_sigma = (1 - sigma) x0 + sigma eps, network time
1000 sigma, target v = eps - x0, sigma = sigmoid(N(0, 1)); 10% of the prompts are replaced by the negative prompt
"" (its 300-token encoding) for classifier-free guidance; MSE. AdamW with clipping, warm-up + cosine, EMA saved.

Writes graphs/digits-t2i.safetensors (EMA, float32, official key names) and reference/digits_t2i_loss.csv.

Usage: ``.venv/bin/python reference/train_t2i_digits.py --pixeldit-run target/release/pixeldit-run
--text-encoder gemma.onnx [--steps N] [--batch B]`` (export the encoder first with ``pixeldit-export --text-encoder
tests/golden/gemma/model -o gemma.onnx``).
"""

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from pixeldit_t2i_ref import forward, parameter_shapes
from text_embeddings import encode
from train_digits import init_params, jit_adamw_step, load_dataset, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN = ["the digit {w}", "a {d}", "{w}", "the number {w}", "a handwritten {w}", "digit {d}", "{d}", "number {w}",
         "a picture of the digit {w}", "the digit {d}", "a drawing of a {d}", "handwritten digit {w}",
         "an image of a {w}", "the numeral {d}", "a white {w} on black", "digit {w}"]
HELDOUT = ["an image of the digit {w}", "the number {d}"]


def phrasings(templates):
    """[10][len(templates)] prompts."""
    return [[t.format(w=WORDS[d], d=d) for t in templates] for d in range(10)]


def make_train_step(cfg, args, images, labels, text_table, negative):
    """The jitted step (params, adam m, s, ema, key, step) -> (..., loss)."""
    n_phr = text_table.shape[1]

    def loss_fn(params, key):
        k_idx, k_phr, k_t, k_eps, k_drop = jax.random.split(key, 5)
        idx = jax.random.randint(k_idx, (args.batch,), 0, images.shape[0])
        x0, y = images[idx], labels[idx]
        phr = jax.random.randint(k_phr, (args.batch,), 0, n_phr)
        text = text_table[y, phr]
        drop = jax.random.uniform(k_drop, (args.batch,)) < args.text_dropout
        text = jnp.where(drop[:, None, None], negative[None], text)
        sigma = jax.nn.sigmoid(jax.random.normal(k_t, (args.batch,)))
        eps = jax.random.normal(k_eps, x0.shape)
        sb = sigma[:, None, None, None]
        x_s = (1 - sb) * x0 + sb * eps
        v = forward(params, cfg, x_s, 1000.0 * sigma, text, xp=jnp, dtype=jnp.float32)
        return jnp.mean((v - (eps - x0)) ** 2)

    return jit_adamw_step(loss_fn, args)


def main():
    """Parse arguments, encode the prompts, train, save the EMA weights and the loss history."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "graphs" / "digits-t2i.json"))
    parser.add_argument("--out", default=str(ROOT / "graphs" / "digits-t2i.safetensors"))
    parser.add_argument("--loss-log", default=str(ROOT / "reference" / "digits_t2i_loss.csv"))
    parser.add_argument("--pixeldit-run", default=str(ROOT / "target" / "release" / "pixeldit-run"))
    parser.add_argument("--text-encoder", required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--final-lr-frac", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--text-dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phrasings", type=int, default=len(TRAIN),
                        help="train on the first N phrasings of TRAIN (the first stage of the committed run used 6)")
    parser.add_argument("--stop-at", type=int, help="stop after this many steps (the schedule still spans --steps)")
    parser.add_argument("--init", help="start from these weights (e.g. the committed EMA) instead of a fresh init")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--save-every", type=int, default=250)
    args = parser.parse_args()

    cfg = json.loads(pathlib.Path(args.config).read_text())
    images, labels = load_dataset(cfg["default_height"])
    table = phrasings(TRAIN[:args.phrasings])
    flat = [p for row in table for p in row]
    t0 = time.time()
    emb = encode(args.pixeldit_run, args.text_encoder, flat)
    text_table = emb.reshape(10, len(table[0]), *emb.shape[1:])
    negative = encode(args.pixeldit_run, args.text_encoder, [""], negative=True)[0]
    print(f"encoded {len(flat)} prompts + the negative in {time.time() - t0:.1f}s: {text_table.shape}", flush=True)

    start_params = init_params(parameter_shapes(cfg), args.seed, table_key="y_pos_embedding")
    if args.init:
        from checkpoint import load_checkpoint  # pylint: disable=import-outside-toplevel
        loaded = load_checkpoint(args.init)
        start_params = {k: np.asarray(loaded[k], dtype=np.float32) for k in start_params}
        print(f"starting from {args.init}", flush=True)
    step_fn = make_train_step(cfg, args, jnp.asarray(images), jnp.asarray(labels), jnp.asarray(text_table),
                              jnp.asarray(negative))
    train(step_fn, start_params, args, f"digits-t2i: {images.shape[0]} images")


if __name__ == "__main__":
    main()

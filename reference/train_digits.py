"""Train the small class-conditional PixelDiT ``digits`` preset on scikit-learn's bundled digits.

Model: the official PixelDiT architecture, with the sizes of graphs/digits.json,
using the reference forward pass (reference/pixeldit_ref.py) under jax.numpy.
Data: ``sklearn.datasets.load_digits`` (1797 images, 8x8, 10 classes), upscaled
bilinearly to 32x32, grey replicated to RGB, scaled to [-1, 1] (ink = +1).

Objective (official C2I trainer, spec 4.1, without REPA): rectified flow
x_t = t*x0 + (1-t)*eps, target v = x0 - eps, t = sigmoid(N(0,1)) (logit-normal,
time shift 1), class dropout 0.1 to the null class, MSE.  Optimiser AdamW
with global-norm gradient clipping, linear warm-up and cosine decay; an EMA of
the weights is kept and saved (official ``ema_denoiser`` convention).

Writes graphs/digits.safetensors (EMA weights, float32, official key names) and
the loss history reference/digits_loss.csv.  The EMA checkpoint is also written
every ``--save-every`` steps, so an interrupted run leaves usable weights.

Usage: ``.venv/bin/python reference/train_digits.py [--steps N] [--batch B] ...``
"""

import argparse
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from checkpoint import parameter_shapes, save_checkpoint
from pixeldit_ref import forward

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load_dataset(size):
    """Digits as float32 [N, 3, size, size] in [-1, 1] and int32 labels [N]."""
    digits = load_digits()
    images = np.stack([
        np.asarray(Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8)).resize((size, size), Image.BILINEAR))
        for img in digits.images
    ]).astype(np.float32) / 127.5 - 1.0
    images = np.repeat(images[:, None], 3, axis=1)
    return images, digits.target.astype(np.int32)


def init_params(shapes, seed, table_key="y_embedder.embedding_table.weight"):
    """Official-style initialisation (numpy, float32) of the ``(key, shape)`` list ``shapes``.

    Linear weights xavier-uniform with zero biases and unit norm weights (DiT
    basic init); then the official overrides: the condition table (``table_key``:
    the class table, or the T2I text position embedding) and timestep MLP
    weights N(0, 0.02), every adaLN and the final linear zero.
    """
    rng = np.random.default_rng(seed)
    params = {}
    for key, shape in shapes:
        if key.endswith(".bias") or "adaLN_modulation" in key or key.startswith("final_layer.linear"):
            value = np.zeros(shape)
        elif "norm" in key:
            value = np.ones(shape)
        elif key == table_key or key.startswith("t_embedder.mlp"):
            value = 0.02 * rng.standard_normal(shape)
        else:
            bound = math.sqrt(6.0 / (shape[0] + shape[1]))
            value = rng.uniform(-bound, bound, shape)
        params[key] = value.astype(np.float32)
    return params


def learning_rate(step, args):
    """Linear warm-up to ``args.lr``, then cosine decay to ``args.lr * args.final_lr_frac``."""
    warm = jnp.minimum(1.0, (step + 1) / args.warmup)
    progress = jnp.clip((step - args.warmup) / max(1, args.steps - args.warmup), 0.0, 1.0)
    cosine = args.final_lr_frac + (1 - args.final_lr_frac) * 0.5 * (1 + jnp.cos(math.pi * progress))
    return args.lr * warm * cosine


def make_train_step(cfg, args, images, labels):
    """Build the jitted step (params, adam state, ema, key, step) -> (..., loss)."""
    null_class = cfg["num_classes"]

    def loss_fn(params, key):
        k_idx, k_t, k_eps, k_drop = jax.random.split(key, 4)
        idx = jax.random.randint(k_idx, (args.batch,), 0, images.shape[0])
        x0, y = images[idx], labels[idx]
        t = jax.nn.sigmoid(jax.random.normal(k_t, (args.batch,)))
        eps = jax.random.normal(k_eps, x0.shape)
        y = jnp.where(jax.random.uniform(k_drop, (args.batch,)) < args.class_dropout, null_class, y)
        tb = t[:, None, None, None]
        x_t = tb * x0 + (1 - tb) * eps
        v = forward(params, cfg, x_t, t, y, xp=jnp, dtype=jnp.float32)
        return jnp.mean((v - (x0 - eps)) ** 2)

    return jit_adamw_step(loss_fn, args)


def jit_adamw_step(loss_fn, args):
    """The jitted training step for ``loss_fn(params, key)``: gradient, global-norm clipping, AdamW with the
    schedule of :func:`learning_rate`, and the EMA update. (params, m, s, ema, key, step) -> (..., loss)."""

    def step_fn(params, m, s, ema, key, step):
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        gnorm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
        clip = jnp.minimum(1.0, args.clip / (gnorm + 1e-6))
        lr = learning_rate(step, args)
        b1, b2 = 0.9, 0.999
        bc1, bc2 = 1 - b1 ** (step + 1), 1 - b2 ** (step + 1)
        new_params, new_m, new_s, new_ema = {}, {}, {}, {}
        decay = jnp.minimum(args.ema, (1.0 + step) / (10.0 + step))
        for k, p in params.items():
            g = grads[k] * clip
            new_m[k] = b1 * m[k] + (1 - b1) * g
            new_s[k] = b2 * s[k] + (1 - b2) * g * g
            update = (new_m[k] / bc1) / (jnp.sqrt(new_s[k] / bc2) + 1e-8)
            new_params[k] = p - lr * (update + args.weight_decay * p)
            new_ema[k] = decay * ema[k] + (1 - decay) * new_params[k]
        return new_params, new_m, new_s, new_ema, loss

    return jax.jit(step_fn, donate_argnums=(0, 1, 2, 3))


def main():
    """Parse arguments, train, and save the EMA weights and loss history."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "graphs" / "digits.json"))
    parser.add_argument("--out", default=str(ROOT / "graphs" / "digits.safetensors"))
    parser.add_argument("--loss-log", default=str(ROOT / "reference" / "digits_loss.csv"))
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--final-lr-frac", type=float, default=0.1)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--class-dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--save-every", type=int, default=1000)
    args = parser.parse_args()

    cfg = json.loads(pathlib.Path(args.config).read_text())
    images, labels = load_dataset(cfg["default_height"])
    step_fn = make_train_step(cfg, args, jnp.asarray(images), jnp.asarray(labels))
    train(step_fn, init_params(parameter_shapes(cfg), args.seed), args, f"digits: {images.shape[0]} images")


def train(step_fn, start_params, args, what):
    """Runs ``args.steps`` steps (fewer with ``args.stop_at``) of ``step_fn`` (:func:`jit_adamw_step`) from ``start_params``, logging the mean
    loss every ``args.log_every`` steps and writing the EMA weights (``args.out``) and the loss history
    (``args.loss_log``) every ``args.save_every`` steps and at the end."""
    params = {k: jnp.asarray(v) for k, v in start_params.items()}
    m = {k: jnp.zeros_like(v) for k, v in params.items()}
    s = {k: jnp.zeros_like(v) for k, v in params.items()}
    ema = {k: jnp.array(v) for k, v in params.items()}
    key = jax.random.PRNGKey(args.seed)
    n_params = sum(int(v.size) for v in params.values())
    print(f"{what}, {n_params:,} parameters, {args.steps} steps of batch {args.batch}", flush=True)

    history, window = [], []
    start = time.time()
    last = min(args.steps, getattr(args, "stop_at", None) or args.steps)
    for step in range(last):
        key, sub = jax.random.split(key)
        params, m, s, ema, loss = step_fn(params, m, s, ema, sub, jnp.asarray(step, jnp.float32))
        window.append(loss)
        if (step + 1) % args.log_every == 0:
            mean = float(np.mean([float(v) for v in window]))
            window = []
            elapsed = time.time() - start
            history.append((step + 1, mean, elapsed))
            print(f"step {step + 1:6d}  loss {mean:.4f}  lr {float(learning_rate(step, args)):.2e}  "
                  f"{elapsed:7.1f}s", flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == last:
            save_checkpoint({k: np.asarray(v) for k, v in ema.items()}, args.out)
            pathlib.Path(args.loss_log).write_text(
                "step,loss,elapsed_s\n" + "".join(f"{a},{b:.5f},{c:.1f}\n" for a, b, c in history))
    print(f"done in {time.time() - start:.1f}s, EMA weights in {args.out}", flush=True)


if __name__ == "__main__":
    main()

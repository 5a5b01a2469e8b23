#!/usr/bin/env python3
"""Writes the checkpoint-format fixtures of tests/golden/checkpoints/ (see the README there).

Two stages, run by tools/gen_checkpoint_fixtures.sh:

* ``plain`` (project venv: numpy, safetensors, ml_dtypes): the reference weights as plain float32
  safetensors without prefixes, ``c2i_nano.safetensors`` for ``c2i-nano.json`` (random, seed 0, rounded to
  bfloat16-exact values). The T2I weights are the golden ``tests/golden/t2i/t2i_tiny.safetensors``.
* ``torch`` (a venv with the PyPI ``torch`` wheel, see the .sh): the same tensors in the official
  layouts, written by PyTorch's own ``torch.save``:
  - ``c2i_nano_lightning.ckpt``: a PyTorch-Lightning training checkpoint (``state_dict`` with
    ``denoiser.*`` (different values), ``ema_denoiser.*``, ``diffusion_trainer.proj.*``, plus
    ``optimizer_states`` from a real AdamW step, ``lr_schedulers``, ``callbacks``, ``loops`` and
    ``hyper_parameters`` holding instances of arbitrary classes). Some EMA tensors are strided views,
    views at a storage offset, or share one storage, as ``torch.save`` allows;
  - ``t2i_tiny.pth``: ``{"state_dict": {"core.*", "_repa_projector.*"}}`` (SANA-style), mostly float32 with a
    few bfloat16 and float16 tensors (values are exact in both);
  - ``t2i_tiny_bf16.safetensors``: the Comfy-Org style bf16 repack (``core.`` prefix), via
    ``safetensors.torch.save_file``;
  - ``legacy.pt``: a tiny state dict in the pre-1.6 format (``_use_new_zipfile_serialization=False``), for the
    error message test.

Usage: tools/gen_checkpoint_fixtures.sh   (or: python tools/gen_checkpoint_fixtures.py plain|torch)
"""

import collections
import functools
import json
import pathlib
import struct
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "checkpoints"
T2I_PLAIN = ROOT / "tests" / "golden" / "t2i" / "t2i_tiny.safetensors"


def plain():
    """Stage 1: c2i_nano.safetensors from the reference checkpoint helpers."""
    import ml_dtypes
    from safetensors.numpy import save_file

    sys.path.insert(0, str(ROOT / "reference"))
    from checkpoint import make_random_checkpoint

    cfg = json.loads((OUT / "c2i-nano.json").read_text())
    params = make_random_checkpoint(cfg, 0)
    params = {k: v.astype(ml_dtypes.bfloat16).astype(np.float32) for k, v in params.items()}
    save_file(params, str(OUT / "c2i_nano.safetensors"))


def read_f32_safetensors(path):
    """Minimal float32 safetensors reader (the torch venv needs no other package)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    out = collections.OrderedDict()
    for key, info in header.items():
        if key == "__metadata__":
            continue
        assert info["dtype"] == "F32", (key, info["dtype"])
        a, b = info["data_offsets"]
        out[key] = np.frombuffer(data[8 + n + a:8 + n + b], dtype="<f4").reshape(info["shape"]).copy()
    return out


class DiffusionConfig:
    """Stands in for the project's own config classes pickled into Lightning hyper-parameters."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def with_metadata(sd, prefixes):
    """Attach ``_metadata`` as ``nn.Module.state_dict()`` does (pickled through BUILD)."""
    sd._metadata = collections.OrderedDict((p, {"version": 1}) for p in [""] + prefixes)
    return sd


def lightning_ckpt(torch, params):
    """The Lightning layout of spec section 3.1, with the EMA copy holding ``params``."""
    ema = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in params.items())
    # Views torch.save stores with their whole storage: a transposed (strided) tensor, one at an offset, and two
    # tensors sharing one storage. Values are unchanged.
    w = ema["final_layer.linear.weight"]
    ema["final_layer.linear.weight"] = w.t().contiguous().t()
    b = ema["pixel_embedder.proj.bias"]
    ema["pixel_embedder.proj.bias"] = torch.cat([torch.full((5,), 7.0), b, torch.full((7,), -7.0)])[5:5 + b.numel()]
    b0, b2 = ema["t_embedder.mlp.0.bias"], ema["t_embedder.mlp.2.bias"]
    shared = torch.cat([b0, b2])
    ema["t_embedder.mlp.0.bias"], ema["t_embedder.mlp.2.bias"] = shared[:b0.numel()], shared[b0.numel():]
    assert not ema["final_layer.linear.weight"].is_contiguous()

    gen = torch.Generator().manual_seed(1)
    sd = collections.OrderedDict()
    for k, v in params.items():  # the non-EMA training copy: same keys, other values
        sd["denoiser." + k] = torch.randn(v.shape, generator=gen)
    for k, v in ema.items():
        sd["ema_denoiser." + k] = v
    d = params["s_embedder.proj.weight"].shape[0]
    for i, (o, n) in enumerate([(64, d), (64, 64), (24, 64)]):  # REPA projector (training only)
        sd[f"diffusion_trainer.proj.0.{2 * i}.weight"] = torch.randn(o, n, generator=gen)
        sd[f"diffusion_trainer.proj.0.{2 * i}.bias"] = torch.randn(o, generator=gen)
    sd = with_metadata(sd, ["denoiser", "ema_denoiser", "diffusion_trainer"])

    # A real AdamW step over a few parameters gives the optimizer state layout (step, exp_avg, exp_avg_sq).
    ps = [torch.nn.Parameter(sd["denoiser." + k].clone()) for k in list(params)[:3]]
    opt = torch.optim.AdamW(ps, lr=1e-4, weight_decay=0.0)
    for p in ps:  # the gradient of sum(p^2), set by hand (the autograd engine probes CUDA devices)
        p.grad = 2.0 * p.detach()
    opt.step()
    return {
        "epoch": 319,
        "global_step": 400000,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": sd,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_loop.state_dict": {"_batches_that_stepped": 400000},
                               "epoch_progress": {"total": {"ready": 320, "completed": 319}}}},
        "callbacks": {
            "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 10000}": {
                "monitor": None, "best_model_score": None, "best_model_path": "",
                "current_score": torch.tensor(0.25), "dirpath": "/ckpt/pixeldit", "best_k_models": {},
                "kth_value": torch.tensor(float("inf")), "last_model_path": "",
            },
        },
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "main_config": DiffusionConfig(lr=1e-4, ema=0.9999, size=torch.Size([256, 256]), dtype=torch.bfloat16,
                                           path=pathlib.PurePosixPath("/data/imagenet"), seed=np.int64(1600)),
            "optimizer": functools.partial(torch.optim.AdamW, lr=1e-4, betas=(0.9, 0.95)),
            "classes": {1, 2, 3},
        },
    }


def pth_layout(torch, params):
    """SANA-style ``{"state_dict": {core.*, _repa_projector.*}}`` with a few bf16/fp16 tensors."""
    sd = collections.OrderedDict()
    for k, v in params.items():
        t = torch.from_numpy(v)
        if k.endswith("norm_x1.weight") or k == "y_pos_embedding":
            t = t.to(torch.bfloat16)
        elif k.startswith("t_embedder.mlp.2.") and torch.equal(t.half().float(), t):
            t = t.half()
        sd["core." + k] = t
    gen = torch.Generator().manual_seed(2)
    d = params["s_embedder.proj.weight"].shape[0]
    for i, (o, n) in enumerate([(64, d), (64, 64), (24, 64)]):
        sd[f"_repa_projector.{2 * i}.weight"] = torch.randn(o, n, generator=gen)
        sd[f"_repa_projector.{2 * i}.bias"] = torch.randn(o, generator=gen)
    return {"state_dict": with_metadata(sd, ["core", "_repa_projector"])}


def torch_stage():
    """Stage 2: the official layouts through torch.save."""
    # tools/ holds a `triton` directory that would shadow the (absent) triton package torch probes for.
    here = pathlib.Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != here]
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    c2i = read_f32_safetensors(OUT / "c2i_nano.safetensors")
    torch.save(lightning_ckpt(torch, c2i), OUT / "c2i_nano_lightning.ckpt")
    t2i = read_f32_safetensors(T2I_PLAIN)
    torch.save(pth_layout(torch, t2i), OUT / "t2i_tiny.pth")
    bf16 = {"core." + k: torch.from_numpy(v).to(torch.bfloat16) for k, v in t2i.items()}
    assert all(torch.equal(bf16["core." + k].float(), torch.from_numpy(v)) for k, v in t2i.items())
    save_file(bf16, str(OUT / "t2i_tiny_bf16.safetensors"))
    legacy = collections.OrderedDict(w=torch.ones(2, 2))
    torch.save(legacy, OUT / "legacy.pt", _use_new_zipfile_serialization=False)
    print("torch", torch.__version__, "wrote", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    {"plain": plain, "torch": torch_stage}[sys.argv[1]]()

#!/usr/bin/env python3
"""Checks exported Gemma-2 encoders against transformers' outputs in tests/golden/gemma/ (ONNX Runtime, CPU).

    GEMMA_ONNX_OUT=/tmp/g cargo test -p pixeldit-exporter --test gemma
    .venv/bin/python reference/check_gemma_onnx.py /tmp/g

* `gemma-tiny-s300.onnx` on `hidden.safetensors` (right-padded batch, every position incl. padding);
* the official recipe (`recipe.safetensors`): prompts through `gemma-tiny-s579.onnx`, negatives through the s300
  model, positions 0 and the last 299 (prompts) or all 300 (negatives) against the recipe's `[300, D]` text.

Fails (exit 1) unless every relative L2 error is below 1e-4.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests/golden/gemma")
TOL = 1e-4


def rel_l2(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def main():
    onnx_dir = sys.argv[1]
    sess = {s: ort.InferenceSession(os.path.join(onnx_dir, f"gemma-tiny-s{s}.onnx"), providers=["CPUExecutionProvider"])
            for s in (300, 579)}
    ok = True

    g = load_file(os.path.join(GOLDEN, "hidden.safetensors"))
    (h,) = sess[300].run(None, {"input_ids": g["input_ids"], "attention_mask": g["attention_mask"]})
    for i in range(h.shape[0]):
        e = rel_l2(h[i], g["last_hidden_state"][i])
        pad = g["attention_mask"][i] == 0
        ep = rel_l2(h[i][pad], g["last_hidden_state"][i][pad]) if pad.any() else 0.0
        print(f"hidden row {i}: rel L2 {e:.2e} (padding positions {ep:.2e}, {int(pad.sum())} of them)")
        ok &= e < TOL and ep < TOL

    r = load_file(os.path.join(GOLDEN, "recipe.safetensors"))
    meta = json.load(open(os.path.join(GOLDEN, "recipe.json")))
    for c in meta["cases"]:
        n = c["name"]
        ids, mask = r[f"{n}.input_ids"][None], r[f"{n}.attention_mask"][None]
        (h,) = sess[ids.shape[1]].run(None, {"input_ids": ids, "attention_mask": mask})
        L = ids.shape[1]
        keep = [0] + list(range(L - 299, L)) if c["kind"] == "prompt" else list(range(300))
        e = rel_l2(h[0, keep], r[f"{n}.text"])
        print(f"recipe {n} ({c['kind']}, L={L}, truncated={c['truncated']}): rel L2 {e:.2e}")
        ok &= e < TOL
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

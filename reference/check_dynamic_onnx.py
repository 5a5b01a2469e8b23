"""Run a dynamic-size export (``pixeldit-export --dynamic-size``) in Python onnxruntime at several image sizes
and compare each forward with the float64 reference (``pixeldit_ref.forward``, or ``pixeldit_t2i_ref.forward``
for a text-to-image preset, fed random text embeddings).

Usage: ``.venv/bin/python reference/check_dynamic_onnx.py MODEL.onnx WEIGHTS.safetensors PRESET [HxW ...]``
(default sizes 32x48 48x32 64x64; PRESET names graphs/<PRESET>.json). Prints one line per size with the relative
L2 error and exits 1 when one is above 1e-4 (the tolerance of the Rust forward test) or when ``x``/``v`` do not
have symbolic height and width.
"""

import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort

from checkpoint import load_checkpoint
import pixeldit_ref
import pixeldit_t2i_ref

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOLERANCE = 1e-4


def main(argv):
    model, weights, preset = argv[1:4]
    sizes = [tuple(int(v) for v in s.split("x")) for s in (argv[4:] or ["32x48", "48x32", "64x64"])]
    cfg = json.loads((ROOT / "graphs" / f"{preset}.json").read_text())
    params = load_checkpoint(weights)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    shapes = {i.name: i.shape for i in sess.get_inputs() + sess.get_outputs()}
    ok = True
    for name in ("x", "v"):
        if not all(isinstance(d, str) for d in (shapes[name][2], shapes[name][3])):
            print(f"{name} has a fixed size {shapes[name]}: not a dynamic-size export")
            ok = False
    rng = np.random.default_rng(20)
    for height, width in sizes:
        x = rng.standard_normal((2, cfg["in_channels"], height, width)).astype(np.float32)
        if cfg.get("text"):
            text = cfg["text"]
            t = np.array([250.0, 750.0], dtype=np.float32)
            emb = rng.standard_normal((2, text["max_length"], text["embed_dim"])).astype(np.float32)
            (v,) = sess.run(["v"], {"x": x, "t": t, "text": emb})
            ref = pixeldit_t2i_ref.forward(params, cfg, x.astype(np.float64), t.astype(np.float64), emb)
        else:
            t = np.array([0.25, 0.75], dtype=np.float32)
            y = np.array([1, cfg["num_classes"]], dtype=np.int64)
            (v,) = sess.run(["v"], {"x": x, "t": t, "y": y})
            ref = pixeldit_ref.forward(params, cfg, x.astype(np.float64), t.astype(np.float64), y)
        err = float(np.linalg.norm(v - ref) / np.linalg.norm(ref))
        good = v.shape == ref.shape and err < TOLERANCE
        ok &= good
        print(f"{height}x{width}: v {list(v.shape)}, relative L2 {err:.2e} {'ok' if good else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

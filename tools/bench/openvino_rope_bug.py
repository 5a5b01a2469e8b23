#!/usr/bin/env python3
"""OpenVINO 2026.4 CPU computes wrong attention from an adjacent-pair RoPE applied heads-first when S == H.

Minimal graphs of the decomposed attention the exporter wrote until 2026-12-04: qkv [B,S,3*H*D] -> q, k, v
[B,H,S,D]; RoPE on q and k as reshape [B,H,S,D/2,2] -> split -> (a cos - b sin, a sin + b cos) -> concat ->
reshape, with tables [S,D/2,1]; softmax(q k^T * scale) v; heads merged. `heads_first` is that form,
`tokens_first` rotates [B,S,H,D] with tables [S,1,D/2,1] and transposes afterwards (the exporter's form since).
Both are the same math; numpy is the reference. On this project's machines OpenVINO (static shapes, f32 inference
precision) gets heads_first wrong exactly when the token count equals the head count (e.g. the digits model at
32x32: 4 tokens, 4 heads), and tokens_first right at every shape:

    .venv/bin/python tools/bench/openvino_rope_bug.py      # needs .cache/openvino-venv (scripts/setup.sh)
"""
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
OV_PYTHON = ROOT / ".cache" / "openvino-venv" / "bin" / "python"
SHAPES = [(2, 4, 4, 16), (2, 4, 5, 16), (2, 8, 8, 16), (2, 12, 12, 64), (2, 12, 16, 64)]


def build(path, b, h, s, d, form):
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    tokens_first = form == "tokens_first"
    rng = np.random.default_rng(1)
    tab = (s, 1, d // 2, 1) if tokens_first else (s, d // 2, 1)
    cos, sin = rng.random(tab).astype(np.float32), rng.random(tab).astype(np.float32)
    inits = [
        nh.from_array(np.array(d ** -0.5, np.float32), "scale"),
        nh.from_array(np.array([-1, s, 3, h, d], np.int64), "qkv_shape"),
        nh.from_array(np.array([1, 1, 1], np.int64), "thirds"),
        nh.from_array(np.array([1, 1], np.int64), "halves"),
        nh.from_array(np.array([-1, s, h, d], np.int64), "bshd"),
        nh.from_array(np.array([-1, h, s, d], np.int64), "bhsd"),
        nh.from_array(np.array([-1, s, h, d // 2, 2] if tokens_first else [-1, h, s, d // 2, 2], np.int64), "pairs"),
        nh.from_array(np.array([-1, s, h * d], np.int64), "merged"),
        nh.from_array(cos, "cos"),
        nh.from_array(sin, "sin"),
    ]
    n = oh.make_node
    nodes = [n("Reshape", ["x", "qkv_shape"], ["r"]), n("Split", ["r", "thirds"], ["q0", "k0", "v0"], axis=2)]
    for t in "qkv":
        nodes.append(n("Reshape", [t + "0", "bshd"], [t + "1"]))
    nodes.append(n("Transpose", ["v1"], ["v"], perm=[0, 2, 1, 3]))
    for t in "qk":
        src = t + "1"
        if not tokens_first:
            nodes.append(n("Transpose", [src], [t + "h"], perm=[0, 2, 1, 3]))
            src = t + "h"
        nodes += [
            n("Reshape", [src, "pairs"], [t + "p"]),
            n("Split", [t + "p", "halves"], [t + "a", t + "b"], axis=-1),
            n("Mul", [t + "a", "cos"], [t + "ac"]), n("Mul", [t + "b", "sin"], [t + "bs"]),
            n("Sub", [t + "ac", t + "bs"], [t + "re"]),
            n("Mul", [t + "a", "sin"], [t + "as"]), n("Mul", [t + "b", "cos"], [t + "bc"]),
            n("Add", [t + "as", t + "bc"], [t + "im"]),
            n("Concat", [t + "re", t + "im"], [t + "c"], axis=-1),
        ]
        if tokens_first:
            nodes += [n("Reshape", [t + "c", "bshd"], [t + "r"]), n("Transpose", [t + "r"], [t], perm=[0, 2, 1, 3])]
        else:
            nodes.append(n("Reshape", [t + "c", "bhsd"], [t]))
    nodes += [
        n("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]), n("MatMul", ["q", "kt"], ["sc"]),
        n("Mul", ["sc", "scale"], ["sc2"]), n("Softmax", ["sc2"], ["p"], axis=-1),
        n("MatMul", ["p", "v"], ["a"]), n("Transpose", ["a"], ["at"], perm=[0, 2, 1, 3]),
        n("Reshape", ["at", "merged"], ["o"]),
    ]
    graph = oh.make_graph(nodes, form, [oh.make_tensor_value_info("x", T.FLOAT, ["b", s, 3 * h * d])],
                          [oh.make_tensor_value_info("o", T.FLOAT, None)], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return cos, sin


def reference(x, b, h, s, d, cos, sin):
    r = x.reshape(b, s, 3, h, d)
    q, k, v = (r[:, :, i] for i in range(3))  # [B,S,H,D]
    cos = cos.reshape(s, 1, d // 2)
    sin = sin.reshape(s, 1, d // 2)

    def rope(t):
        a, bb = t[..., 0::2], t[..., 1::2]
        return np.stack([a * cos - bb * sin, a * sin + bb * cos], axis=-1).reshape(t.shape)  # adjacent pairs

    q, k, v = (np.swapaxes(t, 1, 2) for t in (rope(q), rope(k), v))
    sc = q @ np.swapaxes(k, -1, -2) * d ** -0.5
    p = np.exp(sc - sc.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.swapaxes(p @ v, 1, 2).reshape(b, s, h * d)


OV_WORKER = """
import json, sys, numpy as np, openvino as ov
path, x, shape = sys.argv[1], np.load(sys.argv[2]), json.loads(sys.argv[3])
core = ov.Core(); m = core.read_model(path); m.reshape({"x": shape})
out = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})({"x": x})[0]
np.save(sys.argv[4], np.asarray(out))
print(ov.get_version())
"""


def main():
    if not OV_PYTHON.exists():
        sys.exit(f"{OV_PYTHON} missing: run scripts/setup.sh")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        worker = tmp / "worker.py"
        worker.write_text(OV_WORKER)
        version = None
        print("| B, H, S, D | heads_first rel. L2 | tokens_first rel. L2 |\n|---|---|---|")
        for b, h, s, d in SHAPES:
            x = np.random.default_rng(0).standard_normal((b, s, 3 * h * d)).astype(np.float32)
            np.save(tmp / "x.npy", x)
            errs = []
            for form in ("heads_first", "tokens_first"):
                path = tmp / f"{form}.onnx"
                cos, sin = build(path, b, h, s, d, form)
                ref = reference(x, b, h, s, d, cos, sin)
                version = subprocess.run([str(OV_PYTHON), str(worker), str(path), str(tmp / "x.npy"),
                                          json.dumps([b, s, 3 * h * d]), str(tmp / "o.npy")],
                                         check=True, capture_output=True, text=True).stdout.strip()
                o = np.load(tmp / "o.npy")
                errs.append(float(np.linalg.norm(o - ref) / np.linalg.norm(ref)))
            print(f"| {b}, {h}, {s}, {d} | {errs[0]:.1e} | {errs[1]:.1e} |")
        print(f"\nOpenVINO {version}, CPU plugin, f32 inference precision")


if __name__ == "__main__":
    main()

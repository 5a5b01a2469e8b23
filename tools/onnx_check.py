#!/usr/bin/env python3
"""Checks exported PixelDiT ONNX files with the official `onnx` checker and ONNX Runtime (Python).

Usage:
  onnx_check.py check MODEL.onnx [...]          checker(full_check=True) + ORT load (skipped for custom-op models)
  onnx_check.py params MODEL.onnx               prints the parameter count of the weight initializers
  onnx_check.py forward MODEL.onnx CASE [CASES] runs a case of tests/golden/forward/cases.safetensors (or of the
                                                CASES file, e.g. tests/golden/t2i/cases.safetensors) through ORT,
                                                feeding every graph input from `<case>.<input name>`, and prints
                                                the relative L2 error vs the reference output `<case>.v`

Used by the exporter's integration tests; exits non-zero on any failure.
"""
import sys

import numpy as np
import onnx


def load_meta(model):
    return {p.key: p.value for p in model.metadata_props}


def uses_custom_domain(model):
    return any(n.domain == "pixeldit" for n in model.graph.node)


def check(paths):
    import onnxruntime as ort

    for path in paths:
        # Path-based checking handles models with external data past 2 GB.
        onnx.checker.check_model(path, full_check=True)
        model = onnx.load(path, load_external_data=False)
        if "pixeldit.metadata" not in load_meta(model):
            raise SystemExit(f"{path}: no pixeldit.metadata")
        if uses_custom_domain(model):
            print(f"{path}: checker OK; ORT load skipped (pixeldit custom op lives in the Rust runtime)")
            continue
        # FLOAT8 Q/DQ: ORT's QDQ propagation would move float8 tensors through Reshape/Transpose, which have no
        # float8 kernels; the Rust runtime disables it the same way.
        fp8 = any(t.data_type in (17, 18, 19, 20) for t in model.graph.initializer)
        disabled = ["QDQPropagationTransformer"] if fp8 else None
        ort.InferenceSession(path, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        print(f"{path}: checker OK, ORT load OK")


def params(path):
    model = onnx.load(path, load_external_data=False)
    total = 0
    for t in model.graph.initializer:
        if t.name.startswith("const/") or t.name.startswith("pixeldit."):
            continue  # derived constants: shapes, RoPE tables, positional embeddings
        total += int(np.prod(t.dims)) if len(t.dims) else 1
    print(total)


def forward(path, case, cases_file="tests/golden/forward/cases.safetensors"):
    import onnxruntime as ort
    from safetensors.numpy import load_file

    cases = load_file(cases_file)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    feeds = {i.name: cases[f"{case}.{i.name}"] for i in sess.get_inputs()}
    out = sess.run(None, feeds)[0]
    ref = cases[f"{case}.v"]
    print(float(np.linalg.norm(out - ref) / np.linalg.norm(ref)))


def main(argv):
    if len(argv) < 3:
        raise SystemExit(__doc__)
    cmd = argv[1]
    if cmd == "check":
        check(argv[2:])
    elif cmd == "params":
        params(argv[2])
    elif cmd == "forward":
        forward(*argv[2:5])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)

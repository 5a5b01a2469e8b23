"""Per-op-type and per-node kernel time of one model on ONNX Runtime CPU (ORT's own profiler): blocks are folded
together (`patch_blocks.*.attn.qkv/Gemm_0`), times are per run.

    .venv/bin/python tools/bench/ort_profile.py .cache/bench/B-256-int8-decomposed-ovb.onnx   # Python onnxruntime,
        # 4 runs of a batch-2 C2I forward at 256x256 (standard-op graphs only)
    PIXELDIT_ORT_PROFILE=/tmp/prof target/release/pixeldit-run bench MODEL --backend ort ...
    .venv/bin/python tools/bench/ort_profile.py --json /tmp/prof_*.json   # pixeldit-run's session (custom ops too)
"""
import argparse, collections, json, re, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("model", nargs="?")
ap.add_argument("--json", help="summarise this profile file instead of running the model")
ap.add_argument("--top", type=int, default=30)
a = ap.parse_args()
if a.json:
    path = a.json
else:
    import numpy as np, onnxruntime as ort
    so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.enable_profiling = True
    so.profile_file_prefix = tempfile.gettempdir() + "/pixeldit_ortprof"
    s = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"x": rng.standard_normal((2, 3, 256, 256)).astype(np.float32), "t": np.array([0.3, 0.3], np.float32),
            "y": np.array([1, 1000], np.int64)}
    for _ in range(4):
        s.run(None, feed)
    path = s.end_profiling()
ev = json.load(open(path))
by_op, by_node, runs, run_ms = collections.Counter(), collections.Counter(), 0, []
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        op = e["args"]["op_name"]
        by_op[op] += e["dur"]
        by_node[re.sub(r"\.\d+\.", ".*.", e["name"][:-12]), op] += e["dur"]
    if e.get("cat") == "Session" and e["name"] == "model_run":
        runs += 1
        run_ms.append(e["dur"] / 1e3)
runs = max(runs, 1)
tot = sum(by_op.values())
print(f"{path}: {runs} runs, total kernel time {tot / 1e3 / runs:.1f} ms per run")
# Each run's wall time: the first run of a session pays one-time costs (arena growth, first touch of its buffers).
print("runs (ms): " + ", ".join(f"{v:.0f}" for v in run_ms))
for k, v in by_op.most_common(12):
    print(f"{k:<24} {v / 1e3 / runs:7.1f} ms/run {100 * v / tot:5.1f}%")
print("-- top nodes (blocks folded)")
for (k, op), v in by_node.most_common(a.top):
    print(f"{k[:60]:<60} {op:<16} {v / 1e3 / runs:7.1f} ms/run {100 * v / tot:5.1f}%")

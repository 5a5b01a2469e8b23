"""Per-op-type and per-node kernel time of one model on Python onnxruntime CPU (ORT's own profiler), averaged over
4 runs of a batch-2 C2I forward at the model's size (256x256 inputs here: pass a 256 export).

    .venv/bin/python tools/bench/ort_profile.py .cache/bench/B-256-decomposed.onnx   # after tools/bench/run.sh
"""
import onnxruntime as ort, numpy as np, json, collections, sys
so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.enable_profiling = True
so.profile_file_prefix = str(__import__("tempfile").gettempdir()) + "/pixeldit_ortprof"
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feed = {"x": rng.standard_normal((2,3,256,256)).astype(np.float32), "t": np.array([0.3,0.3],np.float32), "y": np.array([1,1000],np.int64)}
for _ in range(4): s.run(None, feed)
f = s.end_profiling()
ev = json.load(open(f))
by_op = collections.Counter(); by_node = collections.Counter()
runs = 0
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
        by_op[e["args"]["op_name"]] += e["dur"]; by_node[e["name"][:-12]] += e["dur"]
    if e.get("cat") == "Session" and e["name"] == "model_run": runs += 1
tot = sum(by_op.values())
print("runs", runs, "total kernel ms per run %.1f" % (tot/1e3/runs))
for k, v in by_op.most_common(12): print("%-24s %7.1f ms/run %5.1f%%" % (k, v/1e3/runs, 100*v/tot))
print("-- top nodes")
for k, v in by_node.most_common(12): print("%-60s %7.1f ms/run" % (k[:60], v/1e3/runs))

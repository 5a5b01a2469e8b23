"""CPU comparison of PixelDiT forward implementations on the same weights and ONNX files.

Run through tools/bench/run.sh. For each preset: a random checkpoint (reference/checkpoint.py, official key names)
is written once, exported twice with `pixeldit-export --checkpoint` (custom attention for the Rust runtime,
decomposed for Python onnxruntime), then every implementation runs in its own child process (so the peak RSS
from wait4 is its own): pixeldit-run ORT CPU, pixeldit-run tract, Python onnxruntime, PyTorch eager. Latency is
the median of --runs forwards after --warmup. GFLOP/s uses the spec's FLOP convention (pixeldit-architecture.md
section 6). A section is inserted into BENCHMARKS.md.

Worker modes (internal): `compare.py worker {ortpy,torch,peak} ...` print one JSON line.
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "bench"
RAW_MARKER = "## Raw `pixeldit-run bench` rows"
RAW_HEADER = (RAW_MARKER + "\n\nPer-forward latency of exported PixelDiT models, one row per backend, appended by "
              "`pixeldit-run bench` (warm-up runs first, then median / min / max over the timed runs).\n\n"
              "| date | machine | command | model | precision | backend | batch | median ms | min ms | max ms |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n")


def gflops(cfg, height, width):
    """Forward GFLOPs at batch 1 by the spec's section-6 convention (Linear 2*n*in*out, attention core 4*S^2*C)."""
    d, p = cfg["hidden_size"], cfg["patch_size"]
    seq = (height // p) * (width // p)
    p2, dp, a = p * p, cfg["pixel_hidden_size"], cfg["pixel_attn_hidden_size"]
    f = 2 * (4 * d) // 3
    hw = height * width
    patch = 2 * seq * (4 * d * d + 3 * d * f) + 4 * seq * seq * d + 2 * 6 * d * d
    pixel = (2 * seq * d * 6 * p2 * dp + 2 * 2 * seq * p2 * dp * a + 2 * seq * 4 * a * a + 4 * seq * seq * a
             + 2 * hw * 2 * dp * cfg["pixel_mlp_ratio"] * dp)
    emb = (2 * seq * cfg["in_channels"] * p2 * d + 2 * hw * cfg["in_channels"] * dp
           + 2 * cfg["timestep_freq_dim"] * d + 2 * d * d + 2 * hw * dp * cfg["in_channels"])
    return (cfg["patch_depth"] * patch + cfg["pixel_depth"] * pixel + emb) / 1e9


def inputs(cfg, height, width, batch):
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cfg["in_channels"], height, width)).astype(np.float32)
    t = np.full((batch,), 0.5, np.float32)
    y = (np.arange(batch) % cfg["num_classes"]).astype(np.int64)
    return x, t, y


def timed(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(runs):
        s = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - s) * 1e3)
    return ms


def worker(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("--model")
    ap.add_argument("--ckpt")
    ap.add_argument("--preset")
    ap.add_argument("--size", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--runs", type=int)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--save")
    a = ap.parse_args(argv)
    import numpy as np
    res = {}
    if a.mode == "peak":
        # sgemm peak: numpy (OpenBLAS) and, when available, torch (MKL), n = 4096, best of 5 (ONNX Runtime's: "ortpeak").
        n = 4096
        m = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        ms = timed(lambda: m @ m, 1, 5)
        res["numpy_sgemm_gflops"] = 2 * n**3 / min(ms) / 1e6
        try:
            sys.setdlopenflags(os.RTLD_LAZY | os.RTLD_GLOBAL)
            import torch
            torch.set_num_threads(a.threads)
            tm = torch.from_numpy(m)
            ms = timed(lambda: tm @ tm, 1, 5)
            res["torch_sgemm_gflops"] = 2 * n**3 / min(ms) / 1e6
        except ImportError:
            pass
        print(json.dumps(res))
        return
    if a.mode == "ortpeak":
        # sgemm peak of ONNX Runtime's own GEMM (MLAS): one n = 4096 MatMul, best of 5.
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
        n = 4096
        g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "sgemm",
                              [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        m = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
        ms = timed(lambda: sess.run(None, {"a": m, "b": m}), 1, 5)
        print(json.dumps({"onnxruntime_sgemm_gflops": 2 * n**3 / min(ms) / 1e6}))
        return
    cfg = json.loads((ROOT / "graphs" / f"{a.preset}.json").read_text())
    x, t, y = inputs(cfg, a.size, a.size, a.batch)
    if a.mode == "ortpy":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
        feed = {"x": x, "t": t, "y": y}
        out = sess.run(None, feed)[0]
        ms = timed(lambda: sess.run(None, feed), a.warmup, a.runs)
        res["version"] = f"onnxruntime {ort.__version__}"
    elif a.mode == "torch":
        sys.setdlopenflags(os.RTLD_LAZY | os.RTLD_GLOBAL)
        import torch
        sys.path.insert(0, str(ROOT / "tools" / "bench"))
        sys.path.insert(0, str(ROOT / "reference"))
        from checkpoint import load_checkpoint  # noqa: E402
        from torch_pixeldit import PixelDiT  # noqa: E402
        torch.set_num_threads(a.threads)
        model = PixelDiT(load_checkpoint(a.ckpt), cfg, a.size, a.size).eval()
        tx, tt, ty = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)
        with torch.inference_mode():
            out = model(tx, tt, ty).numpy()
            ms = timed(lambda: model(tx, tt, ty), a.warmup, a.runs)
        res["version"] = f"torch {torch.__version__}"
    else:
        raise SystemExit(f"unknown worker mode {a.mode}")
    if a.save:
        np.save(a.save, out)
    res["ms"] = ms
    print(json.dumps(res))


def run_measured(cmd, env=None):
    """Runs cmd under /usr/bin/time-free wait4 accounting; returns (stdout, peak RSS in MiB)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return out.decode(), err.decode(), ru.ru_maxrss / 1024.0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,B", help="comma list of graphs/*.json names (XL-256 is heavy)")
    ap.add_argument("--batch", type=int, default=2, help="2 = one CFG step")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--impls", default="ort,ortspin,ortdec,tract,ortpy,torch")
    ap.add_argument("--table", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--no-table", action="store_true")
    ap.add_argument("--torch-python", default=str(ROOT / ".cache" / "bench-venv" / "bin" / "python"))
    a = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "reference"))
    import numpy as np
    from checkpoint import make_random_checkpoint, save_checkpoint

    export = ROOT / "target" / "release" / "pixeldit-export"
    prun = ROOT / "target" / "release" / "pixeldit-run"
    tenv = dict(os.environ, LD_LIBRARY_PATH=str(CACHE / "cudastubs"), OMP_NUM_THREADS=str(a.threads))
    impls = a.impls.split(",")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    machine = f"{cpu} ({os.cpu_count()} cores)"
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    isa = "/".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f" {f} " in flags + " ")

    peak_out, _, _ = run_measured([a.torch_python, __file__, "worker", "peak", "--threads", str(a.threads)], tenv)
    peak = json.loads(peak_out)
    ort_peak_out, _, _ = run_measured([sys.executable, __file__, "worker", "ortpeak", "--threads", str(a.threads)])
    peak.update(json.loads(ort_peak_out))
    peak_best = max(peak.values())
    print(f"sgemm peak: {peak}", flush=True)

    sections = []
    for preset in a.presets.split(","):
        cfg = json.loads((ROOT / "graphs" / f"{preset}.json").read_text())
        size = cfg["default_height"]
        ckpt = CACHE / f"{preset}.safetensors"
        if not ckpt.exists():
            save_checkpoint(make_random_checkpoint(cfg, 0), ckpt)
        models = {}
        for att in ("custom", "decomposed"):
            m = CACHE / f"{preset}-{size}-{att}.onnx"
            if not m.exists():
                subprocess.run([export, "--preset", preset, "--checkpoint", ckpt, "--height", str(size), "--width",
                                str(size), "--attention", att, "--pixel-ops", "standard", "-o", m], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            models[att] = m
        g1 = gflops(cfg, size, size)
        gf = g1 * a.batch
        rows = []
        common = ["--batch", str(a.batch), "--runs", str(a.runs), "--warmup", str(a.warmup)]
        for impl in impls:
            load = os.getloadavg()[0]
            if impl in ("ort", "ortspin", "ortdec", "tract"):
                att = "decomposed" if impl == "ortdec" else "custom"
                backend = "tract" if impl == "tract" else "ort"
                cmd = [prun, "bench", models[att], "--backend", backend, "--device", "cpu",
                       "--threads", str(a.threads)] + (["--ort-spin"] if impl == "ortspin" else []) + common
                out, _, rss = run_measured(cmd)
                # `pixeldit-run bench` prints a Markdown table: ... | median ms | min ms | max ms |
                med = float(re.search(r"\| ([0-9.]+) \| [0-9.]+ \| [0-9.]+ \|\s*$", out, re.M).group(1))
                label = {"ort": "pixeldit-run, ORT CPU (custom attention kernel)",
                         "ortspin": "pixeldit-run, ORT CPU (custom attention kernel, --ort-spin)",
                         "ortdec": "pixeldit-run, ORT CPU (decomposed attention)",
                         "tract": "pixeldit-run, tract (custom attention kernel)"}[impl]
                model = models[att].name
            else:
                py = sys.executable if impl == "ortpy" else a.torch_python
                save = CACHE / f"out-{preset}-{impl}.npy"
                cmd = [py, __file__, "worker", impl, "--model", models["decomposed"], "--ckpt", ckpt, "--preset",
                       preset, "--size", str(size), "--save", save, "--threads", str(a.threads)] + common
                out, _, rss = run_measured([str(c) for c in cmd], tenv if impl == "torch" else None)
                r = json.loads(out.strip().splitlines()[-1])
                med = statistics.median(r["ms"])
                label = {"ortpy": f"Python {r['version']} (decomposed ONNX)",
                         "torch": f"PyTorch eager CPU, {r['version']} (SDPA)"}[impl]
                model = models["decomposed"].name if impl == "ortpy" else ckpt.name
            rows.append(dict(impl=label, model=model, ms=med, gflops=gf / (med / 1e3), rss=rss, load=load))
            print(f"{preset} b{a.batch} {label}: {med:.1f} ms, {gf / (med / 1e3):.1f} GFLOP/s, {rss:.0f} MiB, "
                  f"load {load:.2f}", flush=True)
        diff = ""
        po, pt = CACHE / f"out-{preset}-ortpy.npy", CACHE / f"out-{preset}-torch.npy"
        if "ortpy" in impls and "torch" in impls:
            va, vb = np.load(po), np.load(pt)
            diff = f" PyTorch vs Python-ORT output max |diff| = {float(np.abs(va - vb).max()):.2e} (v std {va.std():.2f})."
        best = min(r["ms"] for r in rows)
        lines = [f"### {preset} @ {size}x{size}, batch {a.batch} ({gf:.3g} GFLOP per forward)\n",
                 f"Same weights (`{ckpt.name}`, random, seed 0) and inputs.{diff}\n",
                 "| implementation | model file | median ms | GFLOP/s | % of sgemm peak | peak RSS MiB | x best | "
                 "load (1-min) |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['impl']} | {r['model']} | {r['ms']:.1f} | {r['gflops']:.1f} | "
                         f"{100 * r['gflops'] / peak_best:.0f}% | {r['rss']:.0f} | {r['ms'] / best:.2f} | "
                         f"{r['load']:.2f} |")
        sections.append("\n".join(lines) + "\n")
    cmdline = "tools/bench/run.sh " + " ".join(sys.argv[1:])
    head = (f"## CPU comparison, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
            f"* machine: {machine}, {isa}; {a.threads} threads for every implementation\n"
            f"* command: `{cmdline.strip()}`; median of {a.runs} after {a.warmup} warm-up\n"
            f"* measured sgemm peak (n=4096, best of 5): "
            + ", ".join(f"{k.split('_')[0]} {v:.1f} GFLOP/s" for k, v in peak.items())
            + f"; '% of sgemm peak' uses {peak_best:.1f}\n"
            f"* FLOPs by the spec's convention (section 6: Linear and attention core only), x batch\n"
            f"* peak RSS: max resident set of the child process (includes the interpreter / libraries)\n"
            f"* load: 1-minute load average just before each measurement (other builds share these cores)\n\n")
    text = head + "\n".join(sections)
    print(text)
    if not a.no_table:
        p = pathlib.Path(a.table)
        old = p.read_text() if p.exists() else "# Benchmarks\n\n" + RAW_HEADER
        if RAW_MARKER not in old and old.startswith("# Benchmarks\n\n"):
            # A table written by `pixeldit-run bench` alone: give it the heading, keep its rows at the end.
            old = old.replace("# Benchmarks\n\n", "# Benchmarks\n\n" + RAW_MARKER + "\n\n", 1)
        i = old.find(RAW_MARKER)
        i = len(old) if i < 0 else i
        p.write_text(old[:i] + text + "\n" + old[i:])


if __name__ == "__main__":
    main()

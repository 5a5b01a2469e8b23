"""The fastest CPU path, side by side: pixeldit-run (ORT CPU, tract), Python onnxruntime and OpenVINO (static shapes)
on the same exported graphs, fp32 and int8, interleaved rounds; prints medians and ratios to OpenVINO and inserts a
section into BENCHMARKS.md.

Run through tools/bench/openvino.sh. For each preset: a random checkpoint (reference/checkpoint.py, official key
names) is exported with `pixeldit-export --no-patch-split` in fp32 and int8 (calibrated over the sampler's
timesteps, `--calib-steps`), each with the custom attention op (the Rust backends) and decomposed (standard ops, for
OpenVINO and Python onnxruntime; pixeldit-run runs it too). Every measurement runs in its own child process: load,
warm-up, timed forwards; the order of the implementations rotates from round to round so that drifting load on a
shared machine hits every implementation alike. The result per implementation is the median over rounds of each
round's median; 'x OpenVINO' divides it by OpenVINO's on the same precision.

Worker modes (internal): `cpu_vs_openvino.py worker {ov,ortpy} ...` print one JSON line (and save the output).
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

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "bench"
RAW_MARKER = "## Raw `pixeldit-run bench` rows"
sys.path.insert(0, str(ROOT / "tools" / "bench"))
from compare import inputs, timed  # noqa: E402  (the same inputs and timing loop as the CPU comparison)


def worker(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["ov", "ovf32", "ortpy", "ovprofile"])
    ap.add_argument("--model", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--save")
    ap.add_argument("--spin", type=int, default=1, help="ortpy: session.intra_op.allow_spinning (Python's default 1)")
    a = ap.parse_args(argv)
    import numpy as np
    cfg = json.loads((ROOT / "graphs" / f"{a.preset}.json").read_text())
    feed = dict(zip("xty", inputs(cfg, a.size, a.size, a.batch)))
    res = {}
    if a.mode in ("ov", "ovf32", "ovprofile"):
        import openvino as ov
        core = ov.Core()
        model = core.read_model(a.model)
        # Static shapes, as OpenVINO's documentation advises for CPU latency.
        model.reshape({k: list(v.shape) for k, v in feed.items()})
        config = {"INFERENCE_NUM_THREADS": a.threads, "PERFORMANCE_HINT": "LATENCY"}
        if a.mode == "ovf32":
            # OpenVINO's CPU plugin runs float layers in bf16 by default where the CPU has AVX512_BF16 or AMX:
            # f32 keeps the fp32 model's numerics.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if a.mode == "ovprofile":
            config["PERF_COUNT"] = True
        compiled = core.compile_model(model, "CPU", config)
        request = compiled.create_infer_request()
        names = {p.get_any_name(): i for i, p in enumerate(compiled.inputs)}
        data = {names[k]: v for k, v in feed.items()}

        def run():
            request.infer(data)
            return request.get_output_tensor(0).data

        out = np.array(run())
        ms = timed(run, a.warmup, a.runs)
        res["version"] = f"OpenVINO {ov.__version__.split('-')[0]}"
        res["precision_hint"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if a.mode == "ovprofile":
            by_type = {}
            for p in request.profiling_info:
                us = p.real_time.total_seconds() * 1e6
                key = f"{p.node_type} ({p.exec_type})"
                by_type[key] = by_type.get(key, 0.0) + us
            total = sum(by_type.values())
            print(f"OpenVINO per-layer time of the last run: {total / 1e3:.1f} ms")
            for k, us in sorted(by_type.items(), key=lambda kv: -kv[1])[:20]:
                print(f"  {k:<48} {us / 1e3:8.1f} ms {100 * us / total:5.1f}%")
    else:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", str(a.spin))
        sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
        out = sess.run(None, feed)[0]
        ms = timed(lambda: sess.run(None, feed), a.warmup, a.runs)
        res["version"] = f"onnxruntime {ort.__version__}"
    if a.save:
        np.save(a.save, out)
    res["ms"] = ms
    print(json.dumps(res))


# pixeldit-run implementations: graph (attention mode, "-fused" for --pixel-ops fused), backend, label.
RUN_IMPLS = {
    "ort": ("custom", "ort", "pixeldit-run, ORT CPU (custom attention op)"),
    "ortspin": ("custom", "ort", "pixeldit-run, ORT CPU (custom attention op, --ort-spin)"),
    "ortdec": ("decomposed", "ort", "pixeldit-run, ORT CPU (decomposed graph)"),
    "tract": ("custom", "tract", "pixeldit-run, tract (custom attention op)"),
    "ovrun": ("decomposed", "openvino", "pixeldit-run, OpenVINO backend (decomposed graph)"),
    "ortfused": ("custom-fused", "ort", "pixeldit-run, ORT CPU (custom attention op, fused pixel ops)"),
    "ortfusedspin": ("custom-fused", "ort", "pixeldit-run, ORT CPU (custom attention op, fused pixel ops, --ort-spin)"),
    "ortdecfused": ("decomposed-fused", "ort", "pixeldit-run, ORT CPU (decomposed attention, fused pixel ops)"),
    "tractfused": ("custom-fused", "tract", "pixeldit-run, tract (custom attention op, fused pixel ops)"),
}


def run_child(cmd, env=None):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="B", help="comma list of graphs/*.json names (XL-256 needs ~10 GB)")
    ap.add_argument("--batch", type=int, default=2, help="2 = one CFG step")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (0: only export the models)")
    ap.add_argument("--runs", type=int, default=5, help="timed forwards per process")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--impls", default="ov,ovf32,ortpy,ort,ortspin,ortdec,tract,ovrun",
                    help="ov: OpenVINO static (decomposed graph, its default inference precision: bf16 on CPUs with "
                         "AVX512_BF16/AMX); ovf32: the same with INFERENCE_PRECISION_HINT f32; ortpy: Python onnxruntime (decomposed); "
                         "ort / ortspin / ortdec / tract: pixeldit-run bench on ORT CPU (custom attention; "
                         "--ort-spin; decomposed graph) and tract; ovrun: pixeldit-run bench --backend openvino (decomposed graph); "
                         "ortfused / ortfusedspin / ortdecfused / tractfused: pixeldit-run bench on the exports with "
                         "--pixel-ops fused (custom attention; the same with --ort-spin; decomposed attention; tract "
                         "with custom attention)")
    ap.add_argument("--ov-python", default=str(ROOT / ".cache" / "openvino-venv" / "bin" / "python"))
    ap.add_argument("--tag", default="single", help="part of the export file names: a new tag re-exports "
                    "(the exports are cached in .cache/bench/ by preset, size, precision, attention and tag)")
    ap.add_argument("--profile", action="store_true", help="also print OpenVINO's per-layer counters per model")
    ap.add_argument("--table", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--no-table", action="store_true")
    a = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "reference"))
    import numpy as np
    from checkpoint import make_random_checkpoint, save_checkpoint

    exe = ROOT / "target" / "release" / "pixeldit-export"
    prun = ROOT / "target" / "release" / "pixeldit-run"
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "") + " "
    isa = "/".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
                   if f" {f} " in flags)
    impls = a.impls.split(",")
    sections = []
    for preset in a.presets.split(","):
        cfg = json.loads((ROOT / "graphs" / f"{preset}.json").read_text())
        size = cfg["default_height"]
        ckpt = CACHE / f"{preset}.safetensors"
        if not ckpt.exists():
            save_checkpoint(make_random_checkpoint(cfg, 0), ckpt)
        models = {}
        graphs = {"decomposed"} | {RUN_IMPLS[i][0] for i in impls if i in RUN_IMPLS}
        for prec in a.precisions.split(","):
            for graph in sorted(graphs):
                att, _, fused = graph.partition("-")
                m = CACHE / f"{preset}-{size}-{prec}-{graph}-{a.tag}.onnx"
                args = ["--preset", preset, "--checkpoint", ckpt, "--height", size, "--width", size,
                        "--attention", att, "--precision", prec, "--no-patch-split"]
                args += ["--pixel-ops", "fused" if fused else "standard"]
                if prec != "fp32":
                    # Calibration over the sampler's time grid: one class, one seed, a few steps keeps B quick.
                    args += ["--calib-classes", "1", "--calib-seeds", "0", "--calib-steps", "4"]
                if not m.exists():
                    print(f"exporting {m.name} ...", flush=True)
                    run_child([exe] + args + ["-o", m])
                models[prec, graph] = m
        if a.rounds == 0:
            continue  # --rounds 0: export only
        rows = {}
        outputs = {}
        for prec in a.precisions.split(","):
            if a.profile and "ov" in impls:
                print(run_child([a.ov_python, __file__, "worker", "ovprofile", "--model", models[prec, "decomposed"],
                                 "--preset", preset, "--size", size, "--batch", a.batch, "--threads", a.threads,
                                 "--warmup", 1, "--runs", 1]), flush=True)
            for r in range(a.rounds):
                order = impls[r % len(impls):] + impls[:r % len(impls)]
                for impl in order:
                    load = os.getloadavg()[0]
                    if impl in RUN_IMPLS:
                        graph, be, label = RUN_IMPLS[impl]
                        cmd = [prun, "bench", models[prec, graph], "--backend", be,
                               "--device", "cpu", "--threads", a.threads, "--batch", a.batch, "--runs", a.runs,
                               "--warmup", a.warmup] + (["--ort-spin"] if impl.endswith("spin") else [])
                        out = run_child(cmd, dict(os.environ))
                        med = float(re.search(r"\| ([0-9.]+) \| [0-9.]+ \| [0-9.]+ \|\s*$", out, re.M).group(1))
                        model = models[prec, graph].name
                    else:
                        py = a.ov_python if impl.startswith("ov") else sys.executable
                        save = CACHE / f"out-ovbench-{preset}-{prec}-{impl}.npy"
                        cmd = [py, __file__, "worker", impl, "--model", models[prec, "decomposed"], "--preset", preset,
                               "--size", size, "--batch", a.batch, "--threads", a.threads, "--runs", a.runs,
                               "--warmup", a.warmup, "--save", save]
                        res = json.loads(run_child(cmd).strip().splitlines()[-1])
                        med = statistics.median(res["ms"])
                        label = (f"{res['version']} static shapes, LATENCY hint, inference precision "
                                 f"{res['precision_hint']}" if impl.startswith("ov") else f"Python {res['version']}")
                        model = models[prec, "decomposed"].name
                        outputs[prec, impl] = np.load(save)
                    rows.setdefault((prec, impl), dict(label=label, model=model, ms=[], load=[]))
                    rows[prec, impl]["ms"].append(med)
                    rows[prec, impl]["load"].append(load)
                    print(f"{preset} {prec} round {r + 1}: {label}: {med:.1f} ms (load {load:.2f})", flush=True)
        lines = [f"### {preset} @ {size}x{size}, batch {a.batch}\n",
                 "| precision | implementation | model file | median ms (per round) | x OpenVINO default | "
                 "x OpenVINO f32 | rel. L2 vs fp32 | load (1-min) |",
                 "|---|---|---|---|---|---|---|---|"]
        ref = outputs.get(("fp32", "ortpy"))
        for prec in a.precisions.split(","):
            base = {k: statistics.median(rows[prec, k]["ms"]) for k in ("ov", "ovf32") if (prec, k) in rows}
            for impl in impls:
                r = rows[prec, impl]
                med = statistics.median(r["ms"])
                ratios = " | ".join(f"{med / base[k]:.2f}" if k in base else "-" for k in ("ov", "ovf32"))
                out = outputs.get((prec, impl))
                err = (f"{float(np.linalg.norm(out - ref) / np.linalg.norm(ref)):.1e}"
                       if out is not None and ref is not None else "-")
                lines.append(f"| {prec} | {r['label']} | {r['model']} | {med:.1f} "
                             f"({', '.join(f'{m:.0f}' for m in r['ms'])}) | {ratios} | {err} | "
                             f"{min(r['load']):.2f}-{max(r['load']):.2f} |")
        lines.append("\n'rel. L2 vs fp32': relative L2 distance of v from Python onnxruntime's on the fp32 graph (same "
                     "inputs; pixeldit-run's rows are checked by the golden tests instead).")
        sections.append("\n".join(lines) + "\n")
    cmdline = "tools/bench/openvino.sh " + " ".join(sys.argv[1:])
    head = (f"## Fastest CPU path vs OpenVINO, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n\n"
            f"* machine: {cpu} ({os.cpu_count()} cores), {isa}; {a.threads} threads for every implementation\n"
            f"* command: `{cmdline.strip()}`; per process {a.warmup} warm-up + {a.runs} timed forwards; "
            f"{a.rounds} interleaved rounds (order rotated); the median of the round medians\n"
            f"* same weights (random, seed 0) and inputs; int8 = the project's Q/DQ variant (`--precision int8`)\n\n")
    if not sections:
        return
    text = head + "\n".join(sections)
    print(text)
    if not a.no_table:
        p = pathlib.Path(a.table)
        old = p.read_text()
        i = old.find(RAW_MARKER)
        i = len(old) if i < 0 else i
        p.write_text(old[:i] + text + "\n" + old[i:])


if __name__ == "__main__":
    main()

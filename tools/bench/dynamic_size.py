"""Dynamic-size vs static exports (`pixeldit-export --dynamic-size`): peak memory at the largest size, and speed.

Two measurements, each on the same weights exported twice (static at the size measured, and with --dynamic-size),
every `pixeldit-run` in its own child process (peak RSS from wait4, so it is that process's own):

* ``memory``: peak RSS of `pixeldit-run MODEL --class 1 --steps 2 --height MAX --width MAX` (one image with CFG:
  two rows per forward, "batch 2") at the largest size the dynamic export accepts (its metadata's ``dynamic.max``;
  B: 512x512), dynamic vs the static export at that size, on ONNX Runtime CPU and tract. Default preset B with
  random weights (``reference/checkpoint.py`` ``make_random_checkpoint(cfg, 0)``, as tools/bench/compare.py; written
  once to the output folder). Peak RSS hardly depends on CPU load, so this may run on a busy machine.
* ``timing``: ms per forward (`pixeldit-run bench`) of the static and the dynamic export at the preset's default
  size (the dynamic export's default size), interleaved: each round runs static then dynamic, or dynamic then
  static on odd rounds, and the per-round ratios dynamic / static of the medians are printed. Default preset
  ``t2i`` (the 1.3B text-to-image model at 1024x1024; ``--random-init --seed 0`` weights, streamed by the exporter:
  5.2 GB of fp32 weights per export, about 100 s per forward of one row on 2 cores, tens of minutes in all: run it
  on a quiet machine), ORT CPU, batch 1.

Both print a Markdown block (machine, command, date, load, table) for BENCHMARKS.md; nothing is written there.

    .venv/bin/python tools/bench/dynamic_size.py memory                                   # B at 512x512
    .venv/bin/python tools/bench/dynamic_size.py timing                                   # t2i at 1024x1024
    .venv/bin/python tools/bench/dynamic_size.py timing --preset t2i-tiny --rounds 2      # a quick smoke run

Binaries: ``--bin`` (default target/release, built with ``cargo build --release -p pixeldit-cli`` unless --bin is
given). Files go to ``--out`` (default target/bench-dynamic-size).
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
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
META_KEY = "pixeldit.metadata"


def run_measured(cmd):
    """Runs ``cmd``; returns (stdout, stderr, peak RSS in MiB, wall seconds). Raises on a non-zero exit."""
    start = time.perf_counter()
    with subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT) as proc:
        # Drain stderr in a thread while reading stdout, so that neither pipe fills up; wait4 reaps the child and
        # gives its own rusage.
        err_chunks = []
        t = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()))
        t.start()
        out = proc.stdout.read()
        t.join()
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    err = err_chunks[0].decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{err[-3000:]}")
    return out.decode(errors="replace"), err, ru.ru_maxrss / 1024.0, wall


def metadata(model):
    """The model's ``pixeldit.metadata`` JSON."""
    import onnx
    m = onnx.load(str(model), load_external_data=False)
    return json.loads(next(p.value for p in m.metadata_props if p.key == META_KEY))


def model_bytes(model):
    """Bytes of the model file and its external data (``<model>.data``), pixel-level graph not counted."""
    data = pathlib.Path(str(model) + ".data")
    return model.stat().st_size + (data.stat().st_size if data.exists() else 0)


def machine():
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "")
    isa = "/".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f" {f} " in flags + " ")
    mem = next((ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), "0")
    return f"{cpu} ({os.cpu_count()} cores, {isa}, {int(mem) / 2**20:.0f} GiB)"


def binaries(a):
    """(pixeldit-export, pixeldit-run), building the release binaries unless --bin was given."""
    if a.bin is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "pixeldit-cli"], cwd=ROOT, check=True)
        bin_dir = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "release"
    else:
        bin_dir = pathlib.Path(a.bin)
    return bin_dir / "pixeldit-export", bin_dir / "pixeldit-run"


def weights_args(preset, cfg, out):
    """Export flags for the preset's random weights: a reference checkpoint for class-conditional presets (as
    tools/bench/compare.py; written once to ``out``), the exporter's streamed --random-init for text-to-image ones
    (the 1.3B model's numpy checkpoint would not fit beside the runs)."""
    if cfg.get("kind") == "t2i":
        return ["--random-init", "--seed", "0"], "`--random-init --seed 0`"
    ckpt = out / f"{preset}.safetensors"
    if not ckpt.exists():
        sys.path.insert(0, str(ROOT / "reference"))
        from checkpoint import make_random_checkpoint, save_checkpoint  # noqa: E402
        save_checkpoint(make_random_checkpoint(cfg, 0), ckpt)
    return ["--checkpoint", ckpt], f"`reference/checkpoint.py` `make_random_checkpoint({preset}, 0)`"


def export_pair(a, export, size=None):
    """Exports the dynamic model (default range and size) and the static one at ``size`` (default: the dynamic
    model's default size); returns (static path, dynamic path, (height, width), dynamic metadata, weights note)."""
    cfg = json.loads((ROOT / "graphs" / f"{a.preset}.json").read_text())
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wargs, wnote = weights_args(a.preset, cfg, out)
    common = [export, "--preset", a.preset, *wargs, "--attention", a.attention, "--pixel-ops", "standard", "--no-patch-split", "-q"]
    dyn = out / f"{a.preset}_{a.attention}_dynamic.onnx"
    if not dyn.exists():
        print(f"== export {dyn.name}", file=sys.stderr, flush=True)
        subprocess.run([str(c) for c in common + ["--dynamic-size", "-o", dyn]], check=True, cwd=ROOT)
    meta = metadata(dyn)
    h, w = size(meta) if size else (meta["height"], meta["width"])
    fixed = out / f"{a.preset}_{a.attention}_{h}x{w}.onnx"
    if not fixed.exists():
        print(f"== export {fixed.name}", file=sys.stderr, flush=True)
        subprocess.run([str(c) for c in common + ["--height", h, "--width", w, "-o", fixed]], check=True, cwd=ROOT)
    return fixed, dyn, (h, w), meta, wnote


def conditions(a, meta, out):
    """Condition flags of one image: a class, or synthetic text embeddings (N(0, 1) prompt, zero negative)."""
    text = meta["config"].get("text")
    if not text:
        return ["--class", "1"]
    import numpy as np
    rng = np.random.default_rng(0)
    shape = (text["max_length"], text["embed_dim"])
    np.save(out / "text.npy", rng.standard_normal(shape).astype(np.float32))
    np.save(out / "negative.npy", np.zeros(shape, np.float32))
    return ["--text-embeddings", out / "text.npy", "--negative-embeddings", out / "negative.npy"]


def memory(a):
    export, prun = binaries(a)
    fixed, dyn, (h, w), meta, wnote = export_pair(a, export, lambda m: (m["dynamic"]["max"],) * 2)
    out = pathlib.Path(a.out)
    cond = conditions(a, meta, out)
    rows = []
    started = datetime.datetime.now(datetime.timezone.utc)
    for rnd in range(a.rounds):
        for backend in a.backends.split(","):
            pair = [("static", fixed), ("dynamic", dyn)]
            for kind, model in pair if rnd % 2 == 0 else pair[::-1]:
                report = out / f"memory_{kind}_{backend}_{rnd}.json"
                cmd = [prun, model, "--backend", backend, "--device", "cpu", *cond, "--steps", str(a.steps),
                       "--height", h, "--width", w, "-q", "-o", out / "memory.png", "--report-json", report]
                if a.threads:
                    cmd += ["--threads", str(a.threads)]
                load = os.getloadavg()[0]
                _, _, rss, wall = run_measured(cmd)
                r = json.loads(report.read_text())
                rows.append(dict(kind=kind, backend=backend, model=model, rss=rss, wall=wall, load=load,
                                 forwards=r["forwards"], rows=r["forward_rows"], round=rnd))
                print(f"round {rnd}: {backend} {kind}: peak RSS {rss:.0f} MiB, {wall:.1f} s, load {load:.2f}",
                      file=sys.stderr, flush=True)
    cmdline = "tools/bench/dynamic_size.py " + " ".join(sys.argv[1:])
    shown_cond = " ".join(map(str, cond)) if len(cond) == 2 else "(text embeddings)"
    lines = [f"### Peak memory at the largest size: {a.preset} at {h}x{w}, "
             f"{started:%Y-%m-%d %H:%M} UTC\n",
             f"* machine: {machine()}",
             f"* command: `.venv/bin/python {cmdline.strip()}` (release build)",
             f"* models: `pixeldit-export --preset {a.preset} --attention {a.attention} --no-patch-split` with "
             f"{wnote} weights, with `--dynamic-size` (range {meta['dynamic']['min']}..={meta['dynamic']['max']}, "
             f"default {meta['height']}x{meta['width']}) and static at `--height {h} --width {w}`; "
             f"{model_bytes(dyn) / 2**20:.0f} / {model_bytes(fixed) / 2**20:.0f} MiB on disk (dynamic / static)",
             f"* run: `pixeldit-run MODEL --backend B --device cpu {shown_cond} "
             f"--steps {a.steps} --height {h} --width {w}` (one image with CFG: "
             f"{rows[0]['rows'] // max(rows[0]['forwards'], 1)} rows per forward, {rows[0]['forwards']} forwards); "
             "peak RSS = ru_maxrss of the pixeldit-run process (wait4); wall includes loading (and tract's "
             "optimization)\n",
             "| backend | export | peak RSS MiB | dynamic / static | wall s | load (1-min) | round |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        base = next(x for x in rows if x["backend"] == r["backend"] and x["round"] == r["round"]
                    and x["kind"] == "static")
        lines.append(f"| {r['backend']} | {r['kind']} | {r['rss']:.0f} | {r['rss'] / base['rss']:.3f} | "
                     f"{r['wall']:.1f} | {r['load']:.2f} | {r['round'] + 1} |")
    print("\n".join(lines))


def bench_median(out):
    """The median ms of the one row `pixeldit-run bench` printed."""
    return float(re.search(r"\| ([0-9.]+) \| [0-9.]+ \| [0-9.]+ \|\s*$", out, re.M).group(1))


def timing(a):
    export, prun = binaries(a)
    fixed, dyn, (h, w), meta, wnote = export_pair(a, export)
    out = pathlib.Path(a.out)
    started = datetime.datetime.now(datetime.timezone.utc)
    by = {}
    raw = []
    for rnd in range(a.rounds):
        for backend in a.backends.split(","):
            pair = [("static", fixed), ("dynamic", dyn)]
            for kind, model in pair if rnd % 2 == 0 else pair[::-1]:
                cmd = [prun, "bench", model, "--backend", backend, "--device", "cpu", "--batch", str(a.batch),
                       "--runs", str(a.runs), "--warmup", str(a.warmup)]
                if a.threads:
                    cmd += ["--threads", str(a.threads)]
                load = os.getloadavg()[0]
                stdout, _, rss, _ = run_measured(cmd)
                ms = bench_median(stdout)
                by[(backend, kind, rnd)] = (ms, rss, load)
                raw.append(stdout.strip().splitlines()[-1])
                print(f"round {rnd}: {backend} {kind}: {ms:.1f} ms (median of {a.runs}), peak RSS {rss:.0f} MiB, "
                      f"load {load:.2f}", file=sys.stderr, flush=True)
    finished = datetime.datetime.now(datetime.timezone.utc)
    cmdline = "tools/bench/dynamic_size.py " + " ".join(sys.argv[1:])
    lines = [f"### Speed at the default size: {a.preset} at {h}x{w}, {started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC\n",
             f"* machine: {machine()}",
             f"* command: `.venv/bin/python {cmdline.strip()}` (release build)",
             f"* models: `pixeldit-export --preset {a.preset} --attention {a.attention} --no-patch-split` with "
             f"{wnote} weights, static (`--height {h} --width {w}`) and `--dynamic-size` (default size {h}x{w})",
             f"* each cell: `pixeldit-run bench MODEL --backend B --device cpu --batch {a.batch} --runs {a.runs} "
             f"--warmup {a.warmup}`, median ms per forward; rounds interleaved (static first in odd-numbered "
             "rounds, dynamic first in even-numbered ones)\n",
             "| backend | round | static ms | dynamic ms | dynamic / static | peak RSS MiB (static / dynamic) | "
             "load (1-min) |",
             "|---|---:|---:|---:|---:|---|---|"]
    for backend in a.backends.split(","):
        ratios = []
        for rnd in range(a.rounds):
            s, d = by[(backend, "static", rnd)], by[(backend, "dynamic", rnd)]
            ratios.append(d[0] / s[0])
            lines.append(f"| {backend} | {rnd + 1} | {s[0]:.1f} | {d[0]:.1f} | {d[0] / s[0]:.3f} | "
                         f"{s[1]:.0f} / {d[1]:.0f} | {s[2]:.2f} / {d[2]:.2f} |")
        lines.append(f"| {backend} | median | | | {statistics.median(ratios):.3f} | | |")
    lines += ["", "`pixeldit-run bench` rows:", "",
              "| date | machine | command | model | precision | backend | batch | median ms | min ms | max ms |",
              "|---|---|---|---|---|---|---|---|---|---|"] + raw
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    for name, preset, backends in (("memory", "B", "ort,tract"), ("timing", "t2i", "ort")):
        p = sub.add_parser(name)
        p.add_argument("--preset", default=preset, help=f"graphs/*.json name (default {preset})")
        p.add_argument("--attention", default="custom", help="--attention of both exports (default custom)")
        p.add_argument("--backends", default=backends, help=f"comma list of ort, tract (default {backends})")
        p.add_argument("--rounds", type=int, default=1 if name == "memory" else 3)
        p.add_argument("--threads", type=int, help="pixeldit-run --threads (default: one per core)")
        p.add_argument("--bin", help="directory of pixeldit-export and pixeldit-run (default: build target/release)")
        p.add_argument("--out", default=str(ROOT / "target" / "bench-dynamic-size"),
                       help="output folder (default target/bench-dynamic-size; a folder per preset inside)")
        if name == "memory":
            p.add_argument("--steps", type=int, default=2)
        else:
            p.add_argument("--batch", type=int, default=1)
            p.add_argument("--runs", type=int, default=2)
            p.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()
    os.environ.setdefault("ORT_DYLIB_PATH", str(ROOT / ".cache" / "onnxruntime" / "libonnxruntime.so.1.31.1"))
    # Everything runs in the repository root, and paths inside it are used relative to it, so that the commands in
    # the printed rows are repository-relative.
    def rel(path):
        path = pathlib.Path(path).resolve()
        return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path

    a.out = str(rel(pathlib.Path(a.out) / a.preset))
    a.bin = a.bin and str(rel(a.bin))
    os.chdir(ROOT)
    {"memory": memory, "timing": timing}[a.what](a)


if __name__ == "__main__":
    main()

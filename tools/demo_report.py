"""Contact sheet and report of a scripts/demo.sh run (the digits model in every variant on every backend).

Reads what demo.sh left in OUT_DIR:

* ``digits_<variant>_<backend>.png``: the 4x3 grid that ``pixeldit-run --grid`` wrote for classes 0-9 (the
  runtime's own uint8 images),
* ``runs/digits_<variant>_<backend>.json``: ``pixeldit-run --report-json`` (backend, provider, precision,
  ms/step, ...), ``runs/digits_<variant>_<backend>.npy``: the raw final x (``--save-raw``),
* ``runs/cache/digits_<variant>_<backend>_<setting>.{png,json}``: the patch-level step cache (``cache2``,
  ``uniform2``, ``cache3``, ``threshold0.25``) and the uncached sampler with about the same FLOPs (``steps<N>``), reported in a
  "Patch-level step cache" table against the uncached images of the same variant and backend,
* ``runs/digits_<variant>_<backend>.failed`` / ``runs/digits_<variant>.export-failed``: logs of runs that failed,

and the golden reference in tests/golden/digits/ (the Python float64 reference sampler with the same noise), and
writes

* ``contact_sheet.png``: rows = the reference, then variants x backends; columns = classes 0-9; each row labelled
  with variant, backend and PSNR against the reference,
* ``report.md`` and ``report.json``: per variant/backend the provider, time per step, PSNR against the fp32
  reference images (Python float64, ``tests/golden/digits/class_<c>.png``) and against the fp32 export on the
  same backend, the worst class, the relative L2 error of the raw x, and which digits the images show (judged by
  the digit classifier of tools/digit_classifier.py: "drawn" = how many of the ten show the requested digit).

PSNR is over uint8 RGB images with peak 255 (all ten images together); identical images have infinite PSNR
(``null`` with ``"identical": true`` in the JSON).

The text-to-image default model (``--model digits-t2i``) is reported the same way from ``digits-t2i_*`` files:
columns are the prompts "an image of the digit <word>" (held out from training) and the reference is
tests/golden/digits-t2i/prompt_<c>.png.

Usage: ``.venv/bin/python tools/demo_report.py OUT_DIR [--model digits|digits-t2i] [--golden DIR]``
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digit_classifier import drawn

ROOT = pathlib.Path(__file__).resolve().parent.parent
VARIANT_ORDER = ["fp32", "fp16", "bf16", "int8", "fp8", "int8-weights", "fp8-weights"]
BACKEND_ORDER = ["ort-cpu", "tract", "openvino", "ort-cuda", "ort-tensorrt"]
CLASSES = list(range(10))
#: Per model: file prefix, golden directory, reference images, golden tensors, what the columns are.
MODELS = {
    "digits": {"golden": "digits", "image": "class_{c}.png", "tensors": "digits_golden.safetensors",
               "columns": "class", "weights": "graphs/digits.safetensors"},
    "digits-t2i": {"golden": "digits-t2i", "image": "prompt_{c}.png", "tensors": "digits_t2i_golden.safetensors",
                   "columns": "prompt 'an image of the digit <c>'", "weights": "graphs/digits-t2i.safetensors"},
}
MODEL = "digits"
SCALE = 3  # contact sheet upscaling of the 32x32 images
GAP = 2


def order_key(variant, backend=""):
    """Sort variants and backends in the documented order, unknown ones last."""
    def index(items, name):
        return items.index(name) if name in items else len(items)
    return index(VARIANT_ORDER, variant), variant, index(BACKEND_ORDER, backend), backend


def psnr(a, b):
    """PSNR in dB of two uint8 arrays (peak 255); inf when identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(255.0 ** 2 / mse)


def split_grid(path, count, size):
    """The tiles of a ``pixeldit-run --grid`` image: ceil(sqrt(K)) columns, row-major, [K, H, W, 3] uint8."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    cols = math.ceil(math.sqrt(count))
    h, w = size
    return np.stack([grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w]
                     for i in range(count)])


def fmt_db(value):
    """A PSNR for humans."""
    if value is None:
        return "-"
    return "identical" if math.isinf(value) else f"{value:.2f}"


def json_db(value):
    """A PSNR for JSON (no infinities)."""
    return None if value is None or math.isinf(value) else round(value, 3)


def first_error_line(path):
    """The most telling line of a failure log: the last line that mentions an error, else the last line."""
    lines = [l.strip() for l in path.read_text(errors="replace").splitlines() if l.strip()]
    errors = [l for l in lines if "error" in l.lower()]
    return (errors or lines or ["(empty log)"])[-1][:300]


def collect(out, golden_images, golden_x):
    """One record per run that produced images, and one per failure."""
    runs, failures = [], []
    pre = f"{MODEL}_"
    for failed in sorted((out / "runs").glob(f"{pre}*.export-failed")):
        variant = failed.name[len(pre):-len(".export-failed")]
        failures.append({"variant": variant, "backend": None, "stage": "export", "error": first_error_line(failed)})
    for failed in sorted((out / "runs").glob(f"{pre}*.failed")):
        variant, backend = failed.stem[len(pre):].split("_", 1)
        failures.append({"variant": variant, "backend": backend, "stage": "sample", "error": first_error_line(failed)})
    for report in sorted((out / "runs").glob(f"{pre}*.json")):
        variant, backend = report.stem[len(pre):].split("_", 1)
        info = json.loads(report.read_text())
        grid = out / f"{pre}{variant}_{backend}.png"
        images = split_grid(grid, len(CLASSES), golden_images.shape[1:3])
        raw_path = report.with_suffix(".npy")
        rel_l2 = None
        if raw_path.exists():
            x = np.load(raw_path).astype(np.float64)
            rel_l2 = float(np.linalg.norm(x - golden_x) / np.linalg.norm(golden_x))
        per_class = [psnr(a, b) for a, b in zip(images, golden_images)]
        worst = int(np.argmin(per_class))
        drawn_digits, drawn_correct = drawn(images, CLASSES)
        runs.append({
            "variant": variant, "backend": backend, "provider": info.get("provider"),
            "precision": info.get("precision"), "image": grid.name, "images": images,
            "ms_per_step": info.get("ms_per_step"), "total_s": info.get("total_s"),
            "steps": info.get("steps"), "forwards": info.get("forwards"), "guided_forwards": info.get("guided_forwards"),
            "forward_rows": info.get("forward_rows"),
            "sampler": info.get("sampler"), "cfg_scale": info.get("cfg_scale"),
            "psnr_vs_reference": psnr(images, golden_images),
            "worst_class": (worst, per_class[worst]), "rel_l2_vs_reference": rel_l2,
            "drawn_digits": drawn_digits, "drawn_correct": drawn_correct,
        })
    runs.sort(key=lambda r: order_key(r["variant"], r["backend"]))
    fp32 = {r["backend"]: r["images"] for r in runs if r["variant"] == "fp32"}
    for r in runs:
        r["psnr_vs_fp32_same_backend"] = psnr(r["images"], fp32[r["backend"]]) if r["backend"] in fp32 else None
    failures.sort(key=lambda f: order_key(f["variant"], f["backend"] or ""))
    return runs, failures


def font(size):
    """A scalable font when Pillow has FreeType, else the bitmap default."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def contact_sheet(rows, path):
    """rows: (label, images [10,H,W,3] uint8 or None for a failed run); writes one labelled PNG grid."""
    h, w = 32 * SCALE, 32 * SCALE
    label_w, header_h = 230, 28
    width = label_w + len(CLASSES) * (w + GAP) + GAP
    height = header_h + len(rows) * (h + GAP) + GAP
    sheet = Image.new("RGB", (width, height), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    small, big = font(14), font(18)
    for c in CLASSES:
        draw.text((label_w + GAP + c * (w + GAP) + w // 2 - 5, 4), str(c), fill=(255, 255, 255), font=big)
    draw.text((8, 6), MODELS[MODEL]["columns"].split(" ")[0] + " ->", fill=(200, 200, 200), font=small)
    for r, (label, images) in enumerate(rows):
        top = header_h + GAP + r * (h + GAP)
        for i, line in enumerate(label.split("\n")):
            draw.text((8, top + 8 + i * 20), line, fill=(255, 255, 255), font=small)
        for c in CLASSES:
            left = label_w + GAP + c * (w + GAP)
            if images is None:
                draw.rectangle([left, top, left + w - 1, top + h - 1], fill=(90, 20, 20))
                continue
            tile = Image.fromarray(images[c]).resize((w, h), Image.NEAREST)
            sheet.paste(tile, (left, top))
    sheet.save(path)


def machine():
    """CPU model and core count."""
    model = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def display_path(path):
    """``path`` relative to the repository when it is inside it."""
    path = pathlib.Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def collect_cache(out, runs, size):
    """The patch-cache runs of runs/cache/, each against the uncached run of the same variant and backend."""
    uncached = {(r["variant"], r["backend"]): r for r in runs}
    rows = []
    for report in sorted((out / "runs" / "cache").glob(f"{MODEL}_*.json")):
        variant, backend, setting = report.stem[len(MODEL) + 1:].split("_", 2)
        base = uncached.get((variant, backend))
        if base is None:
            continue
        info = json.loads(report.read_text())
        images = split_grid(report.with_suffix(".png"), len(CLASSES), size)
        cache = info.get("patch_cache") or {}
        rows.append({
            "variant": variant, "backend": backend, "setting": setting, "steps": info.get("steps"),
            "policy": cache.get("policy", "off (fewer steps)"), "reuse": cache.get("reuse"),
            "whole_forwards": cache.get("whole_forwards", info.get("forwards")),
            "pixel_level_forwards": cache.get("pixel_level_forwards", 0),
            "relative_flops": cache.get("relative_flops", info.get("forwards", 0) / max(base["forwards"] or 1, 1)),
            "ms_per_image": 1e3 * info["total_s"] / len(CLASSES),
            "uncached_ms_per_image": 1e3 * base["total_s"] / len(CLASSES),
            "psnr_vs_uncached_db": psnr(images, base["images"]),
            "drawn_correct": drawn(images, CLASSES)[1],
        })
    rows.sort(key=lambda r: (order_key(r["variant"], r["backend"]), -r["relative_flops"], r["setting"]))
    return rows


def write_reports(out, runs, failures, golden_dir, reference_drawn, cache_rows=()):
    """report.md and report.json; ``reference_drawn``: the digits the reference images show and how many are right
    (:func:`digit_classifier.drawn`)."""
    settings = next(iter(runs), {})
    golden_dir = display_path(golden_dir)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "model": f"{MODEL} (graphs/{MODEL}.json, weights {MODELS[MODEL]['weights']})",
        "columns": MODELS[MODEL]["columns"],
        "classes": CLASSES,
        "noise": f"{golden_dir}/noise.npy",
        "reference": f"{golden_dir}/{MODELS[MODEL]['image'].replace('{c}', '<c>')} (Python float64 reference sampler)",
        "sampler": {k: settings.get(k)
                    for k in ("sampler", "steps", "cfg_scale", "forwards", "guided_forwards", "forward_rows")},
        "psnr": "uint8 RGB, peak 255, all ten images together; null + identical=true when identical",
        "drawn_digits": "the digit each image shows per tools/digit_classifier.py (logistic regression on 8x8, "
                        "97% held-out accuracy on the training digits); drawn_correct = how many equal their column",
        "reference_drawn_digits": reference_drawn[0],
    }
    records = [{
        "variant": r["variant"], "backend": r["backend"], "provider": r["provider"], "precision": r["precision"],
        "image": r["image"], "ms_per_step": r["ms_per_step"], "total_s": r["total_s"],
        "psnr_vs_reference_db": json_db(r["psnr_vs_reference"]),
        "identical_to_reference": math.isinf(r["psnr_vs_reference"]),
        "psnr_vs_fp32_same_backend_db": json_db(r["psnr_vs_fp32_same_backend"]),
        "identical_to_fp32_same_backend": r["psnr_vs_fp32_same_backend"] is not None
        and math.isinf(r["psnr_vs_fp32_same_backend"]),
        "worst_class": r["worst_class"][0], "worst_class_psnr_db": json_db(r["worst_class"][1]),
        "rel_l2_vs_reference": r["rel_l2_vs_reference"],
        "drawn_digits": r["drawn_digits"], "drawn_correct": r["drawn_correct"],
    } for r in runs]
    cache_records = [{k: (json_db(v) if k == "psnr_vs_uncached_db" else v) for k, v in r.items()}
                     for r in cache_rows]
    (out / "report.json").write_text(json.dumps({**meta, "runs": records, "failures": failures,
                                                 "patch_cache": cache_records}, indent=2) + "\n")

    forwards = meta["sampler"]["forwards"]
    forwards = "" if forwards is None else (
        f" ({forwards} forwards, {meta['sampler']['guided_forwards']} guided, "
        f"{meta['sampler']['forward_rows']} image rows in all)")
    worst = "class" if MODEL == "digits" else "prompt"
    lines = [
        f"# {MODEL} demo report", "",
        f"* date: {meta['date']}", f"* machine: {meta['machine']}", f"* model: {meta['model']}",
        f"* sampler: {meta['sampler']['sampler']}, {meta['sampler']['steps']} steps, CFG {meta['sampler']['cfg_scale']}"
        f"{forwards}, columns {meta['columns']} for 0-9, noise {meta['noise']}",
        f"* reference: {meta['reference']}",
        "* PSNR: uint8 RGB, peak 255, over all ten images; `identical` = bit-identical images",
        "* drawn: how many of the ten images show the digit of their column, judged by tools/digit_classifier.py "
        f"(the reference: {reference_drawn[1]}/10)", "",
        "![contact sheet](contact_sheet.png)", "",
        "| variant | backend | provider | ms/step | PSNR vs reference (dB) | PSNR vs fp32 same backend (dB) "
        f"| worst {worst} (dB) | raw rel. L2 vs reference | drawn | image |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in runs:
        worst = f"{r['worst_class'][0]} ({fmt_db(r['worst_class'][1])})"
        rel = "-" if r["rel_l2_vs_reference"] is None else f"{r['rel_l2_vs_reference']:.2e}"
        ms = "-" if r["ms_per_step"] is None else f"{r['ms_per_step']:.1f}"
        lines.append(f"| {r['variant']} | {r['backend']} | {r['provider']} | {ms} | {fmt_db(r['psnr_vs_reference'])}"
                     f" | {fmt_db(r['psnr_vs_fp32_same_backend'])} | {worst} | {rel} | {r['drawn_correct']}/10"
                     f" | [{r['image']}]({r['image']}) |")
    if cache_rows:
        lines += ["", "## Patch-level step cache", "",
                  "Each setting against the uncached images of the same variant and backend (`pixeldit-run "
                  "--patch-cache N` / `--patch-cache-threshold X`; `steps<N>` rows: the uncached sampler with about "
                  "the FLOPs of a cache setting, the baseline a cache must beat). FLOPs by the architecture notes' "
                  "convention; ms per image are single runs on a shared machine.", "",
                  "| variant | backend | setting | steps | whole / pixel-level forwards | FLOPs vs uncached "
                  "| ms/image (uncached) | PSNR vs uncached (dB) | drawn |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in cache_rows:
            lines.append(f"| {r['variant']} | {r['backend']} | {r['setting']} | {r['steps']} "
                         f"| {r['whole_forwards']} / {r['pixel_level_forwards']} | {r['relative_flops']:.2f}x "
                         f"| {r['ms_per_image']:.1f} ({r['uncached_ms_per_image']:.1f}) "
                         f"| {fmt_db(r['psnr_vs_uncached_db'])} | {r['drawn_correct']}/10 |")
    if failures:
        lines += ["", "## Not run / failed", "", "| variant | backend | stage | error |", "|---|---|---|---|"]
        for f in failures:
            error = f["error"].replace("|", "\\|")
            lines.append(f"| {f['variant']} | {f['backend'] or '(all)'} | {f['stage']} | {error} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")


def main():
    """Collect, draw, write; exit 1 when no run produced images."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--model", choices=sorted(MODELS), default="digits")
    parser.add_argument("--golden", type=pathlib.Path)
    args = parser.parse_args()
    global MODEL  # pylint: disable=global-statement
    MODEL = args.model
    m = MODELS[MODEL]
    args.golden = args.golden or ROOT / "tests" / "golden" / m["golden"]
    golden_images = np.stack([np.asarray(Image.open(args.golden / m["image"].format(c=c)).convert("RGB"))
                              for c in CLASSES])
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    golden_x = load_file(str(args.golden / m["tensors"]))["x"].astype(np.float64)
    runs, failures = collect(args.out, golden_images, golden_x)
    if not runs:
        print("demo_report: no successful runs found", file=sys.stderr)
        return 1
    reference_drawn = drawn(golden_images, CLASSES)
    rows = [(f"reference\n(Python float64)\ndrawn {reference_drawn[1]}/10", golden_images)]
    rows += [(f"{r['variant']} / {r['backend']}\n{fmt_db(r['psnr_vs_reference'])}"
              f"{'' if math.isinf(r['psnr_vs_reference']) else ' dB'} vs ref.\ndrawn {r['drawn_correct']}/10",
              r["images"]) for r in runs]
    rows += [(f"{f['variant']} / {f['backend'] or 'export'}\nFAILED ({f['stage']})", None) for f in failures]
    contact_sheet(rows, args.out / "contact_sheet.png")
    cache_rows = collect_cache(args.out, runs, golden_images.shape[1:3])
    write_reports(args.out, runs, failures, args.golden, reference_drawn, cache_rows)
    for r in cache_rows:
        print(f"{r['variant']:>13} {r['backend']:<8} {r['setting']:<14} {r['relative_flops']:.2f}x FLOPs  "
              f"PSNR vs uncached {fmt_db(r['psnr_vs_uncached_db']):>9}  drawn {r['drawn_correct']}/10")
    for r in runs:
        print(f"{r['variant']:>13} {r['backend']:<8} {r['provider']:<22} "
              f"{'-' if r['ms_per_step'] is None else format(r['ms_per_step'], '7.1f')} ms/step  "
              f"PSNR vs reference {fmt_db(r['psnr_vs_reference']):>9}  vs fp32 {fmt_db(r['psnr_vs_fp32_same_backend'])}"
              f"  drawn {r['drawn_correct']}/10")
    for f in failures:
        print(f"{f['variant']:>13} {f['backend'] or '(export)':<8} FAILED: {f['error']}")
    print(f"wrote {args.out}/contact_sheet.png, report.md, report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

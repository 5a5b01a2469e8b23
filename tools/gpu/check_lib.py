"""The non-GPU parts of tools/gpu/check.sh: golden comparison (PSNR), result rows, the table, PyTorch timing.

Subcommands (each prints one JSON row or the table; numpy and the standard library only, except `torch`):
  golden  --raw RAW.npy --variant V --provider P [--golden-dir D] [--report run.json]
          PSNR of the ten images of a pixeldit-run --save-raw output against tests/golden/digits/class_<c>.png,
          with V's threshold from tests/golden/digits/thresholds.json (the file crates/cli/tests/digits.rs reads).
  latency --report bench.txt --variant V --provider P   one row from `pixeldit-run bench` output
  torch   --preset XL-256 --size 256 --batch 2 --mode eager|compile --runs N --warmup N   (needs CUDA PyTorch)
  table   ROWS.jsonl        the Markdown table of all rows
"""

import argparse
import json
import math
import pathlib
import re
import struct
import sys
import zlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "digits"


def thresholds(golden_dir=GOLDEN):
    """Variant name -> minimum PSNR (dB) from thresholds.json."""
    return json.loads((golden_dir / "thresholds.json").read_text())["min_psnr_db"]


def read_png_rgb8(path):
    """Pixels of an 8-bit RGB, non-interlaced PNG as bytes (rows concatenated); anything else is an error."""
    data = pathlib.Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG file")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError(f"{path}: no IHDR chunk")
    width, height, depth, color, _, _, interlace = header
    if (depth, color, interlace) != (8, 2, 0):
        raise ValueError(f"{path}: expected 8-bit RGB non-interlaced, got depth {depth} color type {color} "
                         f"interlace {interlace}")
    raw, stride, bpp = zlib.decompress(idat), width * 3, 3
    out, prev = bytearray(), bytearray(stride)
    for row in range(height):
        start = row * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            elif kind != 0:
                raise ValueError(f"{path}: unknown PNG filter {kind} in row {row}")
        out += line
        prev = line
    return bytes(out), width, height


def images_rgb8(x):
    """The official fp2uint8 of x [N, 3, H, W] (floor(clip((x + 1) * 127.5 + 0.5, 0, 255))) as [N, H, W, 3] uint8."""
    import numpy as np
    u8 = np.floor(np.clip((x.astype(np.float64) + 1.0) * 127.5 + 0.5, 0, 255)).astype(np.uint8)
    return u8.transpose(0, 2, 3, 1)


def psnr_u8(a, b):
    """PSNR in dB (peak 255) of two uint8 arrays; infinite when identical."""
    import numpy as np
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def golden_row(raw_path, variant, provider, golden_dir=GOLDEN, report=None):
    """One table row: the PSNR of a raw output against the golden images and whether it meets the threshold."""
    import numpy as np
    x = np.load(raw_path)
    if x.shape != (10, 3, 32, 32):
        raise ValueError(f"{raw_path}: expected shape (10, 3, 32, 32) (classes 0-9), got {x.shape}")
    ours = images_rgb8(x)
    golden = np.stack([np.frombuffer(read_png_rgb8(golden_dir / f"class_{c}.png")[0], np.uint8).reshape(32, 32, 3)
                       for c in range(10)])
    psnr = psnr_u8(ours, golden)
    worst = min(range(10), key=lambda c: psnr_u8(ours[c], golden[c]))
    minimum = thresholds(golden_dir)[variant]
    row = {"kind": "golden", "variant": variant, "provider": provider, "psnr_db": psnr, "min_psnr_db": minimum,
           "worst_class": worst, "worst_psnr_db": psnr_u8(ours[worst], golden[worst]),
           "ok": bool(not math.isnan(psnr) and psnr >= minimum)}
    if report is not None:
        r = json.loads(pathlib.Path(report).read_text())
        row["ran_on"] = r.get("provider")
        row["ms_per_step"] = r.get("ms_per_step")
        # An explicit --device must not have run elsewhere; a report naming another provider is a failure.
        if row["ran_on"] and provider.lower() not in row["ran_on"].lower():
            row["ok"] = False
            row["error"] = f"ran on {row['ran_on']}"
    return row


def split_row(line):
    """Cells of one Markdown table row (escaped pipes kept inside cells)."""
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def latency_row(bench_output, variant, provider, model="XL-256"):
    """One row from the table `pixeldit-run bench` prints (columns `backend` and `median ms`); the run must have
    been on `provider`."""
    lines = pathlib.Path(bench_output).read_text().splitlines()
    row = {"kind": "latency", "model": model, "variant": variant, "provider": provider, "ms_per_step": None,
           "ok": False}
    head = next((i for i, line in enumerate(lines) if line.startswith("|") and "median ms" in line), None)
    if head is None or head + 2 >= len(lines):
        row["error"] = "no bench table in the output"
        return row
    cols = split_row(lines[head])
    cells = split_row(lines[head + 2])
    if len(cells) != len(cols):
        row["error"] = f"bench row has {len(cells)} cells, the header {len(cols)}"
        return row
    cell = dict(zip(cols, cells))
    row["ms_per_step"] = float(cell["median ms"])
    row["ran_on"] = cell["backend"]
    row["ok"] = provider.lower() in cell["backend"].lower()
    if not row["ok"]:
        row["error"] = f"ran on {cell['backend']}"
    return row


def fmt_ms(v):
    return "-" if v is None else f"{v:.1f}"


def fmt_db(v):
    return "inf" if v == math.inf else f"{v:.2f}"


def table(rows):
    """The Markdown table of golden and latency rows (failures marked), as one string."""
    lines = ["| check | variant | provider | result | threshold | ms/step | status |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        status = "ok" if r.get("ok") else "FAIL" + (f": {r['error']}" if r.get("error") else "")
        if r["kind"] == "golden":
            res = f"PSNR {fmt_db(r['psnr_db'])} dB (worst class {r['worst_class']}: {fmt_db(r['worst_psnr_db'])})" \
                if "psnr_db" in r else "-"
            limit = f">= {r['min_psnr_db']:g} dB" if "min_psnr_db" in r else "-"
            lines.append(f"| digits golden | {r['variant']} | {r['provider']} | {res} | {limit} "
                         f"| {fmt_ms(r.get('ms_per_step'))} | {status} |")
        else:
            lines.append(f"| {r.get('model', 'XL-256')} batch 2 | {r['variant']} | {r['provider']} | - | - | {fmt_ms(r.get('ms_per_step'))} "
                         f"| {status} |")
    failed = sum(1 for r in rows if not r.get("ok"))
    lines.append("")
    lines.append(f"{len(rows) - failed} of {len(rows)} checks passed")
    return "\n".join(lines)


def torch_latency(preset, size, batch, mode, runs, warmup, device="cuda"):
    """Per-forward latency (ms, median) of the PyTorch port (tools/bench/torch_pixeldit.py, random weights of seed
    0) under bf16 autocast on `device`, eager or torch.compile."""
    import time
    import numpy as np
    import torch
    sys.path.insert(0, str(ROOT / "tools" / "bench"))
    sys.path.insert(0, str(ROOT / "reference"))
    from checkpoint import make_random_checkpoint  # noqa: E402
    from torch_pixeldit import PixelDiT  # noqa: E402
    cfg = json.loads((ROOT / "graphs" / f"{preset}.json").read_text())
    dev = torch.device(device)
    # The port builds a few tensors inside forward (timestep frequencies) on the default device.
    torch.set_default_device(dev)
    model = PixelDiT(make_random_checkpoint(cfg, 0), cfg, size, size).eval()
    model.p = {k: v.to(dev) for k, v in model.p.items()}
    for name in ("cos", "sin", "pcos", "psin", "pe"):
        setattr(model, name, getattr(model, name).to(dev))
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, 3, size, size)).astype(np.float32)).to(dev)
    t = torch.full((batch,), 0.5, device=dev, dtype=torch.float32)
    y = torch.zeros((batch,), device=dev, dtype=torch.int64)
    fn = torch.compile(model) if mode == "compile" else model
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
        out = None
        for _ in range(warmup):
            out = fn(x, t, y)
        sync()
        ms = []
        for _ in range(runs):
            s = time.perf_counter()
            out = fn(x, t, y)
            sync()
            ms.append((time.perf_counter() - s) * 1e3)
    if out is not None and (tuple(out.shape) != (batch, 3, size, size) or not bool(torch.isfinite(out).all())):
        raise SystemExit(f"torch {mode}: bad output shape {tuple(out.shape)} or non-finite values")
    return {"kind": "latency", "model": preset, "variant": "bf16", "provider": f"PyTorch {torch.__version__} {mode}",
            "ms_per_step": float(np.median(ms)), "ok": True}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("golden")
    g.add_argument("--raw", required=True)
    g.add_argument("--variant", required=True)
    g.add_argument("--provider", required=True)
    g.add_argument("--golden-dir", default=str(GOLDEN))
    g.add_argument("--report")
    lat = sub.add_parser("latency")
    lat.add_argument("--report", required=True)
    lat.add_argument("--variant", required=True)
    lat.add_argument("--provider", required=True)
    lat.add_argument("--model", default="XL-256")
    t = sub.add_parser("torch")
    t.add_argument("--preset", default="XL-256")
    t.add_argument("--size", type=int, default=256)
    t.add_argument("--batch", type=int, default=2)
    t.add_argument("--mode", choices=["eager", "compile"], required=True)
    t.add_argument("--runs", type=int, default=10)
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--device", default="cuda")
    tb = sub.add_parser("table")
    tb.add_argument("rows")
    a = ap.parse_args(argv)
    if a.cmd == "golden":
        print(json.dumps(golden_row(a.raw, a.variant, a.provider, pathlib.Path(a.golden_dir), a.report)))
    elif a.cmd == "latency":
        print(json.dumps(latency_row(a.report, a.variant, a.provider, a.model)))
    elif a.cmd == "torch":
        print(json.dumps(torch_latency(a.preset, a.size, a.batch, a.mode, a.runs, a.warmup, a.device)))
    else:
        rows = [json.loads(line) for line in pathlib.Path(a.rows).read_text().splitlines() if line.strip()]
        print(table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])

#!/usr/bin/env bash
# Self-test of tools/gpu/check.sh without a GPU (`tools/gpu/check.sh --self-test`, run by scripts/test.sh):
# argument parsing, pack.sh + reassembly with checksums (and that a corrupt, missing or stray piece is refused),
# the golden comparison (PSNR, thresholds from tests/golden/digits/thresholds.json), the bench-table parser, the
# result table, and, when PIXELDIT_CHECK_BIN_DIR names built binaries, a real run of the golden step on the ONNX
# Runtime CPU provider.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
[ ! -x .venv/bin/python ] || PYTHON=.venv/bin/python
export PYTHON
tmp=$(mktemp -d "${TMPDIR:-/tmp}/pixeldit-check-selftest.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fails=0
ok() { echo "ok   $1"; }
bad() { echo "FAIL $1"; fails=$((fails + 1)); }
expect_in() { if grep -qF -- "$2" <<<"$3"; then ok "$1"; else bad "$1: expected '$2' in: $3"; fi; }
# expect_re NAME ERE TEXT: TEXT matches the extended regular expression.
expect_re() { if grep -qE -- "$2" <<<"$3"; then ok "$1"; else bad "$1: expected /$2/ in: $3"; fi; }
# expect_fail NAME MESSAGE CMD...: CMD fails and its stderr contains MESSAGE.
expect_fail() {
  local name=$1 msg=$2 out; shift 2
  if out=$("$@" 2>&1); then bad "$name: succeeded"; else expect_in "$name" "$msg" "$out"; fi
}

echo "== arguments"
expect_fail "unknown flag" "unknown argument '--gpu'" tools/gpu/check.sh --gpu
expect_fail "unknown provider" "--providers: unknown item 'rocm'" tools/gpu/check.sh --providers cuda,rocm --print-plan
expect_fail "unknown variant" "--variants: unknown item 'int4'" tools/gpu/check.sh --variants int4 --print-plan
expect_fail "bad count" "--runs must be a whole number, got 'x'" tools/gpu/check.sh --runs x
expect_fail "missing value" "--work needs a value" tools/gpu/check.sh --work
plan=$(tools/gpu/check.sh --print-plan)
[ "$(grep -c '^golden: ' <<<"$plan")" = 14 ] && ok "plan: 7 variants x 2 providers" || bad "plan golden rows: $plan"
[ "$(grep -c '^latency: XL-256' <<<"$plan")" = 10 ] && ok "plan: 5 XL precisions x 2 providers" || bad "plan XL rows: $plan"
expect_in "plan: torch eager" "latency: PyTorch bf16 eager" "$plan"
expect_in "plan: torch compile" "latency: PyTorch bf16 compile" "$plan"
plan=$(tools/gpu/check.sh --print-plan --providers cuda --variants fp8 --no-xl --bundle /b)
[ "$plan" = $'reassemble: /b -> out/gpu-check/bundle\ngolden: digits fp8 on cuda\nbudget: 330s, step timeout 120s' ] \
  && ok "plan: restricted" || bad "plan restricted: $plan"

echo "== pack and reassemble"
stage=$tmp/stage
mkdir -p "$stage/bin" "$stage/lib" "$stage/models"
head -c 250000 /dev/urandom >"$stage/lib/libonnxruntime_providers_cuda.so"
printf 'binary' >"$stage/bin/pixeldit-run"
printf 'model' >"$stage/models/digits_fp32.onnx"
(cd "$stage" && find . -type f | sort | xargs sha256sum) >"$tmp/manifest" && mv "$tmp/manifest" "$stage/MANIFEST.sha256"
tools/gpu/pack.sh --stage "$stage" --out "$tmp/bundle" --piece-bytes 100000 2>/dev/null
n=$(ls "$tmp/bundle"/pixeldit-gpu.tgz.part-* | wc -l)
[ "$n" -ge 3 ] && ok "pack: $n pieces" || bad "pack: expected at least 3 pieces, got $n"
big=$(find "$tmp/bundle" -name 'pixeldit-gpu.tgz.part-*' -size +100000c | wc -l)
[ "$big" = 0 ] && ok "pack: pieces within the size" || bad "pack: $big piece(s) over 100000 bytes"
# shellcheck source=check.sh
source tools/gpu/check.sh
if reassemble "$tmp/bundle" "$tmp/out" 2>"$tmp/err" && diff -r "$stage" "$tmp/out" >/dev/null; then
  ok "reassemble: identical files"
else
  bad "reassemble: $(cat "$tmp/err")"
fi
cp "$tmp/bundle/pixeldit-gpu.tgz.part-001" "$tmp/saved"
# Flip every bit of byte 10 (writing a fixed byte would be a no-op when the piece already holds it).
"$PYTHON" -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[10] ^= 0xFF; open(p, "wb").write(b)' \
  "$tmp/bundle/pixeldit-gpu.tgz.part-001"
expect_fail "reassemble: corrupt piece refused" "pixeldit-gpu.tgz.part-001: FAILED" reassemble "$tmp/bundle" "$tmp/out2"
mv "$tmp/saved" "$tmp/bundle/pixeldit-gpu.tgz.part-001"
mv "$tmp/bundle/pixeldit-gpu.tgz.part-002" "$tmp/saved"
expect_fail "reassemble: missing piece refused" "piece $tmp/bundle/pixeldit-gpu.tgz.part-002 is missing" \
  reassemble "$tmp/bundle" "$tmp/out3"
mv "$tmp/saved" "$tmp/bundle/pixeldit-gpu.tgz.part-002"
printf 'stray' >"$tmp/bundle/pixeldit-gpu.tgz.part-099"
expect_fail "reassemble: stray piece refused" "part-099 is not in" reassemble "$tmp/bundle" "$tmp/out4"
rm "$tmp/bundle/pixeldit-gpu.tgz.part-099"
# An archive whose content does not match its manifest (a file changed before packing).
printf 'other' >"$stage/bin/pixeldit-run"
tools/gpu/pack.sh --stage "$stage" --out "$tmp/bundle2" --piece-bytes 100000 2>/dev/null
expect_fail "reassemble: manifest mismatch refused" "differ from MANIFEST.sha256" reassemble "$tmp/bundle2" "$tmp/out5"

echo "== golden comparison, bench parsing and the table"
"$PYTHON" - "$tmp" <<'PY' || fails=$((fails + 1))
import json, math, pathlib, shutil, subprocess, sys
import numpy as np
sys.path.insert(0, "tools/gpu")
import check_lib as cl

tmp = pathlib.Path(sys.argv[1])
failures = []
def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + ("" if cond else f": {detail}"))
    if not cond:
        failures.append(name)

# The golden raw x from the safetensors file (parsed by hand: 8-byte header length, JSON header, data).
blob = (cl.GOLDEN / "digits_golden.safetensors").read_bytes()
n = int.from_bytes(blob[:8], "little")
head = json.loads(blob[8:8 + n])
a, b = head["x"]["data_offsets"]
x = np.frombuffer(blob[8 + n + a:8 + n + b], np.float32).reshape(head["x"]["shape"])
np.save(tmp / "golden.npy", x)

# The PNG decoder and fp2uint8 agree with the committed images (the README: within 1 per value).
pngs = np.stack([np.frombuffer(cl.read_png_rgb8(cl.GOLDEN / f"class_{c}.png")[0], np.uint8).reshape(32, 32, 3)
                 for c in range(10)])
diff = np.abs(cl.images_rgb8(x).astype(int) - pngs.astype(int)).max()
check("golden x converts to the golden PNGs", diff <= 1, f"max difference {diff}")

def golden(raw, variant, golden_dir=cl.GOLDEN, report=None):
    args = [sys.executable, "tools/gpu/check_lib.py", "golden", "--raw", str(raw), "--variant", variant,
            "--provider", "cuda", "--golden-dir", str(golden_dir)] + (["--report", str(report)] if report else [])
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)

r = golden(tmp / "golden.npy", "fp32")
check("golden x passes fp32", r["ok"] and r["psnr_db"] >= 60, r)
noisy = x + np.random.default_rng(1).normal(0, 0.05, x.shape).astype(np.float32)
np.save(tmp / "noisy.npy", noisy)
r = golden(tmp / "noisy.npy", "fp32")
check("noisy x fails fp32 (60 dB)", not r["ok"] and r["psnr_db"] < 60 and r["min_psnr_db"] == 60, r)
want = 10 * math.log10(255**2 / np.mean((cl.images_rgb8(noisy).astype(float) - pngs.astype(float)) ** 2))
check("PSNR formula", abs(r["psnr_db"] - want) < 1e-9, (r["psnr_db"], want))
r8 = golden(tmp / "noisy.npy", "fp8")
check("thresholds come from thresholds.json", r8["min_psnr_db"] == json.loads(
    (cl.GOLDEN / "thresholds.json").read_text())["min_psnr_db"]["fp8"], r8)
gd = tmp / "golden-copy"
shutil.copytree(cl.GOLDEN, gd, ignore=shutil.ignore_patterns("*.safetensors", "*.npy"))
t = json.loads((gd / "thresholds.json").read_text())
t["min_psnr_db"]["fp32"] = r["psnr_db"] - 1
(gd / "thresholds.json").write_text(json.dumps(t))
check("a lower threshold in the file lets it pass", golden(tmp / "noisy.npy", "fp32", gd)["ok"])
(tmp / "run.json").write_text(json.dumps({"provider": "CPUExecutionProvider", "ms_per_step": 1.5}))
r = golden(tmp / "golden.npy", "fp32", report=tmp / "run.json")
check("a run on another provider fails", not r["ok"] and r["error"] == "ran on CPUExecutionProvider", r)
np.save(tmp / "wrong.npy", x[:2])
p = subprocess.run([sys.executable, "tools/gpu/check_lib.py", "golden", "--raw", str(tmp / "wrong.npy"),
                    "--variant", "fp32", "--provider", "cuda"], capture_output=True, text=True)
check("a wrong shape is an error", p.returncode != 0 and "expected shape (10, 3, 32, 32)" in p.stderr, p.stderr)

bench = tmp / "bench.txt"
bench.write_text("| date | machine | command | model | precision | backend | batch | median ms | min ms | max ms |\n"
                 "|---|---|---|---|---|---|---|---|---|---|\n"
                 "| 2026-11-29 | h200 | `pixeldit-run bench x \\| y` | xl256_fp16.onnx (XL 256x256, decomposed) "
                 "| fp16 | ort/CUDAExecutionProvider | 2 | 12.34 | 12.00 | 13.00 |\n")
r = cl.latency_row(bench, "fp16", "cuda")
check("bench table parsed", r["ok"] and r["ms_per_step"] == 12.34 and r["ran_on"] == "ort/CUDAExecutionProvider", r)
r = cl.latency_row(bench, "fp16", "tensorrt")
check("bench on another provider fails", not r["ok"] and r["error"] == "ran on ort/CUDAExecutionProvider", r)
bench.write_text("pixeldit-run: error: something\n")
check("no bench table fails", cl.latency_row(bench, "fp16", "cuda")["error"] == "no bench table in the output")

rows = [
    {"kind": "golden", "variant": "fp32", "provider": "cuda", "psnr_db": math.inf, "min_psnr_db": 60.0,
     "worst_class": 0, "worst_psnr_db": math.inf, "ok": True, "ms_per_step": 1.25},
    {"kind": "golden", "variant": "fp8", "provider": "tensorrt", "psnr_db": 20.5, "min_psnr_db": 28.0,
     "worst_class": 3, "worst_psnr_db": 15.25, "ok": False},
    {"kind": "golden", "variant": "int8", "provider": "tensorrt", "ok": False, "error": "exit 1: libnvinfer.so.10"},
    {"kind": "latency", "variant": "fp16", "provider": "cuda", "ms_per_step": 12.34, "ok": True},
    {"kind": "latency", "variant": "bf16", "provider": "PyTorch compile", "ok": False,
     "error": "skipped: over the time budget"},
]
(tmp / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
out = subprocess.run([sys.executable, "tools/gpu/check_lib.py", "table", str(tmp / "rows.jsonl")], check=True,
                     capture_output=True, text=True).stdout
want = """| check | variant | provider | result | threshold | ms/step | status |
|---|---|---|---|---|---|---|
| digits golden | fp32 | cuda | PSNR inf dB (worst class 0: inf) | >= 60 dB | 1.2 | ok |
| digits golden | fp8 | tensorrt | PSNR 20.50 dB (worst class 3: 15.25) | >= 28 dB | - | FAIL |
| digits golden | int8 | tensorrt | - | - | - | FAIL: exit 1: libnvinfer.so.10 |
| XL-256 batch 2 | fp16 | cuda | - | - | 12.3 | ok |
| XL-256 batch 2 | bf16 | PyTorch compile | - | - | - | FAIL: skipped: over the time budget |

2 of 5 checks passed
"""
check("table", out == want, "\n" + out)
sys.exit(1 if failures else 0)
PY

if [ -n "${PIXELDIT_CHECK_BIN_DIR:-}" ]; then
  echo "== the golden step for real on the ONNX Runtime CPU provider (binaries in $PIXELDIT_CHECK_BIN_DIR)"
  rc=0
  out=$(tools/gpu/check.sh --bin-dir "$PIXELDIT_CHECK_BIN_DIR" --ort-lib-dir .cache/onnxruntime --providers cpu \
    --variants fp32,fp16 --no-xl --work "$tmp/run" 2>&1) || rc=$?
  [ "$rc" = 0 ] && ok "check.sh on cpu exits 0" || bad "check.sh on cpu: exit $rc: $out"
  expect_in "cpu: fp32 row" "| digits golden | fp32 | cpu | PSNR inf dB (worst class 0: inf) | >= 60 dB |" "$out"
  expect_in "cpu: fp16 row" "| digits golden | fp16 | cpu | PSNR " "$out"
  expect_in "cpu: summary" "2 of 2 checks passed" "$out"
  # The latency step (export with the XL calibration flags, pixeldit-run bench, parsing) on the tiny preset.
  rc=0
  out=$(tools/gpu/check.sh --bin-dir "$PIXELDIT_CHECK_BIN_DIR" --ort-lib-dir .cache/onnxruntime --providers cpu \
    --variants fp32 --xl-preset tiny --xl-size 32 --xl-precisions fp16,int8 --no-torch --runs 2 --warmup 1 \
    --work "$tmp/run-xl" 2>&1) || rc=$?
  [ "$rc" = 0 ] && ok "check.sh latency on cpu exits 0" || bad "check.sh latency on cpu: exit $rc: $out"
  expect_in "cpu: fp16 latency row" "| tiny batch 2 | fp16 | cpu | - | - | " "$out"
  expect_in "cpu: int8 latency row" "| tiny batch 2 | int8 | cpu | - | - | " "$out"
  expect_in "cpu: latency summary" "3 of 3 checks passed" "$out"
  # The same run with a bad library: a failed row with the reason, a non-zero exit, a table all the same.
  rc=0
  gpu_dir=.cache/onnxruntime-gpu
  [ -f "$gpu_dir/libonnxruntime_providers_cuda.so" ] || gpu_dir=.cache/onnxruntime
  out=$(PIXELDIT_GPU_SITE_PACKAGES=$tmp/none tools/gpu/check.sh --bin-dir "$PIXELDIT_CHECK_BIN_DIR" \
    --ort-lib-dir "$gpu_dir" --providers cuda --variants fp32 --no-xl --work "$tmp/run" 2>&1) || rc=$?
  [ "$rc" = 1 ] && ok "check.sh on cuda without a GPU exits 1" || bad "check.sh on cuda: exit $rc: $out"
  expect_in "cuda: failed row" "| digits golden | fp32 | cuda | - | - | - | FAIL: exit 2: pixeldit-run: error: \
CUDAExecutionProvider was requested but cannot be used: " "$out"
  if [ "$gpu_dir" = .cache/onnxruntime-gpu ]; then
    # libcublasLt.so.13 on a bare machine; libcuda.so.1 (the driver) once `setup.sh --gpu` installed the pip CUDA
    # libraries that the GPU build finds through the site-packages file beside it.
    expect_re "cuda: the missing library in the row" \
      "(libcublasLt\.so\.13|libcuda\.so\.1): cannot open shared object file" "$out"
  fi
else
  echo "(PIXELDIT_CHECK_BIN_DIR not set: the real CPU run of the golden step is skipped)"
fi

[ "$fails" = 0 ] || { echo "check self-test: $fails failure(s)"; exit 1; }
echo "check self-test: all passed"

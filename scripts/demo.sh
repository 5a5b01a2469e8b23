#!/usr/bin/env bash
# The main job on the embedded default model (graphs/digits.*): set up, build, export every variant, sample
# classes 0-9 on every available backend with the golden noise (tests/golden/digits/noise.npy), and write the
# images, a contact sheet and a report (markdown + JSON: PSNR against the Python reference, ms/step, provider)
# under out/ (or $1).
#
#   PRECISIONS="fp32 fp16" BACKENDS="tract" scripts/demo.sh   # a subset
#
# A variant that does not export, or a variant/backend pair that does not run, is listed in the report with its
# error; the script fails only when fp32 does not run on a CPU backend.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
scripts/setup.sh
export ORT_DYLIB_PATH="$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1"
echo "== building (release)" >&2
cargo build --release --locked -q -p pixeldit-cli
bin=${CARGO_TARGET_DIR:-target}/release

precisions=${PRECISIONS:-"fp32 fp16 bf16 int8 fp8 int8-weights fp8-weights"}
if [ -z "${BACKENDS:-}" ]; then
  backends="ort-cpu tract"
  # GPU providers only where a GPU is visible (they are skipped, with their error, when the library lacks them).
  if [ -e /dev/nvidia0 ]; then backends="$backends ort-cuda ort-tensorrt"; fi
else
  backends=$BACKENDS
fi
noise=tests/golden/digits/noise.npy
classes=0,1,2,3,4,5,6,7,8,9

mkdir -p "$out/runs"
rm -f "$out"/runs/digits_* "$out"/digits_*.png "$out"/contact_sheet.png "$out"/report.md "$out"/report.json

for p in $precisions; do
  echo "== export digits $p" >&2
  if ! "$bin/pixeldit-export" --preset digits --precision "$p" -q -o "$out/digits_$p.onnx" \
      >"$out/runs/digits_$p.export.log" 2>&1; then
    mv "$out/runs/digits_$p.export.log" "$out/runs/digits_$p.export-failed"
    echo "   export failed: $(tail -n 1 "$out/runs/digits_$p.export-failed")" >&2
    continue
  fi
  for b in $backends; do
    case $b in
      ort-cpu) args=(--backend ort --device cpu) ;;
      tract) args=(--backend tract) ;;
      ort-cuda) args=(--backend ort --device cuda) ;;
      ort-tensorrt) args=(--backend ort --device tensorrt) ;;
      *) echo "unknown backend '$b' (ort-cpu, tract, ort-cuda, ort-tensorrt)" >&2; exit 2 ;;
    esac
    run="$out/runs/digits_${p}_$b"
    echo "== $p on $b" >&2
    if "$bin/pixeldit-run" "$out/digits_$p.onnx" "${args[@]}" --classes "$classes" --noise "$noise" \
        --grid -q -o "$out/digits_${p}_$b.png" --save-raw "$run.npy" --report-json "$run.json" >"$run.log" 2>&1; then
      grep '^backend ' "$run.log" >&2 || true
    else
      mv "$run.log" "$run.failed"
      echo "   failed: $(grep -i error "$run.failed" | tail -n 1)" >&2
    fi
  done
done

.venv/bin/python tools/demo_report.py "$out"
status=0
for b in $backends; do
  case $b in ort-cpu | tract)
    if [ ! -f "$out/runs/digits_fp32_$b.json" ]; then
      echo "demo: fp32 did not run on $b" >&2
      status=1
    fi ;;
  esac
done
echo "images, contact sheet and report in $out/ (open $out/report.md)" >&2
exit $status

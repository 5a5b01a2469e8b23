#!/usr/bin/env bash
# The main job on the embedded default models: set up, build, export every variant, sample on every available
# backend with the golden noise, and write the images, a contact sheet and a report (markdown + JSON: PSNR against
# the Python reference, ms/step, provider) under out/ (or $1):
#   * digits (class-conditional, graphs/digits.*): classes 0-9 -> out/;
#   * digits-t2i (text-to-image, graphs/digits-t2i.*): ten prompts "an image of the digit <word>" through the
#     exported tiny Gemma-2 encoder -> out/t2i/.
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
  backends="ort-cpu tract openvino"
  # GPU providers only where a GPU is visible (they are skipped, with their error, when the library lacks them).
  if [ -e /dev/nvidia0 ]; then backends="$backends ort-cuda ort-tensorrt"; fi
else
  backends=$BACKENDS
fi
# backend_args BACKEND: the pixeldit-run flags of a demo backend name, into the array `args`.
backend_args() {
  case $1 in
    ort-cpu) args=(--backend ort --device cpu) ;;
    tract) args=(--backend tract) ;;
    openvino) args=(--backend openvino) ;;
    ort-cuda) args=(--backend ort --device cuda) ;;
    ort-tensorrt) args=(--backend ort --device tensorrt) ;;
    *) echo "unknown backend '$1' (ort-cpu, tract, openvino, ort-cuda, ort-tensorrt)" >&2; exit 2 ;;
  esac
}

# demo_model MODEL DIR EXPORT_ARGS RUN_ARGS: export MODEL in every precision into DIR, sample it on every backend
# with RUN_ARGS (conditions, golden noise), then the contact sheet and report (tools/demo_report.py --model MODEL).
# The argument strings are split on spaces (repository paths without spaces).
demo_model() {
  local model=$1 dir=$2 export_args=$3 run_args=$4 p b run
  mkdir -p "$dir/runs"
  rm -f "$dir"/runs/"${model}"_* "$dir"/"${model}"_*.png "$dir"/contact_sheet.png "$dir"/report.md "$dir"/report.json
  for p in $precisions; do
    echo "== export $model $p" >&2
    # shellcheck disable=SC2086
    if ! "$bin/pixeldit-export" --preset "$model" --precision "$p" $export_args -q -o "$dir/${model}_$p.onnx" \
        >"$dir/runs/${model}_$p.export.log" 2>&1; then
      mv "$dir/runs/${model}_$p.export.log" "$dir/runs/${model}_$p.export-failed"
      echo "   export failed: $(tail -n 1 "$dir/runs/${model}_$p.export-failed")" >&2
      continue
    fi
    for b in $backends; do
      backend_args "$b"
      run="$dir/runs/${model}_${p}_$b"
      onnx="$dir/${model}_$p.onnx"
      if [ "$b" = openvino ]; then
        # OpenVINO has no custom ops: the same variant with the standard (decomposed) attention lowering.
        onnx="$dir/${model}_${p}_decomposed.onnx"
        # shellcheck disable=SC2086
        if ! "$bin/pixeldit-export" --preset "$model" --precision "$p" $export_args \
            --attention decomposed -q -o "$onnx" >"$run.log" 2>&1; then
          mv "$run.log" "$run.failed"
          echo "   decomposed export failed: $(tail -n 1 "$run.failed")" >&2
          continue
        fi
      fi
      echo "== $model $p on $b" >&2
      # shellcheck disable=SC2086
      if "$bin/pixeldit-run" "$onnx" "${args[@]}" $run_args --grid -q \
          -o "$dir/${model}_${p}_$b.png" --save-raw "$run.npy" --report-json "$run.json" >"$run.log" 2>&1; then
        grep '^backend ' "$run.log" >&2 || true
      else
        mv "$run.log" "$run.failed"
        echo "   failed: $(grep -i error "$run.failed" | tail -n 1)" >&2
      fi
    done
  done
  demo_cache "$model" "$dir" "$run_args"
  .venv/bin/python tools/demo_report.py "$dir" --model "$model"
}

# demo_cache MODEL DIR RUN_ARGS: the patch-level step cache on the fp32 and int8 exports (CPU backends): N = 2
# (front-loaded, the default, and uniform), 3 and a threshold, each next to the uncached sampler with about the same
# FLOPs (fewer steps); demo_report.py puts them in the report's "Patch-level step cache" table.
demo_cache() {
  local model=$1 dir=$2 run_args=$3 p b setting run steps
  mkdir -p "$dir/runs/cache"
  rm -f "$dir"/runs/cache/"${model}"_*
  for p in fp32 int8; do
    [ -f "$dir/${model}_$p.onnx" ] || continue
    for b in $backends; do
      case $b in ort-cpu | tract) ;; *) continue ;; esac
      backend_args "$b"
      for setting in cache2 uniform2 cache3 threshold0.25; do
        case $setting in
          cache*) flags=(--patch-cache "${setting#cache}") ;;
          uniform*) flags=(--patch-cache "${setting#uniform}" --patch-cache-schedule uniform) ;;
          threshold*) flags=(--patch-cache-threshold "${setting#threshold}") ;;
        esac
        run="$dir/runs/cache/${model}_${p}_${b}_$setting"
        echo "== $model $p on $b, ${flags[*]}" >&2
        # shellcheck disable=SC2086
        if ! "$bin/pixeldit-run" "$dir/${model}_$p.onnx" "${args[@]}" $run_args "${flags[@]}" --grid -q \
            -o "$run.png" --save-raw "$run.npy" --report-json "$run.json" >"$run.log" 2>&1; then
          mv "$run.log" "$run.failed"
          echo "   failed: $(grep -i error "$run.failed" | tail -n 1)" >&2
          continue
        fi
        steps=$(.venv/bin/python -c "import json,sys; r=json.load(open(sys.argv[1])); \
print(max(1, round(r['steps'] * r['patch_cache']['relative_flops'])))" "$run.json")
        run="$dir/runs/cache/${model}_${p}_${b}_steps$steps"
        [ -f "$run.json" ] && continue
        # shellcheck disable=SC2086
        "$bin/pixeldit-run" "$dir/${model}_$p.onnx" "${args[@]}" $run_args --steps "$steps" --grid -q \
          -o "$run.png" --save-raw "$run.npy" --report-json "$run.json" >"$run.log" 2>&1 \
          || mv "$run.log" "$run.failed"
      done
    done
  done
}

# Class-conditional: classes 0-9.
demo_model digits "$out" "" "--classes 0,1,2,3,4,5,6,7,8,9 --noise tests/golden/digits/noise.npy"

# Text-to-image: prompts in (held out from training), through the exported tiny Gemma-2 encoder and its tokenizer;
# quantized variants calibrate on a training phrasing per class.
t2i=$out/t2i
mkdir -p "$t2i"
echo "== export the text encoder (tiny Gemma-2 of tests/golden/gemma)" >&2
"$bin/pixeldit-export" --text-encoder tests/golden/gemma/model -q -o "$t2i/gemma.onnx" >/dev/null
cp tests/golden/gemma/model/tokenizer.json "$t2i/tokenizer.json"
printf 'an image of the digit %s\n' zero one two three four five six seven eight nine >"$t2i/prompts.txt"
demo_model digits-t2i "$t2i" \
  "--calib-embeddings tests/golden/digits-t2i/calib.npy --calib-negative tests/golden/digits-t2i/negative.npy" \
  "--prompts-file $t2i/prompts.txt --text-encoder $t2i/gemma.onnx --noise tests/golden/digits-t2i/noise.npy"

status=0
for b in $backends; do
  case $b in ort-cpu | tract)
    for f in "$out/runs/digits_fp32_$b.json" "$t2i/runs/digits-t2i_fp32_$b.json"; do
      if [ ! -f "$f" ]; then
        echo "demo: fp32 did not run on $b ($f missing)" >&2
        status=1
      fi
    done ;;
  esac
done
echo "images, contact sheets and reports in $out/ (open $out/report.md and $out/t2i/report.md)" >&2
exit $status

#!/usr/bin/env bash
# GPU acceptance check for one H100/H200 without network: prints one table with
#   * every digits variant on each provider vs the golden images (thresholds: tests/golden/digits/thresholds.json,
#     the same file the CPU golden tests read), and
#   * XL-256 batch 2 per-forward (= per CFG step) latency for fp32/fp16/bf16/fp8/int8 on each provider, next to
#     PyTorch bf16 eager and torch.compile (tools/bench/torch_pixeldit.py, random weights, bf16 autocast).
# Run it from a checkout of this repository (it reads tests/golden/digits, graphs/ and tools/bench/).
#
# Usage: tools/gpu/check.sh [options]
#   --bundle DIR          pieces from tools/gpu/pack.sh: verify every piece and the whole archive against
#                         DIR/SHA256SUMS, reassemble, unpack (binaries, GPU libraries, digits models)
#   --bin-dir DIR         pixeldit-run / pixeldit-export to use without a bundle (default: the release build)
#   --ort-lib-dir DIR     ONNX Runtime library folder without a bundle (default: .cache/onnxruntime-gpu)
#   --work DIR            scratch folder (default: out/gpu-check); the table goes to DIR/table.md
#   --providers LIST      comma list of cuda, tensorrt, cpu (default: cuda,tensorrt)
#   --variants LIST       digits variants (default: fp32,fp16,bf16,int8,fp8,int8-weights,fp8-weights)
#   --xl-precisions LIST  XL-256 precisions (default: fp32,fp16,bf16,fp8,int8); --no-xl skips XL
#   --xl-preset P, --xl-size N   the latency model (default XL-256 at 256; the self-test uses tiny)
#   --no-torch            skip the PyTorch rows
#   --runs N, --warmup N  timed / warm-up forwards per XL row (default 10 / 3)
#   --budget-s N          stop starting new steps after N seconds (default 330; with the step limit the run stays
#                         under 8 minutes); steps not started are rows marked "skipped: over the time budget"
#   --step-timeout-s N    limit of one step (default 120)
#   --print-plan          print the steps and exit
#   --self-test           test the parts that need no GPU (arguments, reassembly and checksums, golden
#                         comparison, table) on this machine; run by scripts/test.sh
# Environment: PIXELDIT_GPU_SITE_PACKAGES (where the pip CUDA/TensorRT libraries are; default: this Python's
# site-packages), PYTHON (default python3; needs numpy, and torch with CUDA for the PyTorch rows).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
here=tools/gpu

bundle=
bin_dir=
ort_dir=.cache/onnxruntime-gpu
work=out/gpu-check
providers=cuda,tensorrt
variants=fp32,fp16,bf16,int8,fp8,int8-weights,fp8-weights
xl_precisions=fp32,fp16,bf16,fp8,int8
xl_preset=XL-256
xl_size=256
torch_rows=1
runs=10
warmup=3
budget_s=330
step_timeout_s=120
print_plan=0
self_test=0
PYTHON=${PYTHON:-python3}

die() { echo "check: $*" >&2; exit 2; }
need_value() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
is_count() { case "$2" in ''|*[!0-9]*) die "$1 must be a whole number, got '$2'" ;; esac; }
# check_list FLAG LIST ALLOWED...: every comma-separated item of LIST is one of ALLOWED.
check_list() {
  local flag=$1 list=$2 item; shift 2
  [ -n "$list" ] || die "$flag needs at least one item"
  IFS=, read -ra items <<<"$list"
  for item in "${items[@]}"; do
    case " $* " in *" $item "*) ;; *) die "$flag: unknown item '$item' (expected one of: $*)" ;; esac
  done
}

parse_args() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --bundle) need_value "$@"; bundle=$2; shift 2 ;;
      --bin-dir) need_value "$@"; bin_dir=$2; shift 2 ;;
      --ort-lib-dir) need_value "$@"; ort_dir=$2; shift 2 ;;
      --work) need_value "$@"; work=$2; shift 2 ;;
      --providers) need_value "$@"; providers=$2; shift 2 ;;
      --variants) need_value "$@"; variants=$2; shift 2 ;;
      --xl-precisions) need_value "$@"; xl_precisions=$2; shift 2 ;;
      --no-xl) xl_precisions=; shift ;;
      --xl-preset) need_value "$@"; xl_preset=$2; shift 2 ;;
      --xl-size) need_value "$@"; is_count "$1" "$2"; xl_size=$2; shift 2 ;;
      --no-torch) torch_rows=0; shift ;;
      --runs) need_value "$@"; is_count "$1" "$2"; runs=$2; shift 2 ;;
      --warmup) need_value "$@"; is_count "$1" "$2"; warmup=$2; shift 2 ;;
      --budget-s) need_value "$@"; is_count "$1" "$2"; budget_s=$2; shift 2 ;;
      --step-timeout-s) need_value "$@"; is_count "$1" "$2"; step_timeout_s=$2; shift 2 ;;
      --print-plan) print_plan=1; shift ;;
      --self-test) self_test=1; shift ;;
      -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
  check_list --providers "$providers" cuda tensorrt cpu
  check_list --variants "$variants" fp32 fp16 bf16 int8 fp8 int8-weights fp8-weights
  [ -z "$xl_precisions" ] || check_list --xl-precisions "$xl_precisions" fp32 fp16 bf16 fp8 int8
  [ "$runs" -ge 1 ] || die "--runs must be at least 1"
}

# reassemble BUNDLE DEST: verifies every piece listed in BUNDLE/SHA256SUMS, joins them in order, verifies the
# whole archive, unpacks it into DEST and verifies DEST/MANIFEST.sha256 when present. Any mismatch is an error
# naming the file.
reassemble() {
  local b=$1 dest=$2 sums=$1/SHA256SUMS name
  [ -f "$sums" ] || { echo "check: $sums missing" >&2; return 1; }
  local pieces=() line
  while read -r line; do
    name=${line##* }; name=${name#\*}
    case "$name" in pixeldit-gpu.tgz.part-*) pieces+=("$name") ;; esac
  done <"$sums"
  [ ${#pieces[@]} -gt 0 ] || { echo "check: $sums lists no pieces" >&2; return 1; }
  for name in "${pieces[@]}"; do
    [ -f "$b/$name" ] || { echo "check: piece $b/$name is missing" >&2; return 1; }
  done
  local extra
  for extra in "$b"/pixeldit-gpu.tgz.part-*; do
    grep -q " \*\{0,1\}$(basename "$extra")\$" "$sums" || { echo "check: $extra is not in $sums" >&2; return 1; }
  done
  if ! (cd "$b" && grep ' \*\{0,1\}pixeldit-gpu.tgz.part-' SHA256SUMS | sha256sum --quiet -c -) >&2; then
    echo "check: a piece in $b does not match its SHA256SUMS line (see above)" >&2; return 1
  fi
  mkdir -p "$dest"
  local joined=$dest.tgz
  # Pieces in name order (part-000, part-001, ...), which is the order split wrote them.
  (cd "$b" && printf '%s\n' "${pieces[@]}" | sort | xargs cat) >"$joined"
  local want got
  want=$(grep ' \*\{0,1\}pixeldit-gpu.tgz$' "$sums" | cut -d' ' -f1)
  got=$(sha256sum "$joined" | cut -d' ' -f1)
  if [ -z "$want" ] || [ "$want" != "$got" ]; then
    rm -f "$joined"; echo "check: the joined archive does not match pixeldit-gpu.tgz in $sums" >&2; return 1
  fi
  tar -C "$dest" -xzf "$joined"
  rm -f "$joined"
  if [ -f "$dest/MANIFEST.sha256" ]; then
    (cd "$dest" && sha256sum --quiet -c MANIFEST.sha256) >&2 || { echo "check: unpacked files differ from MANIFEST.sha256" >&2; return 1; }
  fi
}

# --- steps -------------------------------------------------------------------------------------------------------
start_s=$(date +%s)
rows=
over_budget() { [ $(( $(date +%s) - start_s )) -ge "$budget_s" ]; }
skip_row() { # kind variant provider reason
  printf '{"kind": "%s", "variant": "%s", "provider": "%s", "ok": false, "error": "%s"}\n' "$1" "$2" "$3" "$4" >>"$rows"
}
fail_row() { # kind variant provider logfile exit-code
  local last
  # From the first "error:" line on (else the last line), joined, without ONNX Runtime's source location prefix,
  # short enough for a table cell.
  if grep -q 'error:' "$4"; then last=$(sed -n '/error:/,$p' "$4"); else last=$(grep -v '^\s*$' "$4" | tail -n 1); fi
  last=$(printf '%s' "$last" | tr '\n' ' ' | tr -d '"\\|' | tr -s ' ' \
    | sed 's#/onnxruntime_src/[^ ]* [^[]*\[ONNXRuntimeError\] : [0-9]* : [A-Z_]* : ##' | cut -c1-400)
  skip_row "$1" "$2" "$3" "exit $5: $last"
}

run_golden() { # variant provider
  local v=$1 p=$2 d=$work/golden/$1-$2
  mkdir -p "$d"
  if over_budget; then skip_row golden "$v" "$p" "skipped: over the time budget"; return; fi
  local rc=0
  timeout "$step_timeout_s" "$bin/pixeldit-run" "$models/digits_$v.onnx" --backend ort --device "$p" \
    --ort-lib "$lib" --trt-cache "$work/trt-cache" --classes 0,1,2,3,4,5,6,7,8,9 \
    --noise tests/golden/digits/noise.npy -q -o "$d/grid.png" --grid --save-raw "$d/raw.npy" \
    --report-json "$d/run.json" >"$d/log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    "$PYTHON" "$here/check_lib.py" golden --raw "$d/raw.npy" --variant "$v" --provider "$p" \
      --report "$d/run.json" >>"$rows" 2>"$d/psnr.log" || fail_row golden "$v" "$p" "$d/psnr.log" 1
  else
    fail_row golden "$v" "$p" "$d/log" "$rc"
  fi
}

run_xl() { # precision provider
  local v=$1 p=$2 d=$work/xl
  mkdir -p "$d"
  if over_budget; then skip_row latency "$v" "$p" "skipped: over the time budget"; return; fi
  local name=${xl_preset}_${xl_size}_$v model rc=0
  model=$d/$name.onnx
  if [ ! -f "$model" ]; then
    # int8/fp8 calibrate on the CPU: one class, one seed, two sampler steps (the exporter's advice for XL).
    local calib=()
    case "$v" in int8|fp8) calib=(--calib-classes 0 --calib-seeds 0 --calib-steps 2) ;; esac
    # Exported under its final name in a scratch folder (the .onnx names its .data file), then moved: data and
    # the quantization summary first, the .onnx last, so an existing .onnx is always complete.
    local part=$d/part-$v
    rm -rf "$part"; mkdir -p "$part"
    timeout "$step_timeout_s" "$bin/pixeldit-export" --preset "$xl_preset" --height "$xl_size" --width "$xl_size" \
      --random-init --seed 0 --precision "$v" --attention decomposed ${calib[@]+"${calib[@]}"} -q -o "$part/$name.onnx" \
      >"$d/export-$v.log" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then rm -rf "$part"; fail_row latency "$v" "$p" "$d/export-$v.log" "$rc"; return; fi
    local f
    for f in "$part"/*; do [ "$f" = "$part/$name.onnx" ] || mv "$f" "$d/"; done
    mv "$part/$name.onnx" "$model"
    rmdir "$part"
  fi
  timeout "$step_timeout_s" "$bin/pixeldit-run" bench "$model" --backend ort --device "$p" --ort-lib "$lib" \
    --trt-cache "$work/trt-cache" --batch 2 --runs "$runs" --warmup "$warmup" >"$d/bench-$v-$p.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    "$PYTHON" "$here/check_lib.py" latency --report "$d/bench-$v-$p.log" --variant "$v" --provider "$p" \
      --model "$xl_preset" >>"$rows"
  else
    fail_row latency "$v" "$p" "$d/bench-$v-$p.log" "$rc"
  fi
}

run_torch() { # mode
  local d=$work/torch rc=0
  mkdir -p "$d"
  if over_budget; then skip_row latency bf16 "PyTorch $1" "skipped: over the time budget"; return; fi
  timeout "$step_timeout_s" "$PYTHON" "$here/check_lib.py" torch --preset "$xl_preset" --size "$xl_size" --batch 2 --mode "$1" \
    --runs "$runs" --warmup "$warmup" >"$d/$1.json" 2>"$d/$1.log" || rc=$?
  if [ "$rc" = 0 ]; then cat "$d/$1.json" >>"$rows"; else fail_row latency bf16 "PyTorch $1" "$d/$1.log" "$rc"; fi
}

self_test() {
  exec "$here/check_selftest.sh"
}

main() {
  parse_args "$@"
  [ "$self_test" = 0 ] || self_test
  IFS=, read -ra P <<<"$providers"
  IFS=, read -ra V <<<"$variants"
  IFS=, read -ra X <<<"$xl_precisions"
  if [ "$print_plan" = 1 ]; then
    if [ -n "$bundle" ]; then echo "reassemble: $bundle -> $work/bundle"; fi
    for v in "${V[@]}"; do for p in "${P[@]}"; do echo "golden: digits $v on $p"; done; done
    for v in ${X[@]+"${X[@]}"}; do for p in "${P[@]}"; do echo "latency: $xl_preset $v batch 2 on $p"; done; done
    if [ -n "$xl_precisions" ] && [ "$torch_rows" = 1 ]; then echo "latency: PyTorch bf16 eager"; echo "latency: PyTorch bf16 compile"; fi
    echo "budget: ${budget_s}s, step timeout ${step_timeout_s}s"
    return 0
  fi
  mkdir -p "$work"
  rows=$work/rows.jsonl
  : >"$rows"
  if [ -n "$bundle" ]; then
    rm -rf "$work/bundle"
    reassemble "$bundle" "$work/bundle" || exit 1
    bin=$work/bundle/bin lib=$work/bundle/lib/libonnxruntime.so.1.31.1 models=$work/bundle/models
  else
    bin=${bin_dir:-${CARGO_TARGET_DIR:-target}/release}
    lib=$ort_dir/libonnxruntime.so.1.31.1
    models=$work/models
    mkdir -p "$models"
    for v in "${V[@]}"; do
      [ -f "$models/digits_$v.onnx" ] || "$bin/pixeldit-export" --preset digits \
        --checkpoint graphs/digits.safetensors --precision "$v" --pixel-ops standard -q -o "$models/digits_$v.onnx"
    done
  fi
  [ -x "$bin/pixeldit-run" ] || die "$bin/pixeldit-run missing (--bundle or --bin-dir)"
  [ -f "$lib" ] || die "$lib missing (--bundle, --ort-lib-dir or tools/gpu/fetch_ort_gpu.sh)"
  if [ -z "${PIXELDIT_GPU_SITE_PACKAGES:-}" ]; then
    PIXELDIT_GPU_SITE_PACKAGES=$("$PYTHON" -c "import site; print(':'.join(site.getsitepackages() + [site.getusersitepackages()]))" 2>/dev/null || true)
    export PIXELDIT_GPU_SITE_PACKAGES
  fi
  echo "check: $(nvidia-smi -L 2>/dev/null | head -n 1 || echo 'nvidia-smi not available')" >&2
  echo "check: library $lib; pip GPU libraries from ${PIXELDIT_GPU_SITE_PACKAGES:-nowhere}" >&2
  for v in "${V[@]}"; do for p in "${P[@]}"; do run_golden "$v" "$p"; done; done
  for v in ${X[@]+"${X[@]}"}; do for p in "${P[@]}"; do run_xl "$v" "$p"; done; done
  if [ -n "$xl_precisions" ] && [ "$torch_rows" = 1 ]; then run_torch eager; run_torch compile; fi
  "$PYTHON" "$here/check_lib.py" table "$rows" | tee "$work/table.md"
  echo "check: $(( $(date +%s) - start_s )) s; table in $work/table.md, logs under $work" >&2
  ! grep -q '"ok": false' "$rows"
}

# Sourced by the self-test for its functions; run otherwise.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then main "$@"; fi

#!/usr/bin/env bash
# Patch-level step cache benchmark: ms per image without and with `pixeldit-run --patch-cache` (N = 2, 3 and the
# threshold 0.25) on B@256 (batch 2, CFG: 4 rows per forward) and t2i-tiny, on ONNX Runtime CPU and tract, with the
# FLOPs per image of each setting. Runs are interleaved (round-major) and the medians and ratios printed as a
# markdown table for BENCHMARKS.md. Random weights: speed only (quality is in the demo report).
#
#   tools/bench/patch_cache.sh                        # STEPS=10 ROUNDS=3 BACKENDS="ort tract"
#   STEPS=6 ROUNDS=2 BACKENDS=ort MODELS=B tools/bench/patch_cache.sh
#   SPLIT=modulation tools/bench/patch_cache.sh       # the export's --patch-split (default tokens)
#   PIXEL_OPS=fused tools/bench/patch_cache.sh        # the export's --pixel-ops (default standard)
#   SETTINGS="off cache2 uniform2" tools/bench/patch_cache.sh   # cacheN: --patch-cache N (front-loaded schedule),
#                                                     # uniformN: --patch-cache-schedule uniform, thresholdX
#   CONFIGS="tokens:standard tokens:fused modulation:fused" tools/bench/patch_cache.sh
#                                                     # several exports (split:pixel-ops), interleaved per round
set -euo pipefail
cd "$(dirname "$0")/../.."
steps=${STEPS:-10}
rounds=${ROUNDS:-3}
backends=${BACKENDS:-"ort tract"}
models=${MODELS:-"B t2i-tiny"}
settings=${SETTINGS:-"off cache2 cache3 threshold0.25"}
configs=${CONFIGS:-"${SPLIT:-tokens}:${PIXEL_OPS:-standard}"}
base=${OUT:-target/bench-patch-cache}
# config_dir SPLIT:OPS -> the folder of that export (the same folders as before CONFIGS existed).
config_dir() {
  local split=${1%%:*} ops=${1#*:}
  if [ "$ops" = standard ]; then echo "$base/$split"; else echo "$base/$split-$ops"; fi
}
# The runs and the table of all configs go to the first config's folder, or to a shared one for several.
set -- $configs
if [ $# -eq 1 ]; then out=$(config_dir "$1"); else out=$base/compare; fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1}
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -q -p pixeldit-cli
fi
mkdir -p "$out/runs"
rm -f "$out"/runs/*.json

for config in $configs; do
  case "$config" in
    tokens:standard|tokens:fused|modulation:standard|modulation:fused|cond:standard|cond:fused) ;;
    *) echo "patch_cache: config '$config': expected SPLIT:OPS (split tokens|modulation|cond, ops standard|fused)" >&2
       exit 2 ;;
  esac
  dir=$(config_dir "$config")
  mkdir -p "$dir"
  for model in $models; do
    if [ ! -f "$dir/$model.onnx" ] || [ ! -f "$dir/$model.pixel.onnx" ]; then
      echo "== export $model (random weights, --patch-split ${config%%:*}, --pixel-ops ${config#*:})" >&2
      "$bin/pixeldit-export" --preset "$model" --random-init --patch-split "${config%%:*}" \
        --pixel-ops "${config#*:}" -q -o "$dir/$model.onnx"
    fi
  done
done
if [[ " $models " == *" t2i-tiny "* ]]; then
  # Synthetic text embeddings [300 rows of the preset, embed_dim] for the text-to-image model.
  .venv/bin/python - "$out" <<'EOF'
import json, pathlib, sys
import numpy as np
out = pathlib.Path(sys.argv[1])
cfg = json.loads(pathlib.Path("graphs/t2i-tiny.json").read_text())["text"]
rng = np.random.default_rng(0)
np.save(out / "text.npy", rng.standard_normal((cfg["max_length"], cfg["embed_dim"])).astype(np.float32))
np.save(out / "negative.npy", np.zeros((cfg["max_length"], cfg["embed_dim"]), np.float32))
EOF
fi

for round in $(seq 1 "$rounds"); do
 for config in $configs; do
  dir=$(config_dir "$config")
  # The config is part of the model label when several are compared.
  if [ "$(echo $configs | wc -w)" -gt 1 ]; then tag="-${config/:/-}"; else tag=; fi
  for model in $models; do
    case $model in
      t2i-tiny) cond=(--text-embeddings "$out/text.npy" --negative-embeddings "$out/negative.npy" --batch 2) ;;
      *) cond=(--class 1 --batch 2) ;;
    esac
    for backend in $backends; do
      for setting in $settings; do
        case $setting in
          off) flags=() ;;
          cache*) flags=(--patch-cache "${setting#cache}") ;;
          uniform*) flags=(--patch-cache "${setting#uniform}" --patch-cache-schedule uniform) ;;
          threshold*) flags=(--patch-cache-threshold "${setting#threshold}") ;;
        esac
        echo "== round $round: $model$tag $backend $setting" >&2
        "$bin/pixeldit-run" "$dir/$model.onnx" --backend "$backend" --device cpu "${cond[@]}" --steps "$steps" \
          "${flags[@]}" --grid -q -o "$out/runs/x.png" \
          --report-json "$out/runs/${model}${tag}_${backend}_${setting}_$round.json"
      done
    done
  done
 done
done

.venv/bin/python - "$out/runs" "$steps" <<'EOF'
import collections, json, pathlib, statistics, sys
runs, steps = pathlib.Path(sys.argv[1]), sys.argv[2]
by = collections.defaultdict(dict)
info = {}
for p in sorted(runs.glob("*.json")):
    model, backend, setting, rnd = p.stem.rsplit("_", 3)
    r = json.loads(p.read_text())
    by[(model, backend, setting)][rnd] = 1e3 * r["total_s"] / r["images"]
    cache = r.get("patch_cache") or {}
    info[(model, backend, setting)] = (cache.get("whole_forwards", r["forwards"]),
                                       cache.get("pixel_level_forwards", 0), r["gflops_per_image"])
print(f"| model | backend | setting ({steps} steps) | whole / pixel-level forwards | GFLOPs per image "
      "| ms per image (median) | speed-up: per-round ratios to off (median) | rounds |")
print("|---|---|---|---:|---:|---:|---|---:|")
for (model, backend, setting), ms in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "off")):
    base = by.get((model, backend, "off"), {})
    ratios = sorted(base[r] / v for r, v in ms.items() if r in base)
    whole, pixel, gflops = info[(model, backend, setting)]
    shown = ", ".join(f"{x:.2f}" for x in ratios)
    med = f"{statistics.median(ratios):.2f}x" if ratios else "-"
    print(f"| {model} | {backend} | {setting} | {whole} / {pixel} | {gflops:.1f} "
          f"| {statistics.median(ms.values()):.0f} | {shown} ({med}) | {len(ms)} |")
EOF

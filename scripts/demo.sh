#!/usr/bin/env bash
# The main job on the embedded default model (graphs/digits.*): set up, build, export every variant, sample on
# every available backend, and write the images and a report under out/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
scripts/setup.sh
export ORT_DYLIB_PATH="$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1"
echo "== building (release)" >&2
cargo build --release --locked -q -p pixeldit-exporter -p pixeldit-runtime
mkdir -p "$out"
precisions=${PRECISIONS:-"fp32 fp16"}
backends=${BACKENDS:-"ort tract"}
for p in $precisions; do
  target/release/pixeldit-export --preset digits --precision "$p" -o "$out/digits_$p.onnx"
done
for p in $precisions; do
  for b in $backends; do
    echo "== $p on $b" >&2
    target/release/pixeldit-run "$out/digits_$p.onnx" --backend "$b" --classes 0,1,2,3,4,5,6,7,8,9 --seed 0 \
      --grid -o "$out/digits_${p}_$b.png"
  done
done
echo "images in $out/" >&2

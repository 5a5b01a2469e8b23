#!/usr/bin/env bash
# Packs what tools/gpu/check.sh needs on a GPU machine without network into pieces under 60 MB with checksums:
#   bin/pixeldit-run, bin/pixeldit-export            release binaries (built here if missing)
#   lib/libonnxruntime*.so*                           the onnxruntime-gpu 1.31.1 libraries (CUDA provider: 284 MB)
#   models/digits_<variant>.onnx                      every digits variant, exported from graphs/digits.safetensors
# as one gzip'ed tar split into <out>/pixeldit-gpu.tgz.part-NNN, with <out>/SHA256SUMS (every piece and the whole
# archive). Copy the folder's files to the GPU machine (each piece is one transfer), then run
#   tools/gpu/check.sh --bundle <folder>
#
# Usage: tools/gpu/pack.sh [--out DIR] [--stage DIR] [--piece-bytes N] [--bin-dir DIR] [--ort-gpu-dir DIR]
#   --out DIR          where the pieces go (default: out/gpu-bundle); emptied first
#   --stage DIR        pack this folder as it is instead of collecting binaries, libraries and models (tests)
#   --piece-bytes N    piece size (default 60000000, under the 64 MiB transfer limit)
#   --bin-dir DIR      folder with pixeldit-run and pixeldit-export (default: the release build)
#   --ort-gpu-dir DIR  folder with the GPU libraries (default: .cache/onnxruntime-gpu, see fetch_ort_gpu.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=out/gpu-bundle
stage=
piece_bytes=60000000
bin_dir=
ort_dir=.cache/onnxruntime-gpu
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --piece-bytes) piece_bytes=$2; shift 2 ;;
    --bin-dir) bin_dir=$2; shift 2 ;;
    --ort-gpu-dir) ort_dir=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "pack: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
case "$piece_bytes" in ''|*[!0-9]*) echo "pack: --piece-bytes must be a number of bytes, got '$piece_bytes'" >&2; exit 2 ;; esac

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pixeldit-pack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if [ -z "$stage" ]; then
  if [ -z "$bin_dir" ]; then
    cargo build --release -q -p pixeldit-cli
    bin_dir=${CARGO_TARGET_DIR:-target}/release
  fi
  tools/gpu/fetch_ort_gpu.sh "$ort_dir"
  stage=$tmp/stage
  mkdir -p "$stage/bin" "$stage/lib" "$stage/models"
  cp "$bin_dir/pixeldit-run" "$bin_dir/pixeldit-export" "$stage/bin/"
  cp "$ort_dir"/libonnxruntime*.so* "$stage/lib/"
  for v in fp32 fp16 bf16 int8 fp8 int8-weights fp8-weights; do
    "$stage/bin/pixeldit-export" --preset digits --checkpoint graphs/digits.safetensors --precision "$v" \
      --pixel-ops standard -q -o "$stage/models/digits_$v.onnx"
  done
  (cd "$stage" && find . -type f | sort | xargs sha256sum) >"$tmp/manifest" && mv "$tmp/manifest" "$stage/MANIFEST.sha256"
fi
[ -d "$stage" ] || { echo "pack: $stage is not a folder" >&2; exit 2; }

rm -rf "$out"
mkdir -p "$out"
tar -C "$stage" -czf "$tmp/pixeldit-gpu.tgz" .
split -b "$piece_bytes" -d -a 3 "$tmp/pixeldit-gpu.tgz" "$out/pixeldit-gpu.tgz.part-"
(cd "$out" && sha256sum pixeldit-gpu.tgz.part-* > SHA256SUMS.part)
(cd "$tmp" && sha256sum pixeldit-gpu.tgz) >> "$out/SHA256SUMS.part"
mv "$out/SHA256SUMS.part" "$out/SHA256SUMS"
n=$(ls "$out"/pixeldit-gpu.tgz.part-* | wc -l)
echo "pack: $n piece(s) of at most $piece_bytes bytes in $out ($(du -sh "$out" | cut -f1)), checksums in $out/SHA256SUMS" >&2

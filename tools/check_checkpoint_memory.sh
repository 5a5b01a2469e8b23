#!/usr/bin/env bash
# Writes a PyTorch-Lightning checkpoint of official size (XL-256: EMA + non-EMA copy + two AdamW moments, 12.8 GB,
# zip64) in the torch.save layout and exports it, printing the peak resident set of the export (release build).
# Needs ~17 GB of free disk in PIXELDIT_MEMORY_DIR (default: the temp dir); skips with a message otherwise.
#
# Usage: tools/check_checkpoint_memory.sh [PRESET]      (PRESET: XL-256 (default), XL-512, L, B, tiny)
set -euo pipefail
cd "$(dirname "$0")/.."
export PIXELDIT_MEMORY_PRESET="${1:-XL-256}"
exec cargo test --release -p pixeldit-exporter --test checkpoint_memory -- --ignored --nocapture

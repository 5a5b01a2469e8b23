#!/usr/bin/env bash
# Regenerates tests/golden/checkpoints/ with PyTorch's own torch.save (not needed in CI: the files are committed).
#
# PyPI only has the CUDA build of torch for Linux x86_64, and `import torch` needs the CUDA libraries even on a CPU:
# libtorch_cpu.so links libcudart/libcupti, libtorch_cuda.so the rest. torch.save / torch.load on CPU tensors never
# call into them, so instead of the ~3 GB of nvidia-* wheels this script builds empty stub libraries that export the
# versioned symbols torch links against (tools/gen_cuda_stubs.py); torch then imports and runs on the CPU (do not
# touch torch.cuda in this environment). Everything lives in a temporary directory.
#
# Usage: tools/gen_checkpoint_fixtures.sh [WORK_DIR]      (needs python3, gcc, ~1.5 GB of disk, PyPI access)
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-$(mktemp -d)}"
TORCH_VERSION="${TORCH_VERSION:-2.15.0}"
echo "work dir: $work" >&2
if [ ! -x "$work/venv/bin/python" ]; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install -q --no-deps "torch==$TORCH_VERSION"
    "$work/venv/bin/pip" install -q numpy filelock typing-extensions sympy networkx jinja2 fsspec safetensors
fi
"$work/venv/bin/python" tools/gen_cuda_stubs.py "$work/venv" "$work/cuda-stubs"
.venv/bin/python tools/gen_checkpoint_fixtures.py plain
LD_LIBRARY_PATH="$work/cuda-stubs" "$work/venv/bin/python" tools/gen_checkpoint_fixtures.py torch

"""Regenerate the forward golden files into a temporary directory and compare with the committed ones.

Exits 0 when every committed file in tests/golden/forward/*.safetensors has the
same tensor names, dtypes and shapes as the regenerated one and every value
differs by less than 1e-6 (integers must match exactly); exits 1 otherwise.

Usage: ``.venv/bin/python reference/check_golden.py``
"""

import pathlib
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

import gen_forward_golden

TOLERANCE = 1e-6


def compare(committed, fresh):
    """List of mismatch descriptions between two tensor dicts (empty when they match)."""
    problems = []
    if set(committed) != set(fresh):
        problems.append(f"tensor names differ: {sorted(set(committed) ^ set(fresh))}")
    for key in sorted(set(committed) & set(fresh)):
        a, b = committed[key], fresh[key]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{key}: {a.dtype}{list(a.shape)} vs regenerated {b.dtype}{list(b.shape)}")
            continue
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))
        limit = 0.0 if np.issubdtype(a.dtype, np.integer) else TOLERANCE
        if not diff <= limit:
            problems.append(f"{key}: max abs diff {diff:.3g}")
    return problems


def main():
    """Compare every golden file; print a summary and return the exit status."""
    committed_dir = gen_forward_golden.DEFAULT_OUT
    with tempfile.TemporaryDirectory() as tmp:
        gen_forward_golden.main(tmp)
        fresh_files = sorted(p.name for p in pathlib.Path(tmp).glob("*.safetensors"))
        failures = 0
        for name in fresh_files:
            path = committed_dir / name
            if not path.exists():
                print(f"FAIL {name}: missing from {committed_dir}")
                failures += 1
                continue
            problems = compare(load_file(str(path)), load_file(f"{tmp}/{name}"))
            for problem in problems:
                print(f"FAIL {name}: {problem}")
            failures += bool(problems)
            if not problems:
                print(f"ok   {name}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

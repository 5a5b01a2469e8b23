"""Regenerate the golden files into temporary directories and compare with the committed ones.

* tests/golden/forward/ (``gen_forward_golden.py``), tests/golden/t2i/ (``gen_t2i_golden.py``),
  tests/golden/digits/ (``gen_digits_golden.py``) and tests/golden/digits-t2i/ (``gen_digits_t2i_golden.py``, from
  its committed text embeddings):
  every committed ``*.safetensors`` must have the same tensor names, dtypes and shapes as the regenerated one,
  with every value within 1e-6 (integers exact).
* tests/golden/digits/: ``noise.npy`` must be identical, and every PNG must decode to the same size with pixel
  values within 1 (a float64 difference far below 1e-6 can still move a value across a rounding boundary).
* The reference images of the trained models must show the digit they were asked for (``digits``: class c,
  ``digits-t2i``: the held-out prompt "an image of the digit <c>"), judged by tools/digit_classifier.py.

Exits 0 when everything matches, 1 otherwise (about 10 s in all).

Usage: ``.venv/bin/python reference/check_golden.py``
"""

import pathlib
import sys
import tempfile

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tools"))
from digit_classifier import drawn  # noqa: E402  pylint: disable=wrong-import-position
import gen_digits_golden
import gen_digits_t2i_golden
import gen_forward_golden
import gen_t2i_golden

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


def compare_file(path, fresh_path):
    """Mismatches between a committed file and its regenerated version, by file type."""
    if path.suffix == ".safetensors":
        return compare(load_file(str(path)), load_file(str(fresh_path)))
    if path.suffix == ".npy":
        a, b = np.load(path, allow_pickle=False), np.load(fresh_path, allow_pickle=False)
        same = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        return [] if same else [f"differs from the regenerated array ({a.dtype}{list(a.shape)})"]
    if path.suffix == ".png":
        a, b = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (path, fresh_path))
        if a.shape != b.shape:
            return [f"size {a.shape} vs regenerated {b.shape}"]
        diff = int(np.max(np.abs(a - b), initial=0))
        return [] if diff <= 1 else [f"max pixel diff {diff}"]
    return [f"unknown file type {path.suffix}"]


def check(generator, committed_dir):
    """Regenerate with ``generator.main(tmp)`` and compare every generated file; returns the failure count."""
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        generator.main(tmp)
        for fresh in sorted(pathlib.Path(tmp).iterdir()):
            path = committed_dir / fresh.name
            label = f"{committed_dir.name}/{fresh.name}"
            if not path.exists():
                print(f"FAIL {label}: missing from {committed_dir}")
                failures += 1
                continue
            problems = compare_file(path, fresh)
            for problem in problems:
                print(f"FAIL {label}: {problem}")
            failures += bool(problems)
            if not problems:
                print(f"ok   {label}")
    return failures


def check_drawn(committed_dir, pattern):
    """1 when one of the ten images ``pattern.format(c=c)`` does not show digit c, else 0."""
    images = np.stack([np.asarray(Image.open(committed_dir / pattern.format(c=c)).convert("RGB")) for c in range(10)])
    digits, _ = drawn(images, range(10))
    wrong = [f"{pattern.format(c=c)} shows {d}" for c, d in enumerate(digits) if d != c]
    label = f"{committed_dir.name}/{pattern.format(c='<c>')}"
    if wrong:
        print(f"FAIL {label}: {', '.join(wrong)} (tools/digit_classifier.py)")
        return 1
    print(f"ok   {label} show digits 0-9")
    return 0


def main():
    """Compare every golden file; print a summary and return the exit status."""
    failures = check(gen_forward_golden, gen_forward_golden.DEFAULT_OUT)
    failures += check(gen_digits_golden, gen_digits_golden.DEFAULT_OUT)
    failures += check(gen_t2i_golden, gen_t2i_golden.DEFAULT_OUT)
    failures += check(gen_digits_t2i_golden, gen_digits_t2i_golden.DEFAULT_OUT)
    failures += check_drawn(gen_digits_golden.DEFAULT_OUT, "class_{c}.png")
    failures += check_drawn(gen_digits_t2i_golden.DEFAULT_OUT, "prompt_{c}.png")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

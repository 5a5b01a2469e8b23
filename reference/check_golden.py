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
* tests/golden/digits-t2i/32x48/ (``gen_digits_t2i_golden.py --nonsquare``; its full regeneration takes about 40 s,
  so by default it is verified without rerunning the sampler): the metadata names the current weights (SHA-256),
  the committed text rows and negative (SHA-256), prompts, size, seed and sampler settings; ``noise`` (and
  ``noise.npy``) equals the seed's draw bit for bit, ``sigmas`` and ``guided`` the sampler's; the last sampler step
  recomputed by the reference from the stored ``x_last_input`` gives the stored ``x`` within 1e-6; the PNGs are
  ``to_uint8(x)``. ``--full`` also regenerates it and compares every file as above.

Exits 0 when everything matches, 1 otherwise (a few minutes in all: the digits-t2i regeneration dominates).

Usage: ``.venv/bin/python reference/check_golden.py [--full]``
"""

import hashlib
import json
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
from checkpoint import load_checkpoint
from pixeldit_t2i_ref import forward
from samplers import flow_sigmas, sample_t2i, t2i_data_prediction, to_uint8

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


def check(generator, committed_dir, make=None):
    """Regenerate with ``make(tmp)`` (default ``generator.main``) and compare every generated file; returns the
    failure count."""
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        (make or generator.main)(tmp)
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


def nonsquare_problems(committed_dir):
    """Mismatches of the non-square digits-t2i set (``gen_digits_t2i_golden.py --nonsquare``), checked without
    rerunning the sampler: metadata, noise, sigmas and CFG flags, the last sampler step, the PNGs."""
    gen = gen_digits_t2i_golden
    path = committed_dir / gen.NONSQUARE_FILE
    if not path.exists():
        return [f"{gen.NONSQUARE_FILE} missing"]
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    meta = header.get("__metadata__", {})
    st = load_file(str(path))
    cfg = json.loads(gen.CONFIG.read_text())
    s = cfg["sampler"]
    prompts, text, negative = gen.nonsquare_inputs()
    k, (h, w) = len(prompts), gen.NONSQUARE_SIZE
    problems = []
    want_meta = {"preset": "digits-t2i", "noise_seed": str(gen.NONSQUARE_SEED), "prompts": json.dumps(prompts),
                 "negative_prompt": gen.NEGATIVE, "size": f"{h}x{w}", "text_rows": json.dumps(gen.NONSQUARE_DIGITS),
                 "weights_sha256": hashlib.sha256(gen.WEIGHTS.read_bytes()).hexdigest(),
                 "text_sha256": hashlib.sha256(np.ascontiguousarray(text).tobytes()).hexdigest(),
                 "negative_sha256": hashlib.sha256(np.ascontiguousarray(negative).tobytes()).hexdigest(),
                 "steps": str(s["steps"]), "cfg": str(s["cfg_scale"]), "shift": str(s["time_shift"])}
    problems += [f"metadata {key}: {meta.get(key)!r}, expected {v!r}" for key, v in want_meta.items()
                 if meta.get(key) != v]
    shapes = {"noise": (np.float32, (k, 3, h, w)), "sigmas": (np.float64, (s["steps"] + 1,)),
              "guided": (np.int64, (s["steps"],)), "x": (np.float32, (k, 3, h, w)),
              "x_last_input": (np.float64, (k, 3, h, w))}
    if set(st) != set(shapes):
        return problems + [f"tensor names {sorted(st)}, expected {sorted(shapes)}"]
    problems += [f"{n}: {st[n].dtype}{list(st[n].shape)}, expected {np.dtype(d)}{list(sh)}"
                 for n, (d, sh) in shapes.items() if st[n].dtype != d or st[n].shape != sh]
    if problems:
        return problems
    noise = np.random.default_rng(gen.NONSQUARE_SEED).standard_normal((k, 3, h, w)).astype(np.float32)
    if not np.array_equal(st["noise"], noise):
        problems.append("noise differs from default_rng(NONSQUARE_SEED).standard_normal")
    if not np.array_equal(np.load(committed_dir / "noise.npy", allow_pickle=False), noise):
        problems.append("noise.npy differs from default_rng(NONSQUARE_SEED).standard_normal")
    if not np.array_equal(st["sigmas"], flow_sigmas(s["steps"], s["time_shift"])):
        problems.append("sigmas differ from samplers.flow_sigmas")
    uncond = np.repeat(negative, k, axis=0).astype(np.float64)
    interval = tuple(s["guidance_interval"])
    # The CFG flags of the sampler (the model does not matter for them: a zero velocity on a small shape).
    _, guided = sample_t2i(lambda x, t, txt: np.zeros_like(x), np.zeros((1, 3, 16, 16)), text[:1].astype(np.float64),
                           uncond[:1], s["steps"], s["cfg_scale"], interval, s["time_shift"])
    if not np.array_equal(st["guided"], guided):
        problems.append(f"guided {st['guided'].tolist()}, the sampler's {guided.tolist()}")
    # The last step (DPM-Solver++ onto sigma = 0 returns the data prediction at sigma_{N-1}), by the reference.
    params = load_checkpoint(str(gen.WEIGHTS))
    x0, _ = t2i_data_prediction(lambda x, t, txt: forward(params, cfg, x, t, txt), st["x_last_input"],
                                st["sigmas"][s["steps"] - 1], text.astype(np.float64), uncond, s["cfg_scale"],
                                interval)
    diff = float(np.max(np.abs(x0 - st["x"].astype(np.float64))))
    if not diff <= TOLERANCE:
        problems.append(f"x: the reference's last step from x_last_input differs by {diff:.3g}")
    images = to_uint8(st["x"]).transpose(0, 2, 3, 1)
    for c, img in zip(gen.NONSQUARE_DIGITS, images):
        png = np.asarray(Image.open(committed_dir / f"prompt_{c}.png").convert("RGB"))
        if png.shape != img.shape or not np.array_equal(png, img):
            problems.append(f"prompt_{c}.png is not to_uint8(x[{c}])")
    grid = np.concatenate(list(images), axis=1).repeat(4, axis=0).repeat(4, axis=1)
    if not np.array_equal(np.asarray(Image.open(committed_dir / "grid.png").convert("RGB")), grid):
        problems.append("grid.png is not the images side by side, 4x")
    return problems


def check_nonsquare(committed_dir, full):
    """The non-square digits-t2i set: the fast checks, and with ``full`` the regeneration; the failure count."""
    problems = nonsquare_problems(committed_dir)
    label = f"{committed_dir.parent.name}/{committed_dir.name}"
    for problem in problems:
        print(f"FAIL {label}: {problem}")
    if not problems:
        print(f"ok   {label}: metadata, noise, sigmas, guided, last step, PNGs")
    failures = bool(problems)
    if full:
        failures += check(gen_digits_t2i_golden, committed_dir, gen_digits_t2i_golden.main_nonsquare)
    return failures


def main(full=False):
    """Compare every golden file; print a summary and return the exit status."""
    failures = check(gen_forward_golden, gen_forward_golden.DEFAULT_OUT)
    failures += check(gen_digits_golden, gen_digits_golden.DEFAULT_OUT)
    failures += check(gen_t2i_golden, gen_t2i_golden.DEFAULT_OUT)
    failures += check(gen_digits_t2i_golden, gen_digits_t2i_golden.DEFAULT_OUT)
    failures += check_nonsquare(gen_digits_t2i_golden.NONSQUARE_OUT, full)
    failures += check_drawn(gen_digits_golden.DEFAULT_OUT, "class_{c}.png")
    failures += check_drawn(gen_digits_t2i_golden.DEFAULT_OUT, "prompt_{c}.png")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main("--full" in sys.argv[1:]))

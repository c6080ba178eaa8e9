"""Post-hoc per-class logit offsets fitted on one half of the validation split; the gate judges the other half.

A long-tailed model's errors concentrate on a few confusable tail classes, and the decision rule
argmax_y f_y(x) + b_y can trade head-class recall for tail-class recall after training (post-hoc logit
adjustment, Menon et al. ICLR 2021, is the case b = -tau log prior; Narasimhan & Menon, NeurIPS 2021, fit
such per-class costs on held-out data for worst-class recall). Here b is fitted on the "fit" half of the
balanced validation split and exported in the SavedModel (models/export.py adds it to the logits); the
Evaluator's gate then scores only the other half, so the gate never judges what was tuned.

Which half an example falls in is a function of its encoded image bytes (FarmHash64 of them, two buckets:
``tf.strings.to_hash_bucket_fast``), so the Trainer and the Evaluator, reading the same split in any order,
agree without sharing an index.

Fitting (:func:`fit_offsets`) is coordinate ascent on a grid, by hand: scipy's optimisers need a smooth or
at least continuous objective, and recall on a finite set is a step function of b.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models import inputs
from models.export import model_logits

HASH_BUCKETS = 2
FIT_BUCKET = 0  # the half the offsets are fitted on; the gate judges bucket 1
HALVES_TEXT = "FarmHash64 of the encoded image bytes, 2 buckets: bucket 0 fits the offsets, bucket 1 is the gate's"


def holdout_bucket(encoded_images):
    """The hash bucket (0 or 1, int64) of each encoded image (a string tensor of PNG/JPEG bytes)."""
    return tf.strings.to_hash_bucket_fast(encoded_images, HASH_BUCKETS)


def recalls(logits, labels, num_classes: int, offsets=None) -> np.ndarray:
    """Per-class recall of argmax(logits + offsets); NaN for a class without examples."""
    logits = np.asarray(logits, np.float64)
    predicted = (logits if offsets is None else logits + np.asarray(offsets, np.float64)).argmax(1)
    labels = np.asarray(labels, np.int64)
    hits = np.bincount(labels[predicted == labels], minlength=num_classes).astype(np.float64)
    support = np.bincount(labels, minlength=num_classes).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(support > 0, hits / support, np.nan)


def objective(r: np.ndarray, worst_class_weight: float) -> float:
    """Balanced accuracy + w x the worst class's recall (classes without examples left out)."""
    r = r[~np.isnan(r)]
    return float(r.mean() + worst_class_weight * r.min()) if r.size else 0.0


def fit_offsets(logits, labels, num_classes: int, worst_class_weight: float = 1.0, max_offset: float = 2.0,
                step: float = 0.05, rounds: int = 4, base_offsets=None) -> dict:
    """Per-class offsets b (mean zero) maximising balanced accuracy + w x worst-class recall of argmax(logits + b)
    on (logits, labels): coordinate ascent over classes, each offset on a grid of ``step`` within
    ``base_offsets`` +- ``max_offset``, ``rounds`` sweeps (a sweep that improves nothing ends it).
    Returns {"offsets", "objective_before", "objective_after", "recall_before", "recall_after", "sweeps"}."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    base = np.zeros(num_classes) if base_offsets is None else np.asarray(base_offsets, np.float64)
    grid = np.arange(-max_offset, max_offset + step / 2, step)
    present = np.bincount(labels, minlength=num_classes) > 0

    def score(b):
        return objective(recalls(logits, labels, num_classes, b), worst_class_weight)

    b = base.copy()
    best = before = score(b)
    sweeps = 0
    for _ in range(rounds):
        sweeps += 1
        improved = False
        for c in np.flatnonzero(present):  # an absent class's offset cannot be measured: it stays at its base
            trial = b.copy()
            for g in grid:
                trial[c] = base[c] + g
                s = score(trial)
                if s > best + 1e-12:
                    best, b, improved = s, trial.copy(), True
        if not improved:
            break
    b -= (b - base).mean()  # a shared shift changes no argmax
    return {"offsets": b.tolist(), "objective_before": before, "objective_after": best,
            "recall_before": _listed(recalls(logits, labels, num_classes, base)),
            "recall_after": _listed(recalls(logits, labels, num_classes, b)), "sweeps": sweeps}


def _listed(r: np.ndarray) -> list:
    return [None if np.isnan(v) else float(v) for v in r]


def bucketed_records(file_pattern) -> tf.data.Dataset:
    """(encoded image, label, holdout bucket) of every record of a labeled split's TFRecords, in file order."""
    files = inputs.tfrecord_files(file_pattern)
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    ds = inputs.records(files).map(lambda r: tf.io.parse_single_example(r, spec))
    return ds.map(lambda ex: (ex["image"], ex["label"], holdout_bucket(ex["image"])))


def fit_half(file_pattern, image_shape, batch_size: int = 512):
    """(float images, labels) batches of the fit half of a labeled split's TFRecords, as the SavedModel decodes them."""
    ds = bucketed_records(file_pattern).filter(lambda image, label, bucket: tf.equal(bucket, FIT_BUCKET))
    ds = ds.map(lambda image, label, bucket: (inputs.to_float(inputs.decode_image(image, image_shape)), label))
    return ds.batch(batch_size)


def calibrate(model, cfg, eval_files, image_shape, num_classes: int, class_names=None, base_offsets=None,
              test_time_flip: bool = False) -> dict:
    """Fit the offsets of ``cfg`` (models.config.CalibrationConfig) for a Keras ``model`` (logits out) on the fit half of
    ``eval_files``, on the logits the SavedModel will serve (``test_time_flip``: models/export.py:model_logits); the
    summary block the Trainer records, its ``offsets`` the total to export (base included)."""
    if not eval_files:
        raise ValueError("calibration.method=class_offsets needs the Trainer's eval split (the validation images); "
                         "none was given")
    logits, labels = [], []
    for x, y in fit_half(eval_files, image_shape):
        logits.append(model_logits(model, x, test_time_flip).numpy())
        labels.append(y.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    support = np.bincount(labels, minlength=num_classes)
    result = fit_offsets(logits, labels, num_classes, cfg.worst_class_weight, cfg.max_offset, cfg.step,
                         base_offsets=base_offsets)
    names = list(class_names) if class_names else [f"class_{c}" for c in range(num_classes)]
    missing = [names[c] for c in np.flatnonzero(support == 0)]
    return {"method": cfg.method, "settings": {"worst_class_weight": cfg.worst_class_weight,
                                               "max_offset": cfg.max_offset, "step": cfg.step},
            "test_time_flip": bool(test_time_flip), "fit_examples": int(labels.size), "fit_support": support.tolist(),
            "halves": HALVES_TEXT,
            "offsets_by_class": dict(zip(names, (round(v, 4) for v in result["offsets"]))),
            "classes_without_fit_examples": missing, **result}

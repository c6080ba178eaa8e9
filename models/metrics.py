"""Per-class classification metrics from labels and predictions (NumPy; no framework)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """cm[i, j] = number of examples of true class i predicted as j."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(num_classes, -1)


def per_class_metrics(labels, predictions, num_classes: int, shot_groups: dict[str, list[int]] | None = None) -> dict:
    """Recall and precision per class, balanced accuracy, macro-F1 and per-shot-group accuracy.

    A class absent from ``labels`` has recall NaN (reported as None) and is left out of the means;
    an empty shot group has accuracy None rather than crashing the evaluation.
    """
    cm = confusion_matrix(labels, predictions, num_classes).astype(np.float64)
    support, predicted, hits = cm.sum(1), cm.sum(0), np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, hits / support, np.nan)
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0,
                      2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall)), 0.0)
    valid = support > 0

    def mean_or_none(values):
        values = [v for v in values if not np.isnan(v)]
        return float(np.mean(values)) if values else None

    out = {
        "num_examples": int(support.sum()),
        "accuracy": float(hits.sum() / max(support.sum(), 1)),
        "balanced_accuracy": mean_or_none(recall),
        "macro_f1": float(f1[valid].mean()) if valid.any() else None,
        "per_class_recall": [None if np.isnan(r) else float(r) for r in recall],
        "per_class_precision": [float(p) for p in precision],
        "per_class_support": support.astype(int).tolist(),
        "worst_class": int(np.nanargmin(recall)) if valid.any() else None,
        "worst_class_recall": float(np.nanmin(recall)) if valid.any() else None,
        "confusion_matrix": cm.astype(int).tolist(),
    }
    for group, classes in (shot_groups or {}).items():
        out[f"{group}_shot_accuracy"] = mean_or_none([recall[c] for c in classes]) if classes else None
    return out

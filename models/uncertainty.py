"""How sure the gate is: intervals on per-class recall and balanced accuracy, and a paired test of a drop.

A user's validation split may hold 5 images a class, where one image moves a class's recall by 0.2. The gate
states, next to every number it judges, the images it rests on and an interval:

- per-class recall: the Wilson score interval of hits k out of support n (scipy's ``binomtest(...).proportion_ci``),
  which stays inside [0, 1] and is not degenerate at k = 0 or k = n, unlike the normal approximation;
- balanced accuracy (the mean of the per-class recalls): a stratified percentile bootstrap, resampling each class's
  images within the class (hand-written: ``scipy.stats.bootstrap`` resamples the whole sample, so a tail class could
  vanish from a resample and balanced accuracy would change meaning);
- "no worse than the last blessed model": a paired stratified bootstrap of the drop
  d = BA(baseline) - BA(candidate) on the same images, resampling image indices once for both models, so the
  models' shared difficulty cancels. A drop is judged too large only when the one-sided lower bound of d exceeds the
  allowed drop: noise on a few images neither blocks a good model nor, with the floors in place, blesses a broken one.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000
# a class with fewer gate images than this cannot be judged: one image moves its recall by more than 0.2
MIN_SUPPORT = 5


def wilson_interval(hits: int, support: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion hits / support; None without examples."""
    if support <= 0:
        return None
    ci = binomtest(int(hits), int(support)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def _by_class(labels: np.ndarray, num_classes: int) -> list[np.ndarray]:
    return [np.flatnonzero(labels == c) for c in range(num_classes)]


def _balanced_accuracy(correct: np.ndarray, members: list[np.ndarray]) -> float:
    return float(np.mean([correct[m].mean() for m in members if m.size]))


def _resamples(members: list[np.ndarray], samples: int, seed: int):
    """Index arrays of stratified bootstrap resamples: each class's images drawn with replacement within the class."""
    rng = np.random.default_rng(seed)
    present = [m for m in members if m.size]
    for _ in range(samples):
        yield [m[rng.integers(0, m.size, m.size)] for m in present]


def recall_intervals(labels, predictions, num_classes: int, confidence: float = CONFIDENCE,
                     samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict:
    """Per-class support and Wilson intervals on recall, and a stratified bootstrap interval on balanced accuracy."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    correct = (labels == predictions).astype(np.float64)
    members = _by_class(labels, num_classes)
    support = [int(m.size) for m in members]
    hits = [int(correct[m].sum()) for m in members]
    intervals = [wilson_interval(h, n, confidence) for h, n in zip(hits, support)]
    ba = None
    if any(support):
        draws = [float(np.mean([correct[i].mean() for i in r])) for r in _resamples(members, samples, seed)]
        alpha = (1 - confidence) / 2
        ba = [float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))]
    return {"confidence": confidence, "per_class_support": support,
            "per_class_recall_interval": [list(i) if i else None for i in intervals],
            "balanced_accuracy_interval": ba, "bootstrap_samples": samples,
            "method": "Wilson score interval per class; stratified percentile bootstrap for balanced accuracy",
            "classes_too_small": [c for c, n in enumerate(support) if 0 < n < MIN_SUPPORT],
            "min_support": MIN_SUPPORT}


def paired_drop(labels, baseline_predictions, candidate_predictions, num_classes: int, classes=None,
                confidence: float = CONFIDENCE, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> dict | None:
    """Drop d = mean recall(baseline) - mean recall(candidate) over ``classes`` (default all), both models' predictions on
    the same images; its point value, a two-sided interval and the one-sided lower bound at ``confidence``, from a
    paired stratified bootstrap. None when no image of those classes is there."""
    labels = np.asarray(labels, np.int64)
    base = (np.asarray(baseline_predictions, np.int64) == labels).astype(np.float64)
    cand = (np.asarray(candidate_predictions, np.int64) == labels).astype(np.float64)
    members = [m for c, m in enumerate(_by_class(labels, num_classes)) if classes is None or c in set(classes)]
    if not any(m.size for m in members):
        return None
    diff = base - cand
    point = _balanced_accuracy(diff, members)
    draws = np.array([np.mean([diff[i].mean() for i in r]) for r in _resamples(members, samples, seed)])
    alpha = (1 - confidence) / 2
    return {"drop": point, "interval": [float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))],
            "lower_bound": float(np.quantile(draws, 1 - confidence)), "confidence": confidence,
            "images": int(sum(m.size for m in members)),
            "images_that_differ": int(np.sum(np.concatenate([diff[m] for m in members]) != 0)),
            "method": "paired stratified bootstrap on the same images"}

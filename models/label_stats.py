"""Class statistics derived from per-class counts: priors, imbalance ratio, shot groups, weights.

Pure NumPy; LabelStatsGen (components/) counts with Beam and calls :func:`derive_label_stats`.
"""

from __future__ import annotations

import math

import numpy as np

SHOT_GROUPS = ("many", "medium", "few")


def effective_number_weights(class_counts, beta: float = 0.9999) -> np.ndarray:
    """Class-balanced weights (Cui et al., CVPR 2019): w_c = (1 - beta) / (1 - beta^n_c),
    normalised to sum to the number of classes C. A class with n_c = 0 gets weight 0."""
    counts = np.asarray(class_counts, np.float64)
    effective = 1.0 - np.power(beta, counts)
    weights = np.where(counts > 0, (1.0 - beta) / np.where(effective > 0, effective, 1.0), 0.0)
    return weights * (len(counts) / weights.sum())


def default_shot_thresholds(class_counts) -> tuple[float, float]:
    """(many, few) thresholds scaled to the data: the log-count range [n_min, n_max] cut in thirds.

    The papers' fixed thresholds (many > 100, few < 20 training images) suit CIFAR-100-LT's 500-image
    head; for a 5000-image head they put every class in "many". Cutting log n into thirds gives, at
    rho=100, many >= floor(n_min * rho^(2/3)) and few < floor(n_min * rho^(1/3)).
    """
    present = [n for n in class_counts if n > 0]
    lo, hi = math.log(min(present)), math.log(max(present))
    # floored, so a class of an exponential profile (itself floored) lands in the group it is drawn for
    return float(math.floor(math.exp(lo + 2 * (hi - lo) / 3) + 1e-9)), float(math.floor(math.exp(lo + (hi - lo) / 3) + 1e-9))


def shot_groups(class_counts, many_threshold: float, few_threshold: float) -> dict[str, list[int]]:
    """many: n_c >= many_threshold; few: n_c < few_threshold; medium: the rest. A group may be empty."""
    groups = {g: [] for g in SHOT_GROUPS}
    for c, n in enumerate(class_counts):
        if n >= many_threshold:
            groups["many"].append(c)
        elif n < few_threshold:
            groups["few"].append(c)
        else:
            groups["medium"].append(c)
    return groups


def derive_label_stats(class_counts, class_names=None, many_threshold: float | None = None,
                       few_threshold: float | None = None, beta: float = 0.9999) -> dict:
    """Everything the Trainer and the gate read, from the per-class counts of the labeled split."""
    counts = [int(n) for n in class_counts]
    total = sum(counts)
    if total == 0:
        raise ValueError("no labeled examples")
    auto_many, auto_few = default_shot_thresholds(counts)
    many = auto_many if many_threshold is None else float(many_threshold)
    few = auto_few if few_threshold is None else float(few_threshold)
    present = [n for n in counts if n > 0]
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    return {
        "num_classes": len(counts),
        "class_names": list(class_names) if class_names else [str(c) for c in range(len(counts))],
        "num_examples": total,
        "class_counts": counts,
        "class_priors": [n / total for n in counts],
        "imbalance_ratio": max(present) / min(present),
        "classes_by_frequency": order,  # ranked by count, never assumed to be index order
        "shot_thresholds": {"many_at_least": many, "few_below": few,
                            "source": "scaled to the data (log-count thirds)" if many_threshold is None and few_threshold is None
                            else "configured"},
        "shot_groups": shot_groups(counts, many, few),
        "effective_number_beta": beta,
        "effective_number_weights": effective_number_weights(counts, beta).tolist(),
    }

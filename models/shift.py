"""The shift report: how far the newest data's classes moved from those the last blessed model was trained on.

Per class, three shares: the reference (the labeled class shares the last blessed model was trained on, from its
serving metadata; without one, this run's training set), the newest labeled data's (the newest span's training
images, or the whole labeled set when the data has no spans), and the newest pool's, estimated from the candidate
model's predictions corrected for its own confusion by EM with bias-corrected temperature scaling (Alexandari et al.,
ICML 2020; models/class_prior.py, which the pool-mix work measured). A distance (L1 of the shares, 0..2) beyond
``max_l1`` is a shift: said on stderr, in report.md and metrics.json, the retraining trigger users ask for.

Pure numpy: the evaluator (components/evaluator.py) gives it the counts and the estimate.
"""

from __future__ import annotations

import numpy as np


def shares(counts) -> list[float]:
    c = np.asarray(counts, np.float64)
    return (c / c.sum()).tolist() if c.sum() > 0 else [0.0] * len(c)


def l1(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).sum())


def _largest(class_names, now, then, k: int = 3) -> str:
    delta = np.asarray(now) - np.asarray(then)
    order = np.argsort(-np.abs(delta), kind="stable")[:k]
    return ", ".join(f"{class_names[c]} {delta[c]:+.3f}" for c in order)


def class_shift(class_names: list[str], reference_counts, reference_source: str, newest_counts, newest_source: str,
                pool_estimate: dict | None, max_l1: float, pool_reason: str | None = None) -> dict:
    """metrics.json's ``shift``. ``pool_estimate``: models.class_prior.estimate_prior_em_bcts's result on the
    newest pool (None: ``pool_reason`` says why there is none)."""
    ref, new = shares(reference_counts), shares(newest_counts)
    out = {"max_l1": float(max_l1), "reference": {"source": reference_source, "counts": [int(n) for n in reference_counts],
                                                  "shares": ref},
           "newest_labeled": {"source": newest_source, "counts": [int(n) for n in newest_counts], "shares": new,
                              "l1": l1(new, ref)},
           "pool": None, "messages": []}
    if pool_estimate is not None:
        q = pool_estimate["prior"]
        out["pool"] = {"method": pool_estimate["method"], "shares": q, "interval": pool_estimate.get("interval"),
                       "l1": l1(q, ref), "pool_examples": pool_estimate.get("pool_examples"),
                       "validation_per_class": pool_estimate.get("validation_per_class"),
                       "interval_covers": pool_estimate.get("interval_covers"),
                       "temperature": pool_estimate.get("temperature")}
    else:
        out["pool"] = {"reason": pool_reason or "no unlabeled pool"}
    for what, block in (("labeled", out["newest_labeled"]), ("pool (estimated)", out["pool"])):
        if block.get("l1") is not None and block["l1"] > max_l1:
            out["messages"].append(
                f"class shift: the newest {what} class shares are {block['l1']:.3f} L1 from the reference shares "
                f"({reference_source}; threshold {max_l1:g}); largest changes "
                f"{_largest(class_names, block['shares'], ref)}")
    out["shifted"] = bool(out["messages"])
    return out

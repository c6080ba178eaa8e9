"""What the unlabeled pool holds, estimated without its labels: class distribution, rho_U, relevance.

Pure NumPy/SciPy; the PseudoLabeler (components/) feeds it the base model's predictions on the
validation split (labels known, all in-domain) and on the pool (labels unknown, maybe not in-domain).

Class distribution: black-box shift estimation (BBSE; Lipton, Wang & Smola, "Detecting and
Correcting for Label Shift with Black Box Predictors", ICML 2018). The counts of the pool's
pseudo-labels are biased by the base model's confusions (a long-tailed model sends tail images to
head classes); under label shift (p(x|y) the same in validation and pool, only p(y) differs),

    mu_i = P_pool(pred = i) = sum_j P(pred = i | y = j) q_j,    i.e.   mu = C q,

with C[i, j] = P(pred = i | true = j) measured on the validation split (columns sum to 1) and q the
pool's class distribution. Lipton et al. write the same system with the joint matrix
C'[i, j] = P_val(pred = i, true = j) and importance weights w_j = q_j / p_val(j): C' w = mu; using the
column-normalised C solves directly for q and does not depend on the validation split being balanced.
BBSE-soft (same paper) replaces the argmax by the probabilities: C[i, j] = E[p_i(x) | y = j] and
mu_i = E_pool[p_i(x)]. It is the default here: a long-tailed base model often never predicts a tail
class (its row of the hard C is all zeros, so C is singular), while its soft row is not.

Relevance: the fraction of the pool that is in-domain, from an out-of-distribution score s(x)
(higher = more in-domain): the maximum softmax probability (Hendrycks & Gimpel, ICLR 2017) or the
negative free energy T * logsumexp(z / T) (Liu et al., "Energy-based Out-of-distribution Detection",
NeurIPS 2020). See :func:`estimate_relevance` for the estimator.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from scipy.special import logsumexp

from models.metrics import confusion_matrix

DEFAULT_MAX_CONDITION = 100.0
DEFAULT_RHO_FLOOR = 1e-3
DEFAULT_TPR = 0.95
# Validation true-positive rates at which the best-bin relevance estimator tries a threshold; 0.1 is
# the smallest (300 images of a 3000-image validation split, a ~5% relative sampling error).
DEFAULT_TPR_GRID = (0.95, 0.8, 0.6, 0.4, 0.2, 0.1)


class IllConditionedConfusionError(ValueError):
    """The validation confusion matrix cannot be inverted reliably: BBSE's estimate would be noise."""


def conditional_confusion(labels, predictions, num_classes: int) -> np.ndarray:
    """C[i, j] = P(pred = i | true = j) on a labeled split: column j is class j's prediction profile.

    Raises ValueError naming the classes that have no example (their column is undefined)."""
    counts = confusion_matrix(labels, predictions, num_classes).T.astype(np.float64)  # [pred, true]
    support = counts.sum(axis=0)
    missing = [int(c) for c in np.flatnonzero(support == 0)]
    if missing:
        raise ValueError(f"validation split: classes {missing} have no example, so their column of the confusion "
                         f"matrix is undefined ({len(missing)} of {num_classes} classes)")
    return counts / support


def soft_confusion(labels, probabilities, num_classes: int) -> np.ndarray:
    """BBSE-soft: C[i, j] = mean of p_i(x) over the split's images of class j (columns sum to 1)."""
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    support = np.bincount(labels, minlength=num_classes)
    missing = [int(c) for c in np.flatnonzero(support == 0)]
    if missing:
        raise ValueError(f"validation split: classes {missing} have no example, so their column of the confusion "
                         f"matrix is undefined ({len(missing)} of {num_classes} classes)")
    sums = np.zeros((num_classes, num_classes))
    np.add.at(sums.T, labels, probabilities)  # sums[:, j] += p(x) for every x of class j
    return sums / support


def estimate_class_distribution(confusion, pool_predicted_counts, max_condition: float = DEFAULT_MAX_CONDITION
                                ) -> np.ndarray:
    """BBSE: the pool's class distribution q >= 0, sum q = 1, solving C q = mu by non-negative least squares.

    ``confusion`` is C[i, j] = P(pred = i | true = j) (:func:`conditional_confusion`) and
    ``pool_predicted_counts[i]`` how many pool images the model predicts as class i; or, for
    BBSE-soft, :func:`soft_confusion` and the pool's summed (or mean) probabilities. mu is their
    normalisation. NNLS rather than C^-1 mu because sampling noise can make the exact solution
    negative for a rare class; since 1^T C = 1^T, the unconstrained solution already sums to 1 and the
    final renormalisation only absorbs the mass NNLS clipped.

    Raises :class:`IllConditionedConfusionError` when cond(C) > ``max_condition``: Lipton et al. bound
    the estimate's error by terms in 1 / sigma_min(C), and perturbations of mu and C are amplified up
    to cond(C) times, so a near-singular C (a model that confuses whole classes) gives no usable estimate.
    """
    confusion = np.asarray(confusion, np.float64)
    counts = np.asarray(pool_predicted_counts, np.float64)
    k = confusion.shape[0]
    if confusion.shape != (k, k) or counts.shape != (k,):
        raise ValueError(f"confusion matrix {confusion.shape} and predicted counts {counts.shape} must be (C, C) and (C,)")
    if counts.sum() <= 0:
        raise ValueError("pool: no predicted example, so there is no distribution to estimate (0 examples)")
    singular = np.linalg.svd(confusion, compute_uv=False)
    condition = float(singular[0] / singular[-1]) if singular[-1] > 0 else float("inf")
    if condition > max_condition:
        raise IllConditionedConfusionError(
            f"validation confusion matrix is ill-conditioned (condition number {condition:.3g} > {max_condition:g}, "
            f"smallest singular value {singular[-1]:.3g}): the base model confuses classes too much for black-box "
            f"shift estimation; use the raw pseudo-label distribution instead")
    mu = counts / counts.sum()
    q, _ = nnls(confusion, mu)
    if q.sum() <= 0:
        raise IllConditionedConfusionError("black-box shift estimation returned an all-zero distribution")
    return q / q.sum()


def imbalance_ratio(distribution, floor: float = DEFAULT_RHO_FLOOR) -> float:
    """rho = max_c q_c / max(min_c q_c, floor).

    The floor keeps rho finite when the estimate puts a class at (or near) zero: BBSE's noise with a
    few hundred validation images per class is of the order of 1e-3 of the pool, so a smaller share
    cannot be told from 0. With the default, rho is at most 1000 * max q.
    """
    q = np.asarray(distribution, np.float64)
    return float(q.max() / max(q.min(), floor))


def max_softmax_score(probabilities) -> np.ndarray:
    """Maximum softmax probability per example (Hendrycks & Gimpel 2017): higher = more in-domain."""
    return np.asarray(probabilities, np.float64).max(axis=-1)


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy -E(x) = T * logsumexp(z / T) (Liu et al. 2020): higher = more in-domain.

    Needs the logits: softmax probabilities fix them only up to an additive constant per example."""
    return temperature * logsumexp(np.asarray(logits, np.float64) / temperature, axis=-1)


def in_domain_threshold(validation_scores, tpr: float = DEFAULT_TPR) -> float:
    """The score that ``tpr`` of the (in-domain) validation images reach: its (1 - tpr) quantile."""
    scores = np.asarray(validation_scores, np.float64)
    if scores.size == 0:
        raise ValueError("validation split: no score to calibrate the in-domain threshold on (0 examples)")
    return float(np.quantile(scores, 1.0 - tpr))


def relevance_from_fraction(fraction_above: float, tpr: float = DEFAULT_TPR, fpr: float = 0.0) -> float:
    """In-domain fraction pi of the pool from the fraction of its images at or above the threshold.

    P_pool(s >= t) = pi * TPR + (1 - pi) * FPR, hence pi = (P_pool(s >= t) - FPR) / (TPR - FPR),
    clipped to [0, 1]. TPR is the calibrated true-positive rate; FPR, the share of out-of-domain
    images that still score above t, is unknown without out-of-domain examples: the default 0
    makes the estimate an upper bound when OOD images score high (a model over-confident on them).
    """
    if not 0.0 <= fpr < tpr <= 1.0:
        raise ValueError(f"need 0 <= fpr < tpr <= 1, got fpr={fpr}, tpr={tpr}")
    return float(np.clip((fraction_above - fpr) / (tpr - fpr), 0.0, 1.0))


def relevance_best_bin(fractions_above: dict) -> dict:
    """In-domain fraction pi from the pool fractions above thresholds set at several validation TPRs.

    For any threshold t, P_pool(s >= t) = pi TPR(t) + (1 - pi) FPR(t) >= pi TPR(t), so every
    P_pool(s >= t) / TPR(t) is an upper bound on pi; the smallest is the tightest (the "best bin" of
    mixture-proportion estimation: Scott, AISTATS 2015; Garg et al., NeurIPS 2021). It is
    :func:`relevance_from_fraction` (FPR = 0) at the threshold where out-of-domain images are rarest,
    instead of at one fixed TPR; being a minimum of noisy ratios it leans slightly low.
    ``fractions_above`` maps TPR -> fraction of the pool at or above that TPR's threshold.
    """
    ratios = {float(tpr): float(f) / float(tpr) for tpr, f in fractions_above.items()}
    tpr = min(ratios, key=ratios.get)
    return {"relevance": float(np.clip(ratios[tpr], 0.0, 1.0)), "tpr": tpr,
            "ratios": {f"{k:g}": round(v, 6) for k, v in sorted(ratios.items(), reverse=True)}}


def estimate_relevance_best_bin(validation_scores, pool_scores, tprs=DEFAULT_TPR_GRID) -> dict:
    """:func:`relevance_best_bin` from the raw scores (higher = in-domain)."""
    pool = np.asarray(pool_scores, np.float64)
    if pool.size == 0:
        raise ValueError("pool: no score to measure (0 examples)")
    fractions = {tpr: float(np.mean(pool >= in_domain_threshold(validation_scores, tpr))) for tpr in tprs}
    return relevance_best_bin(fractions)


def estimate_relevance(validation_scores, pool_scores, tpr: float = DEFAULT_TPR, fpr: float = 0.0) -> dict:
    """Estimated in-domain fraction of the pool from an OOD score (higher = in-domain).

    Calibrate t so that ``tpr`` of the validation images (all in-domain) score >= t; measure the
    fraction of the pool scoring >= t; correct it for the TPR (and an assumed FPR), see
    :func:`relevance_from_fraction`. Assumes in-domain pool images score like validation images,
    i.e. the pool's in-domain classes are spread like the validation split's.
    """
    threshold = in_domain_threshold(validation_scores, tpr)
    pool = np.asarray(pool_scores, np.float64)
    if pool.size == 0:
        raise ValueError("pool: no score to measure (0 examples)")
    fraction = float(np.mean(pool >= threshold))
    return {"threshold": threshold, "tpr": tpr, "fpr": fpr, "fraction_above": fraction,
            "relevance": relevance_from_fraction(fraction, tpr, fpr)}


def summarise_pool(num_classes: int, pool_predicted_counts, validation_labels=None, validation_predictions=None,
                   relevance_by_score: dict | None = None, max_condition: float = DEFAULT_MAX_CONDITION,
                   rho_floor: float = DEFAULT_RHO_FLOOR, validation_probabilities=None,
                   pool_probability_sums=None) -> dict:
    """The pool's estimated class distribution, rho_U and relevance, with how each was obtained.

    Class distribution: BBSE-soft when the validation probabilities and the pool's summed
    probabilities are given, else hard BBSE; each refused when its C is ill-conditioned; last, the
    raw pseudo-label counts. ``class_distribution_method`` says which, and why the others were not
    used. It treats the whole pool as in-domain: out-of-domain images count towards the classes the
    model sends them to.

    ``relevance_by_score`` maps a score name ('energy', 'max_softmax') to a dict with a
    ``relevance``; the headline relevance is energy's when present (Liu et al. 2020 report it separates
    in- from out-of-distribution better than max-softmax; so did bench/pool_estimates_bench.py),
    else max-softmax's.
    """
    counts = np.asarray(pool_predicted_counts, np.float64)
    total = counts.sum()
    out = {"num_pool_examples": int(total), "raw_class_distribution": None, "raw_rho_u": None,
           "estimated_class_distribution": None, "estimated_rho_u": None, "class_distribution_method": None,
           "confusion_condition_number": None, "estimated_relevance": None, "relevance_score": None,
           "relevance": relevance_by_score or {}}
    if total <= 0:
        out["class_distribution_method"] = "none: the pool is empty"
        return out
    raw = counts / total
    out["raw_class_distribution"] = raw.tolist()
    out["raw_rho_u"] = imbalance_ratio(raw, rho_floor)
    if validation_labels is None or len(validation_labels) == 0:
        estimate, method = raw, "raw pseudo-label counts: no validation split to measure the confusion matrix on"
    else:
        attempts = []
        if validation_probabilities is not None and pool_probability_sums is not None:
            attempts.append(("bbse_soft", soft_confusion(validation_labels, validation_probabilities, num_classes),
                             np.asarray(pool_probability_sums, np.float64)))
        attempts.append(("bbse", conditional_confusion(validation_labels, validation_predictions, num_classes), counts))
        for name, confusion, _ in attempts:  # both reported, whichever is used
            singular = np.linalg.svd(confusion, compute_uv=False)
            out[f"{name}_condition_number"] = float(singular[0] / singular[-1]) if singular[-1] > 0 else None
        estimate, refused = None, []
        for name, confusion, mu in attempts:
            try:
                estimate, method = estimate_class_distribution(confusion, mu, max_condition), name
                break
            except IllConditionedConfusionError as err:
                refused.append(f"{name}: {err}")
        if estimate is None:
            estimate, method = raw, "raw pseudo-label counts: " + "; ".join(refused)
        elif refused:
            method += " (" + "; ".join(refused) + ")"
        out["confusion_condition_number"] = out.get(f"{method.split(' ')[0]}_condition_number")
    out["estimated_class_distribution"] = estimate.tolist()
    out["estimated_rho_u"] = imbalance_ratio(estimate, rho_floor)
    out["class_distribution_method"] = method
    for name in ("energy", "max_softmax"):
        if name in out["relevance"]:
            out["estimated_relevance"], out["relevance_score"] = out["relevance"][name]["relevance"], name
            break
    return out

"""The unlabeled pool's class prior, estimated without its labels (label shift: p(x|y) shared, only p(y) differs).

Pure NumPy/SciPy: the PseudoLabeler (its pseudo-labels' prior adjustment, and summarise_pool's class distribution)
and the Evaluator's shift report (models/shift.py) feed it the model's outputs on the labeled validation split and
on the pool. One implementation for both.

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

EM-BCTS (:func:`estimate_prior_em_bcts`): the model calibrated on the validation split by bias-corrected
temperature scaling, then Saerens et al.'s EM on the pool, with a bootstrap interval.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, nnls
from scipy.special import log_softmax, logsumexp, softmax

from models.metrics import confusion_matrix

DEFAULT_MAX_CONDITION = 100.0
DEFAULT_RHO_FLOOR = 1e-3


class IllConditionedConfusionError(ValueError):
    """The validation confusion matrix cannot be inverted reliably: BBSE's estimate would be noise."""


def conditional_confusion(labels, predictions, num_classes: int) -> np.ndarray:
    """C[i, j] = P(pred = i | true = j) on a labeled split: column j is class j's prediction profile.

    Raises ValueError naming the classes that have no example (their column is undefined)."""
    counts = confusion_matrix(labels, predictions, num_classes).T.astype(np.float64)  # [pred, true]
    support = counts.sum(axis=0)
    require_every_class(support, num_classes, "their column of the confusion matrix is undefined")
    return counts / support


def require_every_class(support, num_classes: int, consequence: str) -> None:
    """A ValueError naming the validation classes with no example (``support`` per class) and what that breaks."""
    missing = [int(c) for c in np.flatnonzero(np.asarray(support) == 0)]
    if missing:
        raise ValueError(f"validation split: classes {missing} have no example, so {consequence} "
                         f"({len(missing)} of {num_classes} classes)")


def soft_confusion(labels, probabilities, num_classes: int) -> np.ndarray:
    """BBSE-soft: C[i, j] = mean of p_i(x) over the split's images of class j (columns sum to 1)."""
    labels = np.asarray(labels, np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    support = np.bincount(labels, minlength=num_classes)
    require_every_class(support, num_classes, "their column of the confusion matrix is undefined")
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


# ------------------------------------------------- EM with bias-corrected temperature scaling (label shift)
# Alexandari, Kundaje & Shrikumar, "Maximum Likelihood with Bias-Corrected Calibration is Hard-To-Beat at Label
# Shift Adaptation", ICML 2020: calibrate the model on held-out labeled data with BCTS, then run Saerens et al.'s EM
# (Neural Computation 2002) on the pool. Written here (about 40 lines of SciPy) rather than taken from quapy, whose
# BCTS needs the unmaintained `abstention` package besides pandas.
EM_TOLERANCE, EM_MAX_ITERATIONS = 1e-8, 1000
BOOTSTRAP_RESAMPLES = 200
# The bootstrap interval's measured coverage (tests/test_pool_prior_em.py's synthetic model, 8 pools of each size,
# nominal 95%): 0.80 at 5 validation images a class, 0.85 at 10, 0.92-0.95 from 20 up. Below this many the
# interval is reported as too narrow.
MIN_VALIDATION_FOR_INTERVAL = 20


def fit_bcts(logits, labels, num_classes: int) -> tuple[float, np.ndarray]:
    """(T, b) of bias-corrected temperature scaling, softmax(z / T + b), by the negative log-likelihood of held-out
    ``labels`` (L-BFGS; b's mean held at 0, since softmax ignores a shift). A class absent from ``labels`` keeps
    b = 0 apart from the mean (the likelihood says nothing about it); raises ValueError when ``labels`` is empty."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)
    if len(y) == 0:
        raise ValueError("validation split: no example to calibrate on (0 examples)")

    def nll(params):
        log_t, b = params[0], params[1:] - params[1:].mean()
        lp = log_softmax(z * np.exp(-log_t) + b, axis=1)
        p = np.exp(lp)
        onehot = np.eye(num_classes)[y]
        g = (p - onehot) / len(y)  # d NLL / d (z / T + b)
        grad_b = g.sum(axis=0)
        grad_log_t = -float((g * z * np.exp(-log_t)).sum())
        return -float(lp[np.arange(len(y)), y].mean()), np.concatenate([[grad_log_t], grad_b - grad_b.mean()])

    res = minimize(nll, np.zeros(num_classes + 1), jac=True, method="L-BFGS-B",
                   bounds=[(-5.0, 5.0)] + [(-20.0, 20.0)] * num_classes)
    b = res.x[1:] - res.x[1:].mean()
    return float(np.exp(res.x[0])), b


def bcts_log_probabilities(logits, temperature: float, bias) -> np.ndarray:
    """log softmax(z / T + b): the calibrated model's log posterior under the calibration split's class prior."""
    return log_softmax(np.asarray(logits, np.float64) / temperature + np.asarray(bias, np.float64), axis=1)


def em_prior(log_probabilities, source_prior, tolerance: float = EM_TOLERANCE,
             max_iterations: int = EM_MAX_ITERATIONS) -> tuple[np.ndarray, int]:
    """Saerens, Latinne & Decaestecker's EM for the pool's class prior q under label shift: posteriors
    p(y | x) q_y / p_s(y), renormalised, averaged over the pool, until q moves less than ``tolerance`` (L1).
    ``log_probabilities``: the calibrated log posteriors of the pool images under ``source_prior`` p_s (the
    calibration split's class shares). Returns (q, iterations)."""
    lp = np.asarray(log_probabilities, np.float64)
    log_source = np.log(np.clip(np.asarray(source_prior, np.float64), 1e-12, None))
    q = np.exp(log_source - logsumexp(log_source))
    for it in range(1, max_iterations + 1):
        posterior = softmax(lp + np.log(np.clip(q, 1e-300, None)) - log_source, axis=1)
        new = posterior.mean(axis=0)
        if np.abs(new - q).sum() < tolerance:
            return new, it
        q = new
    return q, max_iterations


def prior_adjusted_log_probabilities(log_probabilities, source_prior, target_prior, strength: float = 1.0) -> np.ndarray:
    """The posteriors a pool of class prior ``target_prior`` implies: log p(y | x) + s (log q_y - log p_s(y)),
    renormalised. s = 1 is the Bayes correction for label shift; 0 < s < 1 moves only part of the way (a tempered
    prior, q^s, as SimPro and ACR blend their estimate), which trusts a noisy estimate less; 0 leaves p as it is."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"prior strength must be in [0, 1] (got {strength})")
    shift = np.log(np.clip(np.asarray(target_prior, np.float64), 1e-12, None)) - np.log(
        np.clip(np.asarray(source_prior, np.float64), 1e-12, None))
    return log_softmax(np.asarray(log_probabilities, np.float64) + strength * shift, axis=1)


def estimate_prior_em_bcts(validation_logits, validation_labels, pool_logits, num_classes: int,
                           resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0, level: float = 0.95) -> dict:
    """The pool's class prior by EM-BCTS, with a percentile bootstrap interval per class: each resample redraws
    the validation images within their classes (and refits BCTS) and the pool images, and reruns EM. Returns
    ``prior`` (C shares), ``interval`` (C [low, high]), ``temperature``, ``bias``, ``source_prior`` (the validation's
    class shares), ``iterations``, ``resamples``, ``validation_per_class`` (how much the fit rests on) and
    ``interval_covers``: False when a class has fewer than MIN_VALIDATION_FOR_INTERVAL validation images, where the
    bootstrap under-covers (its interval is too narrow; the estimate itself is noisier too: L1 about 0.2 at 5 a
    class on the synthetic model, 0.08 at 20)."""
    z_val = np.asarray(validation_logits, np.float64)
    y_val = np.asarray(validation_labels, np.int64)
    z_pool = np.asarray(pool_logits, np.float64)
    if len(z_pool) == 0:
        raise ValueError("pool: no example, so there is no class prior to estimate (0 examples)")
    support = np.bincount(y_val, minlength=num_classes)
    require_every_class(support, num_classes, "the calibration cannot place them")

    def estimate(zv, yv, zp):
        t, b = fit_bcts(zv, yv, num_classes)
        source = np.bincount(yv, minlength=num_classes) / len(yv)
        q, iterations = em_prior(bcts_log_probabilities(zp, t, b), source)
        return q, t, b, source, iterations

    q, t, b, source, iterations = estimate(z_val, y_val, z_pool)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y_val == c) for c in range(num_classes)]
    draws = []
    for _ in range(resamples):
        vi = np.concatenate([rng.choice(ix, len(ix)) for ix in by_class])
        pi = rng.integers(0, len(z_pool), len(z_pool))
        draws.append(estimate(z_val[vi], y_val[vi], z_pool[pi])[0])
    tail = (1 - level) / 2 * 100
    low, high = (np.percentile(np.asarray(draws), [tail, 100 - tail], axis=0) if draws
                 else (np.full(num_classes, np.nan), np.full(num_classes, np.nan)))
    return {"method": "em_bcts", "prior": q.tolist(), "interval": np.stack([low, high], axis=1).tolist(),
            "level": level, "temperature": t, "bias": b.tolist(), "source_prior": source.tolist(),
            "iterations": iterations, "resamples": resamples, "validation_per_class": support.tolist(),
            "interval_covers": bool(support.min() >= MIN_VALIDATION_FOR_INTERVAL), "pool_examples": int(len(z_pool))}


def imbalance_ratio(distribution, floor: float = DEFAULT_RHO_FLOOR) -> float:
    """rho = max_c q_c / max(min_c q_c, floor).

    The floor keeps rho finite when the estimate puts a class at (or near) zero: BBSE's noise with a
    few hundred validation images per class is of the order of 1e-3 of the pool, so a smaller share
    cannot be told from 0. With the default, rho is at most 1000 * max q.
    """
    q = np.asarray(distribution, np.float64)
    return float(q.max() / max(q.min(), floor))

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
NeurIPS 2020). Two estimators, both "best bin" mixture-proportion estimates (:func:`relevance_best_bin`):

- global (:func:`estimate_relevance_best_bin`): one threshold per TPR, calibrated on the whole
  (balanced) validation split. It assumes the pool's in-domain images score like the validation's,
  which fails when the pool's class mix differs: a long-tailed model scores its tail classes lower,
  so a tail-heavy in-domain pool looks out-of-domain (bench: relevance 0.08-0.13 for a fully in-domain
  tail-heavy pool) and a head-heavy one looks more in-domain than it is.
- class-conditional (:class:`ClassConditionalCalibration`, the headline): thresholds per predicted
  class, calibrated on the validation images predicted as that class, each weighted by
  w_j = q_j / p_val(j) for its true class j (q: the pool's BBSE class distribution), so the
  validation stands in for the pool's in-domain images under label shift; the best bin is taken
  per predicted class, so out-of-domain images, which the model sends to a few classes, are
  bounded where they land.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize, nnls
from scipy.special import log_softmax, logsumexp, softmax

from models.metrics import confusion_matrix

DEFAULT_MAX_CONDITION = 100.0
DEFAULT_RHO_FLOOR = 1e-3
DEFAULT_TPR = 0.95
# Validation true-positive rates at which the best-bin relevance estimator tries a threshold; 0.1 is
# the smallest (300 images of a 3000-image validation split, a ~5% relative sampling error).
DEFAULT_TPR_GRID = (0.95, 0.8, 0.6, 0.4, 0.2, 0.1)
# Class-conditional relevance: a predicted class with fewer validation predictions than this is calibrated
# together with the other such classes (its own quantiles would rest on a handful of images).
DEFAULT_MIN_CLASS_VALIDATION = 30
# ... and a TPR below the grid's first is tried in a class only where it keeps this many (effective) validation
# images above the threshold.
DEFAULT_MIN_ABOVE = 15
POOLED = -1  # the group of the classes calibrated together
OUT_OF_FOLD_FOLDS = 10  # LogitGaussian.out_of_fold: the validation images' own scores, each fitted without it
# The estimate the planner reads, the first present (score, estimator): see summarise_pool.
HEADLINE_RELEVANCE = (("mahalanobis", "class_conditional"), ("energy", "global"), ("max_softmax", "global"))


class IllConditionedConfusionError(ValueError):
    """The validation confusion matrix cannot be inverted reliably: BBSE's estimate would be noise."""


def conditional_confusion(labels, predictions, num_classes: int) -> np.ndarray:
    """C[i, j] = P(pred = i | true = j) on a labeled split: column j is class j's prediction profile.

    Raises ValueError naming the classes that have no example (their column is undefined)."""
    counts = confusion_matrix(labels, predictions, num_classes).T.astype(np.float64)  # [pred, true]
    support = counts.sum(axis=0)
    _require_every_class(support, num_classes, "their column of the confusion matrix is undefined")
    return counts / support


def _require_every_class(support, num_classes: int, consequence: str) -> None:
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
    _require_every_class(support, num_classes, "their column of the confusion matrix is undefined")
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
    _require_every_class(support, num_classes, "the calibration cannot place them")

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


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy -E(x) = T * logsumexp(z / T) (Liu et al. 2020): higher = more in-domain.

    Needs the logits: softmax probabilities fix them only up to an additive constant per example."""
    return temperature * logsumexp(np.asarray(logits, np.float64) / temperature, axis=-1)


class LogitGaussian:
    """Mahalanobis OOD score on the logits: class-conditional Gaussians with a tied covariance.

    Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
    Adversarial Attacks", NeurIPS 2018, fit them to a network's features; the served model gives its
    logits, so they are fitted there, on the validation split (labels known):

        mu_k = mean of z over class k,   Sigma = mean of (z - mu_y)(z - mu_y)^T,
        s(z) = -min_k (z - mu_k)^T Sigma^+ (z - mu_k)      (higher = more in-domain)

    Unlike energy and max-softmax it uses the whole logit vector, so an out-of-domain image the model
    confidently sends to a class still lies far from that class's mean (bench/results/pool_estimates.md:
    energy could not tell MNIST digits from sandals for one base model, this score could). Sigma^+ is the
    pseudo-inverse: logits are often rank-deficient (a softmax head fixes them up to a constant).

    Example::

        score = LogitGaussian(val_labels, val_logits, num_classes=10)
        s_val, s_pool = score(val_logits), score(pool_logits)
    """

    def __init__(self, labels, logits, num_classes: int):
        labels = np.asarray(labels, np.int64)
        logits = np.asarray(logits, np.float64)
        _require_every_class(np.bincount(labels, minlength=num_classes), num_classes, "their mean logit is undefined")
        if logits.ndim != 2 or logits.shape != (labels.size, num_classes):
            raise ValueError(f"validation logits {logits.shape} must be ({labels.size}, {num_classes})")
        self.means = np.stack([logits[labels == k].mean(axis=0) for k in range(num_classes)])
        centred = logits - self.means[labels]
        self.precision = np.linalg.pinv(centred.T @ centred / labels.size)

    def __call__(self, logits) -> np.ndarray:
        d = np.asarray(logits, np.float64)[:, None, :] - self.means[None]
        return -np.einsum("nkd,de,nke->nk", d, self.precision, d).min(axis=1)

    def out_of_fold(self, labels, logits, folds: int = OUT_OF_FOLD_FOLDS) -> np.ndarray:
        """The scores of the images this was fitted on, each from Gaussians fitted without it (``folds``-fold, folds
        dealt round-robin within each class, so a class of n <= folds images leaves one out at a time).

        The in-sample score is optimistic: an image pulls its class mean towards itself, by (1/n) of its distance
        for a class of n images, which is nothing at 300 a class but a lot at 6. In-domain thresholds calibrated on
        in-sample scores then sit above where held-out in-domain images score, and the pool's relevance is
        underestimated (issue #27: 0.58 for a fully in-domain pool with 6 validation images a class). A class with
        a single image keeps its in-sample mean (there is nothing else to fit it on). The tied covariance, pooled
        over every class, keeps its full fit: the pool is scored with it too."""
        labels = np.asarray(labels, np.int64)
        logits = np.asarray(logits, np.float64)
        fold = np.zeros(labels.size, np.int64)
        for k in range(self.means.shape[0]):
            members = np.flatnonzero(labels == k)
            fold[members] = np.arange(members.size) % folds
        scores = np.empty(labels.size)
        for f in range(min(folds, max(1, int(fold.max()) + 1))):
            held, fit = fold == f, fold != f
            if not held.any():
                continue
            means = self.means.copy()
            for k in np.unique(labels[fit]):
                means[k] = logits[fit & (labels == k)].mean(axis=0)
            d = logits[held][:, None, :] - means[None]
            scores[held] = -np.einsum("nkd,de,nke->nk", d, self.precision, d).min(axis=1)
        return scores


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


class ClassConditionalCalibration:
    """Class-conditional relevance: per predicted class, validation scores reweighted to the pool's class mix.

    The global estimator's premise, "the pool's in-domain images score like the validation's", holds only
    when both have the same class mix. Under label shift (p(x | y) shared, only p(y) differs) it holds
    within each true class, so the validation split reweighted by w_j = q_j / p_val(j) (q the pool's
    class distribution, BBSE) scores like the in-domain pool. The thresholds are set per predicted
    class k on the weighted validation images predicted as k, and for every TPR in the grid

        n_k = min_tpr  N_pool(pred = k, s >= t_k(tpr)) / TPR_k(tpr)

    (TPR_k the weighted validation share at or above t_k: the grid's TPR, up to the step of one image)
    bounds the in-domain pool images predicted k from above, as :func:`relevance_best_bin` does the
    whole pool; the estimate is pi = sum_k n_k / N_pool. Taken per class, the best bin bounds the
    out-of-domain images where the model sends them (a few classes) rather than diluted by all the
    others. Lower TPRs are tried in a class only where they keep ``min_above`` effective validation
    images (Kish: (sum w)^2 / sum w^2) above the threshold.

    Predicted classes with fewer than ``min_examples`` validation predictions are calibrated together
    (group :data:`POOLED`); if those together still have fewer, the group uses the whole validation
    split. Built from the validation split alone, so the PseudoLabeler can bin the pool (Beam) before q
    is known: :meth:`bin_of` maps a pool image to (group, bin), bins delimited by the group's distinct
    validation scores, and :meth:`relevance` reads the per-bin counts.

    Example::

        cal = ClassConditionalCalibration(val_labels, val_preds, val_energy, num_classes=10)
        counts = cal.count_pool(pool_preds, pool_energy)
        cal.relevance(counts, len(pool_energy), q)["relevance"]
    """

    def __init__(self, validation_labels, validation_predictions, validation_scores, num_classes: int,
                 min_examples: int = DEFAULT_MIN_CLASS_VALIDATION):
        labels = np.asarray(validation_labels, np.int64)
        preds = np.asarray(validation_predictions, np.int64)
        scores = np.asarray(validation_scores, np.float64)
        if not labels.size or labels.shape != preds.shape or labels.shape != scores.shape:
            raise ValueError(f"validation split: {labels.size} labels, {preds.size} predictions and {scores.size} "
                             "scores; need the same number, at least 1")
        self.num_classes = int(num_classes)
        self.min_examples = int(min_examples)
        self.validation_per_class = np.bincount(labels, minlength=num_classes).astype(np.float64)
        predicted = np.bincount(preds, minlength=num_classes)
        self.pooled_classes = [int(k) for k in np.flatnonzero(predicted < min_examples)]
        self.group_of = [POOLED if k in self.pooled_classes else k for k in range(num_classes)]
        members = {k: preds == k for k in range(num_classes) if k not in self.pooled_classes}
        pooled = np.isin(preds, self.pooled_classes)
        self.pooled_source = "none"
        if self.pooled_classes:
            self.pooled_source = "pooled classes" if pooled.sum() >= min_examples else "whole validation split"
            members[POOLED] = pooled if pooled.sum() >= min_examples else np.ones_like(pooled)
        # per group: its distinct validation scores (the bin edges) and, for each, the labels of the images there
        self._edges, self._labels, self._index = {}, {}, {}
        for g, mask in members.items():
            edges, index = np.unique(scores[mask], return_inverse=True)
            self._edges[g], self._labels[g], self._index[g] = edges, labels[mask], index
        self.validation_counts = {g: int(m.sum()) for g, m in members.items()}

    @property
    def edges(self) -> dict:
        """group -> its sorted distinct validation scores (what the Beam workers need to bin the pool)."""
        return self._edges

    def bin_of(self, predicted_class: int, score: float) -> tuple[int, int]:
        """(group, bin) of a pool image: bin = how many of the group's validation scores are <= its score, so
        the image is at or above edge i exactly when its bin is > i."""
        g = self.group_of[int(predicted_class)]
        return g, int(np.searchsorted(self._edges[g], score, side="right"))

    def count_pool(self, pool_predictions, pool_scores) -> dict:
        """{group: per-bin counts} of raw pool predictions and scores (what Beam counts, in-process)."""
        preds = np.asarray(pool_predictions, np.int64)
        scores = np.asarray(pool_scores, np.float64)
        out = {}
        for g, edges in self._edges.items():
            mask = np.isin(preds, [k for k in range(self.num_classes) if self.group_of[k] == g])
            out[g] = np.bincount(np.searchsorted(edges, scores[mask], side="right"), minlength=len(edges) + 1)
        return out

    def relevance(self, pool_bin_counts: dict, pool_size: int, class_distribution=None, tprs=DEFAULT_TPR_GRID,
                  min_above: int = DEFAULT_MIN_ABOVE) -> dict:
        """In-domain fraction of the pool from its per-group bin counts ({group: counts by bin}, bins as
        :meth:`bin_of`; a group with no pool image may be left out). ``class_distribution``: the pool's
        estimated q; None calibrates on the validation as it is (no reweighting)."""
        if pool_size <= 0:
            raise ValueError("pool: no score to measure (0 examples)")
        if class_distribution is None:
            weights = np.ones(self.num_classes)
        else:
            q = np.asarray(class_distribution, np.float64)
            if q.shape != (self.num_classes,) or q.min() < 0 or q.sum() <= 0:
                raise ValueError(f"class distribution {q.tolist()} must be {self.num_classes} shares >= 0, not all 0")
            share = self.validation_per_class / self.validation_per_class.sum()
            weights = np.divide(q / q.sum(), share, out=np.zeros_like(share), where=share > 0)
        tprs = sorted(tprs, reverse=True)
        groups, in_domain, unweighted = {}, 0.0, []
        for g, edges in self._edges.items():
            counts = np.zeros(len(edges) + 1)
            given = np.asarray(pool_bin_counts.get(g, pool_bin_counts.get(str(g), [])), np.float64)
            counts[:len(given)] = given
            n_pool = float(counts.sum())
            w = weights[self._labels[g]]
            if w.sum() <= 0:  # q puts none of its mass on the classes this group's validation images are from
                w, _ = np.ones_like(w), unweighted.append(g)
            mass = np.bincount(self._index[g], weights=w, minlength=len(edges))  # weight at each distinct score
            at_or_above = np.cumsum(mass[::-1])[::-1] / w.sum()  # weighted validation share >= edges[i]
            pool_at_or_above = np.cumsum(counts[::-1])[::-1][1:]  # pool images >= edges[i] (bins i+1 ...)
            effective = float(w.sum() ** 2 / (w ** 2).sum())
            ratios = {}
            for tpr in tprs:
                if tpr != tprs[0] and tpr * effective < min_above:
                    continue
                i = int(np.flatnonzero(at_or_above >= tpr - 1e-12).max())  # the highest threshold keeping >= tpr
                ratios[tpr] = float(pool_at_or_above[i] / at_or_above[i])
            best = min(ratios, key=ratios.get)
            n_in = min(ratios[best], n_pool)
            in_domain += n_in
            groups[str(g)] = {"classes": [k for k in range(self.num_classes) if self.group_of[k] == g],
                              "validation_examples": self.validation_counts[g], "effective_validation": round(effective, 1),
                              "pool_examples": int(n_pool), "in_domain_estimate": round(n_in, 1), "tpr": best,
                              "ratios": {f"{t:g}": round(r, 1) for t, r in ratios.items()}}
        return {"relevance": float(np.clip(in_domain / pool_size, 0.0, 1.0)),
                "weighting": "none" if class_distribution is None else "pool class distribution / validation's",
                "pooled_classes": self.pooled_classes, "pooled_calibrated_on": self.pooled_source,
                "unweighted_groups": [str(g) for g in unweighted], "min_examples": self.min_examples,
                "min_above": min_above, "groups": groups}


def estimate_relevance_class_conditional(validation_labels, validation_predictions, validation_scores,
                                         pool_predictions, pool_scores, num_classes: int, class_distribution=None,
                                         tprs=DEFAULT_TPR_GRID, min_examples: int = DEFAULT_MIN_CLASS_VALIDATION,
                                         min_above: int = DEFAULT_MIN_ABOVE) -> dict:
    """:class:`ClassConditionalCalibration` on raw validation and pool predictions and scores (in-process)."""
    cal = ClassConditionalCalibration(validation_labels, validation_predictions, validation_scores, num_classes,
                                      min_examples)
    pool_scores = np.asarray(pool_scores, np.float64)
    return cal.relevance(cal.count_pool(pool_predictions, pool_scores), int(pool_scores.size), class_distribution,
                         tprs, min_above)


def summarise_pool(num_classes: int, pool_predicted_counts, validation_labels=None, validation_predictions=None,
                   relevance_by_score: dict | None = None, max_condition: float = DEFAULT_MAX_CONDITION,
                   rho_floor: float = DEFAULT_RHO_FLOOR, validation_probabilities=None,
                   pool_probability_sums=None, class_conditional: dict | None = None) -> dict:
    """The pool's estimated class distribution, rho_U and relevance, with how each was obtained.

    Class distribution: BBSE-soft when the validation probabilities and the pool's summed
    probabilities are given, else hard BBSE; each refused when its C is ill-conditioned; last, the
    raw pseudo-label counts. ``class_distribution_method`` says which, and why the others were not
    used. It treats the whole pool as in-domain: out-of-domain images count towards the classes the
    model sends them to.

    ``relevance_by_score`` maps a score name ('mahalanobis', 'energy', 'max_softmax') to a dict with a
    ``relevance`` (the global best bin, :func:`estimate_relevance_best_bin`). ``class_conditional`` maps a
    score name to (:class:`ClassConditionalCalibration`, the pool's per-group bin counts); each gets a
    ``class_conditional`` entry beside the global one, weighted by the estimated class distribution
    when BBSE gave it (unweighted when only the raw counts are known: they carry the model's bias).

    The headline (``estimated_relevance``, what the planner reads) is the first of :data:`HEADLINE_RELEVANCE`
    that is present: bench/results/pool_estimates.md measured the class-conditional Mahalanobis estimate
    within 0.21 of the truth on in-domain and out-of-domain pools of every class mix, where the global
    ones were off by up to 0.87 (a tail-heavy in-domain pool) and the class-conditional energy one by
    up to 0.4 (digits energy could not tell from sandals). Without logits, max-softmax's global estimate
    remains: it underestimates tail-heavy pools (refusing pseudo-labels) rather than overestimating
    out-of-domain ones, as its class-conditional version does. ``relevance_score`` and
    ``relevance_estimator`` say which was used.
    """
    counts = np.asarray(pool_predicted_counts, np.float64)
    total = counts.sum()
    out = {"num_pool_examples": int(total), "raw_class_distribution": None, "raw_rho_u": None,
           "estimated_class_distribution": None, "estimated_rho_u": None, "class_distribution_method": None,
           "confusion_condition_number": None, "estimated_relevance": None, "relevance_score": None,
           "relevance_estimator": None, "relevance": {k: dict(v) for k, v in (relevance_by_score or {}).items()}}
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
    weights = estimate if method.startswith("bbse") else None
    for name, (calibration, bin_counts) in (class_conditional or {}).items():
        cc = calibration.relevance(bin_counts, int(total), weights)
        if weights is None:
            cc["weighting"] = "none: " + method  # why the validation was not reweighted
        out["relevance"].setdefault(name, {})["class_conditional"] = cc
    for name, estimator in HEADLINE_RELEVANCE:
        entry = out["relevance"].get(name, {})
        value = entry.get("class_conditional", {}).get("relevance") if estimator == "class_conditional" \
            else entry.get("relevance")
        if value is not None:
            out["estimated_relevance"], out["relevance_score"], out["relevance_estimator"] = value, name, estimator
            break
    return out

"""Losses and re-weighting for long-tailed classification, in keras.ops (every Keras 3 backend).

All losses take integer labels ``y_true`` of shape (batch,) and raw logits ``y_pred`` of shape
(batch, C), compute the log-softmax directly (finite for logits of +-1e4), and accept optional
per-class weights. With class weights, the batch loss is the weighted mean
sum_i w_{y_i} l_i / sum_i w_{y_i}, as PyTorch's ``F.cross_entropy(weight=...)`` in the papers'
official code; the focal loss alone averages w_{y_i} l_i over the batch, as its official code does.
"""

from __future__ import annotations

import numpy as np
from keras import losses as keras_losses
from keras import ops, saving

from models.label_stats import effective_number_weights  # noqa: F401  (part of this module's API)


def _log_softmax_at_label(logits, labels):
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    log_probs = ops.log_softmax(ops.cast(logits, "float32"), axis=-1)
    return ops.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0], labels


def _weighted_mean_terms(per_example, labels, class_weights):
    """Per-example terms whose batch mean is the weighted mean sum(w l) / sum(w)."""
    if class_weights is None:
        return per_example
    w = ops.take(ops.convert_to_tensor(np.asarray(class_weights, np.float32)), labels)
    return per_example * w / ops.maximum(ops.mean(w), 1e-12)


def _floats(values):
    return None if values is None else [float(v) for v in values]


class _ClassWeightedLoss(keras_losses.Loss):
    """Shared plumbing: optional per-class weights, serialised with the loss."""

    def __init__(self, class_weights=None, name=None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_weights = _floats(class_weights)

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


@saving.register_keras_serializable(package="longtail")
class CrossEntropyLoss(_ClassWeightedLoss):
    """Softmax cross-entropy on logits, -log softmax(z)[y], optionally class-weighted (CB re-weighting
    with ``effective_number_weights``, Cui et al., CVPR 2019)."""

    def __init__(self, class_weights=None, name="cross_entropy", **kwargs):
        super().__init__(class_weights, name=name, **kwargs)

    def call(self, y_true, y_pred):
        log_p, labels = _log_softmax_at_label(y_pred, y_true)
        return _weighted_mean_terms(-log_p, labels, self.class_weights)


@saving.register_keras_serializable(package="longtail")
class FocalLoss(_ClassWeightedLoss):
    """Focal loss (Lin et al., ICCV 2017) in the form of the LDAM official code:

        ce_i = w_{y_i} * (-log softmax(z_i)[y_i]),   loss_i = (1 - exp(-ce_i))^gamma * ce_i

    averaged over the batch. gamma=1 as in the LDAM experiments.

    Example:
        >>> FocalLoss(gamma=2.0)(labels, logits)
    """

    def __init__(self, gamma: float = 1.0, class_weights=None, name="focal_loss", **kwargs):
        super().__init__(class_weights, name=name, **kwargs)
        self.gamma = float(gamma)

    def call(self, y_true, y_pred):
        log_p, labels = _log_softmax_at_label(y_pred, y_true)
        ce = -log_p
        if self.class_weights is not None:
            ce = ce * ops.take(ops.convert_to_tensor(np.asarray(self.class_weights, np.float32)), labels)
        return ops.power(1.0 - ops.exp(-ce), self.gamma) * ce

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


def ldam_margins(class_counts, max_margin: float = 0.5) -> np.ndarray:
    """m_c = C' / n_c^(1/4), scaled so the largest margin is ``max_margin`` (Cao et al., Eq. 13)."""
    counts = np.asarray(class_counts, np.float64)
    if (counts <= 0).any():
        raise ValueError(f"LDAM needs a positive count for every class, got {counts.tolist()}")
    m = 1.0 / np.sqrt(np.sqrt(counts))
    return (m * (max_margin / m.max())).astype(np.float32)


@saving.register_keras_serializable(package="longtail")
class LDAMLoss(_ClassWeightedLoss):
    """Label-distribution-aware margin loss (Cao et al., NeurIPS 2019):

        z'_j = z_j - m_y * [j == y],   loss = CE(s * z', y)   (class-weighted mean under DRW)

    with m_c proportional to n_c^(-1/4) and the largest margin ``max_margin``; ``scale`` s = 30.
    Predictions are the plain logits z (the margin is a training-time device).
    """

    def __init__(self, class_counts, max_margin: float = 0.5, scale: float = 30.0, class_weights=None,
                 name="ldam_loss", **kwargs):
        super().__init__(class_weights, name=name, **kwargs)
        self.class_counts = [int(n) for n in class_counts]
        self.max_margin, self.scale = float(max_margin), float(scale)
        self._margins = ldam_margins(self.class_counts, self.max_margin)

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        logits = ops.cast(y_pred, "float32")
        onehot = ops.one_hot(labels, ops.shape(logits)[-1], dtype="float32")
        adjusted = logits - onehot * ops.take(ops.convert_to_tensor(self._margins), labels)[:, None]
        log_p, _ = _log_softmax_at_label(self.scale * adjusted, labels)
        return _weighted_mean_terms(-log_p, labels, self.class_weights)

    def get_config(self):
        return {**super().get_config(), "class_counts": self.class_counts, "max_margin": self.max_margin,
                "scale": self.scale}


def logit_adjust(logits, class_priors, tau: float = 1.0):
    """Post-hoc logit adjustment (Menon et al., ICLR 2021, Eq. 9): argmax of z - tau * log(pi)."""
    log_prior = ops.log(ops.convert_to_tensor(np.asarray(class_priors, np.float32)))
    return logits - tau * log_prior


@saving.register_keras_serializable(package="longtail")
class LogitAdjustedLoss(_ClassWeightedLoss):
    """Logit-adjusted softmax cross-entropy (Menon et al., ICLR 2021, Eq. 10):

        loss = -log softmax(z + tau * log(pi))[y]

    with pi the training class priors. Predictions are the unadjusted z.

    Example:
        >>> LogitAdjustedLoss(class_priors=[0.9, 0.1], tau=1.0)
    """

    def __init__(self, class_priors, tau: float = 1.0, class_weights=None, name="logit_adjusted_loss", **kwargs):
        super().__init__(class_weights, name=name, **kwargs)
        self.class_priors = [float(p) for p in class_priors]
        self.tau = float(tau)
        self._log_prior = np.log(np.asarray(self.class_priors, np.float32))

    def call(self, y_true, y_pred):
        log_p, labels = _log_softmax_at_label(y_pred + self.tau * ops.convert_to_tensor(self._log_prior), y_true)
        return _weighted_mean_terms(-log_p, labels, self.class_weights)

    def get_config(self):
        return {**super().get_config(), "class_priors": self.class_priors, "tau": self.tau}


@saving.register_keras_serializable(package="longtail")
class BalancedSoftmaxLoss(_ClassWeightedLoss):
    """Balanced softmax (Ren et al., NeurIPS 2020): CE on z + log(n_c), i.e. the softmax of
    n_c exp(z_c); equal to the logit-adjusted loss with tau = 1."""

    def __init__(self, class_counts, class_weights=None, name="balanced_softmax_loss", **kwargs):
        super().__init__(class_weights, name=name, **kwargs)
        self.class_counts = [int(n) for n in class_counts]
        if min(self.class_counts) <= 0:
            raise ValueError(f"balanced softmax needs a positive count for every class, got {self.class_counts}")
        self._log_counts = np.log(np.asarray(self.class_counts, np.float32))

    def call(self, y_true, y_pred):
        log_p, labels = _log_softmax_at_label(y_pred + ops.convert_to_tensor(self._log_counts), y_true)
        return _weighted_mean_terms(-log_p, labels, self.class_weights)

    def get_config(self):
        return {**super().get_config(), "class_counts": self.class_counts}


class DeferredReweighting:
    """Deferred re-weighting (DRW, Cao et al., NeurIPS 2019): uniform class weights before
    ``drw_epoch`` (0-based), effective-number weights (beta) from it on; the paper switches at 160 of 200.

    A schedule rather than a callback: the Trainer fits the epochs before the switch with the plain
    loss and the rest with the weighted one (same optimizer and state), which works the same on
    every Keras backend (a weight variable mutated by a callback would be a traced constant under JAX).
    """

    def __init__(self, class_counts, drw_epoch: int, beta: float = 0.9999):
        self.class_counts, self.drw_epoch, self.beta = [int(n) for n in class_counts], int(drw_epoch), float(beta)

    def weights_for_epoch(self, epoch: int):
        if epoch < self.drw_epoch:
            return None  # uniform
        return effective_number_weights(self.class_counts, self.beta).tolist()

    def phases(self, epochs: int) -> list[tuple[int, int, list | None]]:
        """[(first_epoch, end_epoch, class_weights)] covering range(epochs)."""
        if self.drw_epoch <= 0:
            return [(0, epochs, self.weights_for_epoch(0))]
        if self.drw_epoch >= epochs:
            return [(0, epochs, None)]
        return [(0, self.drw_epoch, None), (self.drw_epoch, epochs, self.weights_for_epoch(self.drw_epoch))]


def class_weights_for(kind: str, class_counts, beta: float = 0.9999):
    """Per-class weights by name: none | effective_number | inverse | sqrt_inverse (each summing to C)."""
    counts = np.asarray(class_counts, np.float64)
    if kind in ("none", None):
        return None
    if kind == "effective_number":
        return effective_number_weights(counts, beta).tolist()
    if kind in ("inverse", "sqrt_inverse"):
        w = 1.0 / (counts if kind == "inverse" else np.sqrt(counts))
        return (w * len(w) / w.sum()).tolist()
    raise ValueError(f"unknown class weighting {kind!r}; choose none, effective_number, inverse or sqrt_inverse")


LOSSES = {
    "ce": lambda stats, cfg, w: CrossEntropyLoss(class_weights=w),
    "focal": lambda stats, cfg, w: FocalLoss(gamma=cfg.focal_gamma, class_weights=w),
    "ldam": lambda stats, cfg, w: LDAMLoss(stats["class_counts"], cfg.ldam_max_margin, cfg.ldam_scale, class_weights=w),
    "logit_adjusted": lambda stats, cfg, w: LogitAdjustedLoss(stats["class_priors"], tau=cfg.logit_adjust_tau, class_weights=w),
    "balanced_softmax": lambda stats, cfg, w: BalancedSoftmaxLoss(stats["class_counts"], class_weights=w),
}


def make_loss(cfg, stats: dict, class_weights=None) -> keras_losses.Loss:
    """The configured loss (``cfg.loss``), class counts and priors from the LabelStatsGen artifact ``stats``."""
    if cfg.loss not in LOSSES:
        raise ValueError(f"unknown loss {cfg.loss!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[cfg.loss](stats, cfg, class_weights)

"""Losses for long-tailed classification, in keras.ops so they run on every Keras 3 backend.

All losses take integer labels ``y_true`` of shape (batch,) and raw logits ``y_pred`` of shape
(batch, C).
"""

from __future__ import annotations

import numpy as np
from keras import losses as keras_losses
from keras import ops, saving

from models.label_stats import effective_number_weights  # noqa: F401  (part of this module's API)


def _sparse_ce(labels, logits):
    """Per-example -log softmax(logits)[label]; log_softmax keeps it finite for logits of +-1e4."""
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    log_probs = ops.log_softmax(logits, axis=-1)
    return -ops.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]


def logit_adjust(logits, class_priors, tau: float = 1.0):
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): f(x) - tau * log(prior)."""
    log_prior = ops.log(ops.convert_to_tensor(np.asarray(class_priors, np.float32)))
    return logits - tau * log_prior


@saving.register_keras_serializable(package="longtail")
class LogitAdjustedLoss(keras_losses.Loss):
    """Logit-adjusted softmax cross-entropy (Menon et al., ICLR 2021, Eq. 10):

        loss = -log softmax(f(x) + tau * log(pi))[y]

    with pi the training class priors. Predictions are the unadjusted f(x).

    Example:
        >>> loss = LogitAdjustedLoss(class_priors=[0.9, 0.1], tau=1.0)
    """

    def __init__(self, class_priors, tau: float = 1.0, name="logit_adjusted_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_priors = [float(p) for p in class_priors]
        self.tau = float(tau)
        self._log_prior = np.log(np.asarray(self.class_priors, np.float32))

    def call(self, y_true, y_pred):
        return _sparse_ce(y_true, y_pred + self.tau * ops.convert_to_tensor(self._log_prior))

    def get_config(self):
        return {**super().get_config(), "class_priors": self.class_priors, "tau": self.tau}


@saving.register_keras_serializable(package="longtail")
class CrossEntropyLoss(keras_losses.Loss):
    """Plain softmax cross-entropy on logits, -log softmax(f(x))[y]."""

    def __init__(self, name="cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return _sparse_ce(y_true, y_pred)


def make_loss(name: str, stats: dict, tau: float = 1.0) -> keras_losses.Loss:
    """The configured loss, with class counts/priors from the LabelStatsGen artifact ``stats``."""
    registry = {
        "ce": lambda: CrossEntropyLoss(),
        "logit_adjusted": lambda: LogitAdjustedLoss(stats["class_priors"], tau=tau),
    }
    if name not in registry:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(registry)}")
    return registry[name]()

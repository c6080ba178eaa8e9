"""Losses against hand-computed values and NumPy ports of the papers' official formulas.

Backend-agnostic (keras.ops only): this module also runs under KERAS_BACKEND=jax, see
test_backends.py.
"""

import keras
import numpy as np
import pytest

from models.losses import (
    BalancedSoftmaxLoss,
    CrossEntropyLoss,
    DeferredReweighting,
    FocalLoss,
    LDAMLoss,
    LogitAdjustedLoss,
    class_weights_for,
    effective_number_weights,
    ldam_margins,
    logit_adjust,
)

LOGITS = np.array([[2.0, 1.0, 0.0], [0.5, -1.0, 3.0], [0.0, 0.0, 0.0], [-2.0, 4.0, 1.0]], np.float32)
LABELS = np.array([0, 2, 1, 0])
COUNTS = [500, 50, 5]


def value(loss, labels=LABELS, logits=LOGITS):
    return float(keras.ops.convert_to_numpy(loss(keras.ops.convert_to_tensor(labels), keras.ops.convert_to_tensor(logits))))


def np_log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def np_ce(z, y, weight=None):
    """PyTorch F.cross_entropy(z, y, weight): weighted mean of -log softmax, by sum of weights."""
    nll = -np_log_softmax(z.astype(np.float64))[np.arange(len(y)), y]
    w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)[y]
    return float((w * nll).sum() / w.sum())


def test_cross_entropy_by_hand():
    # -log(e^2 / (e^2 + e + 1)) = log(1 + e^-1 + e^-2)
    assert value(CrossEntropyLoss(), LABELS[:1], LOGITS[:1]) == pytest.approx(np.log(1 + np.exp(-1) + np.exp(-2)), rel=1e-6)
    assert value(CrossEntropyLoss()) == pytest.approx(np_ce(LOGITS, LABELS), rel=1e-6)


def test_class_balanced_reweighting_is_a_weighted_mean():
    w = effective_number_weights(COUNTS, beta=0.999)
    assert value(CrossEntropyLoss(class_weights=w)) == pytest.approx(np_ce(LOGITS, LABELS, w), rel=1e-6)
    # official CB formula (Cui et al. code): (1-beta)/(1-beta^n), normalised to sum to C
    ref = (1 - 0.999) / (1 - np.power(0.999, COUNTS))
    np.testing.assert_allclose(w, ref / ref.sum() * 3, rtol=1e-12)


def test_focal_by_hand():
    ce = np.log(1 + np.exp(-1) + np.exp(-2))
    for gamma in (0.0, 1.0, 2.0):
        expected = (1 - np.exp(-ce)) ** gamma * ce
        assert value(FocalLoss(gamma=gamma), LABELS[:1], LOGITS[:1]) == pytest.approx(expected, rel=1e-5)
    assert value(FocalLoss(gamma=0.0)) == pytest.approx(np_ce(LOGITS, LABELS), rel=1e-6)


def np_ldam(z, y, counts, max_m=0.5, s=30.0, weight=None):
    """NumPy port of LDAMLoss.forward in kaidic/LDAM-DRW (losses.py)."""
    m_list = 1.0 / np.sqrt(np.sqrt(np.asarray(counts, np.float64)))
    m_list = m_list * (max_m / np.max(m_list))
    index = np.zeros_like(z, dtype=bool)
    index[np.arange(len(y)), y] = True
    batch_m = m_list[y][:, None]
    output = np.where(index, z - batch_m, z)
    return np_ce(s * output, y, weight)


def test_ldam_against_official_formula():
    cos = np.clip(LOGITS / 5.0, -1, 1)  # LDAM sees cosine logits in [-1, 1]
    assert value(LDAMLoss(COUNTS), LABELS, cos) == pytest.approx(np_ldam(cos, LABELS, COUNTS), rel=1e-5)
    w = effective_number_weights(COUNTS)
    assert value(LDAMLoss(COUNTS, class_weights=w), LABELS, cos) == pytest.approx(np_ldam(cos, LABELS, COUNTS, weight=w),
                                                                                  rel=1e-5)
    m = ldam_margins(COUNTS, 0.5)
    assert m.max() == pytest.approx(0.5) and m[2] == pytest.approx(0.5)  # the rarest class has the largest margin
    assert m[0] / m[2] == pytest.approx((5 / 500) ** 0.25, rel=1e-6)


def np_logit_adjusted(z, y, priors, tau):
    """Menon et al. (google-research/logit_adjustment): CE on logits + tau * log(prior)."""
    return np_ce(z + tau * np.log(np.asarray(priors, np.float64)), y)


def test_logit_adjusted_and_balanced_softmax_against_formulas():
    priors = np.array(COUNTS) / sum(COUNTS)
    for tau in (0.5, 1.0, 2.0):
        assert value(LogitAdjustedLoss(priors, tau)) == pytest.approx(np_logit_adjusted(LOGITS, LABELS, priors, tau), rel=1e-5)
    # balanced softmax = CE on z + log n_c = the logit-adjusted loss with tau = 1
    assert value(BalancedSoftmaxLoss(COUNTS)) == pytest.approx(value(LogitAdjustedLoss(priors, 1.0)), rel=1e-5)
    adjusted = keras.ops.convert_to_numpy(logit_adjust(keras.ops.convert_to_tensor(LOGITS), priors, 1.0))
    np.testing.assert_allclose(adjusted, LOGITS - np.log(priors), rtol=1e-6)


@pytest.mark.parametrize("loss", [CrossEntropyLoss(), FocalLoss(2.0), LDAMLoss(COUNTS), LogitAdjustedLoss([0.9, 0.09, 0.01]),
                                  BalancedSoftmaxLoss(COUNTS), CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0])])
def test_stable_for_huge_logits(loss):
    big = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], np.float32)
    right, wrong = value(loss, np.array([0, 1]), big), value(loss, np.array([1, 0]), big)
    assert np.isfinite(right) and np.isfinite(wrong)
    assert right < 1.0 and wrong > 1e3


@pytest.mark.parametrize("loss", [CrossEntropyLoss(class_weights=[0.5, 1.0, 1.5]), FocalLoss(1.5, [1.0, 2.0, 0.5]),
                                  LDAMLoss(COUNTS, 0.4, 20.0), LogitAdjustedLoss([0.7, 0.2, 0.1], 1.5),
                                  BalancedSoftmaxLoss(COUNTS)])
def test_serialization_round_trip(loss):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    assert value(restored) == pytest.approx(value(loss), rel=1e-7)


def test_deferred_reweighting_schedule():
    drw = DeferredReweighting(COUNTS, drw_epoch=160)
    assert drw.weights_for_epoch(159) is None
    np.testing.assert_allclose(drw.weights_for_epoch(160), effective_number_weights(COUNTS, 0.9999))
    phases = drw.phases(200)
    assert [(a, b) for a, b, _ in phases] == [(0, 160), (160, 200)] and phases[0][2] is None
    assert DeferredReweighting(COUNTS, 300).phases(200) == [(0, 200, None)]


def test_class_weight_kinds_sum_to_num_classes():
    for kind in ("effective_number", "inverse", "sqrt_inverse"):
        w = np.array(class_weights_for(kind, COUNTS))
        assert w.sum() == pytest.approx(3) and w[2] > w[1] > w[0]
    assert class_weights_for("none", COUNTS) is None
    np.testing.assert_allclose(class_weights_for("inverse", COUNTS), (1 / np.array(COUNTS)) * 3 / (1 / np.array(COUNTS)).sum())

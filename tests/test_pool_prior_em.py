"""EM-BCTS (models/pool_estimates.py): bias-corrected temperature scaling, Saerens's EM for the pool's class prior,
the prior-adjusted posteriors, and the bootstrap interval, on synthetic data whose true prior and posteriors are
known: at a 300-image and at a 5-image-a-class validation split."""

import numpy as np
import pytest

from models.class_prior import (
    bcts_log_probabilities,
    em_prior,
    estimate_prior_em_bcts,
    fit_bcts,
    prior_adjusted_log_probabilities,
)

C = 5
MEANS = 2.2 * np.stack([np.cos(2 * np.pi * np.arange(C) / C), np.sin(2 * np.pi * np.arange(C) / C)], axis=1)
TRAIN_PRIOR = 0.5 ** np.arange(C) / (0.5 ** np.arange(C)).sum()  # a long-tailed training set: rho 16


def draw(counts, rng):
    """(logits, labels) of a long-tail-trained, over-confident model: Bayes's log-likelihoods of a 2-D Gaussian
    mixture, plus log of the training prior, times 2."""
    labels = np.repeat(np.arange(C), counts)
    x = MEANS[labels] + rng.standard_normal((len(labels), 2))
    log_lik = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(-1)
    return 2.0 * (log_lik + np.log(TRAIN_PRIOR)), labels


def pool_counts(prior, n=6000):
    return np.round(np.asarray(prior) * n).astype(int)


def test_fit_bcts_recovers_a_known_temperature_and_bias():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((20000, C)) * 3
    t0, b0 = 2.5, np.array([0.8, -0.4, 0.1, -0.3, -0.2])
    p = np.exp(bcts_log_probabilities(z, t0, b0))
    y = np.array([rng.choice(C, p=row) for row in p])
    t, b = fit_bcts(z, y, C)
    assert t == pytest.approx(t0, rel=0.05)
    np.testing.assert_allclose(b, b0 - b0.mean(), atol=0.06)


@pytest.mark.parametrize("pool_prior", [TRAIN_PRIOR, np.full(C, 1 / C), TRAIN_PRIOR[::-1]],
                         ids=["consistent", "uniform", "reversed"])
def test_em_bcts_recovers_the_pool_prior_within_0_05_l1(pool_prior):
    rng = np.random.default_rng(1)
    z_val, y_val = draw([300] * C, rng)
    z_pool, y_pool = draw(pool_counts(pool_prior), rng)
    truth = np.bincount(y_pool, minlength=C) / len(y_pool)
    est = estimate_prior_em_bcts(z_val, y_val, z_pool, C, resamples=40)
    q = np.asarray(est["prior"])
    assert q.sum() == pytest.approx(1.0) and np.abs(q - truth).sum() < 0.05
    low, high = np.asarray(est["interval"]).T
    assert ((low <= truth + 0.01) & (truth - 0.01 <= high)).all()  # the 95% interval holds the truth
    assert est["validation_per_class"] == [300] * C and est["pool_examples"] == len(z_pool)
    raw = np.bincount(z_pool.argmax(1), minlength=C) / len(z_pool)  # the model's own counts: biased to the head
    assert np.abs(q - truth).sum() < np.abs(raw - truth).sum() or np.abs(raw - truth).sum() < 0.05


def test_em_bcts_at_five_images_a_class_says_how_unsure_it_is():
    rng = np.random.default_rng(2)
    z_pool, y_pool = draw(pool_counts(TRAIN_PRIOR[::-1]), rng)
    truth = np.bincount(y_pool, minlength=C) / len(y_pool)
    widths = {}
    for per_class in (300, 5):
        z_val, y_val = draw([per_class] * C, rng)
        est = estimate_prior_em_bcts(z_val, y_val, z_pool, C, resamples=60, seed=3)
        q, interval = np.asarray(est["prior"]), np.asarray(est["interval"])
        assert np.isfinite(q).all() and q.sum() == pytest.approx(1.0) and (q >= 0).all()
        widths[per_class] = float((interval[:, 1] - interval[:, 0]).mean())
        assert est["interval_covers"] is (per_class >= 20)  # at 5 a class the bootstrap is known to under-cover
        if per_class == 5:
            assert np.abs(q - truth).sum() < 0.3  # still far closer than the head-biased counts
    assert widths[5] > 2 * widths[300]  # the small split's interval is the honest, wide one


def test_prior_adjustment_lifts_accuracy_on_a_reversed_pool():
    rng = np.random.default_rng(4)
    z_val, y_val = draw([300] * C, rng)
    z_pool, y_pool = draw(pool_counts(TRAIN_PRIOR[::-1]), rng)
    t, b = fit_bcts(z_val, y_val, C)
    source = np.bincount(y_val, minlength=C) / len(y_val)
    lp = bcts_log_probabilities(z_pool, t, b)
    q, iterations = em_prior(lp, source)
    assert 1 < iterations < 1000
    before = (lp.argmax(1) == y_pool).mean()
    after = (prior_adjusted_log_probabilities(lp, source, q).argmax(1) == y_pool).mean()
    raw = (z_pool.argmax(1) == y_pool).mean()  # the uncalibrated, head-biased model
    assert after > before + 0.01 and after > raw + 0.05
    # a tempered prior (strength 0.5) lands between: half the log shift; strength 0 is the calibrated argmax itself
    half = prior_adjusted_log_probabilities(lp, source, q, strength=0.5)
    np.testing.assert_allclose(prior_adjusted_log_probabilities(lp, source, q, strength=0.0), lp, atol=1e-9)
    shift = np.log(q) - np.log(source)
    np.testing.assert_allclose(half - half[:, :1], (lp + 0.5 * shift) - (lp + 0.5 * shift)[:, :1], atol=1e-9)
    assert before <= (half.argmax(1) == y_pool).mean() + 0.005
    with pytest.raises(ValueError, match=r"prior strength must be in \[0, 1\] \(got 1.5\)"):
        prior_adjusted_log_probabilities(lp, source, q, strength=1.5)


def test_em_bcts_names_a_class_missing_from_validation_and_an_empty_pool():
    rng = np.random.default_rng(5)
    z_val, y_val = draw([5, 5, 0, 5, 5], rng)
    z_pool, _ = draw([10] * C, rng)
    with pytest.raises(ValueError, match=r"classes \[2\] have no example.*\(1 of 5 classes\)"):
        estimate_prior_em_bcts(z_val, y_val, z_pool, C, resamples=2)
    with pytest.raises(ValueError, match=r"pool: no example"):
        estimate_prior_em_bcts(z_val, y_val, z_pool[:0], C)

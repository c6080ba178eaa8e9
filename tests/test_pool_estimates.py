"""Pool estimates: BBSE recovers a known class distribution; relevance from synthetic OOD scores."""

import numpy as np
import pytest

from models.pool_estimates import (
    IllConditionedConfusionError,
    conditional_confusion,
    energy_score,
    estimate_class_distribution,
    estimate_relevance,
    imbalance_ratio,
    in_domain_threshold,
    max_softmax_score,
    relevance_from_fraction,
)


def test_conditional_confusion_convention_pred_given_true():
    labels = [0, 0, 0, 0, 1, 1]
    preds = [0, 0, 0, 1, 1, 0]
    c = conditional_confusion(labels, preds, 2)
    np.testing.assert_allclose(c, [[0.75, 0.5], [0.25, 0.5]])  # C[pred, true]; columns sum to 1
    with pytest.raises(ValueError, match=r"classes \[2\] have no example"):
        conditional_confusion(labels, preds, 3)


def test_bbse_recovers_known_distribution_from_synthetic_confusion():
    # A head-biased model: each class keeps 70-90% and leaks the rest, mostly to class 0.
    c = np.array([[0.90, 0.20, 0.15, 0.10],
                  [0.05, 0.70, 0.05, 0.05],
                  [0.03, 0.05, 0.75, 0.05],
                  [0.02, 0.05, 0.05, 0.80]])
    q = np.array([0.1, 0.2, 0.3, 0.4])  # tail-heavy pool
    counts = c @ q * 10000  # what the model would predict on a 10k-image pool
    raw = counts / counts.sum()
    assert raw[0] > 0.2  # the raw pseudo-label distribution is biased towards the head
    np.testing.assert_allclose(estimate_class_distribution(c, counts), q, atol=1e-9)


def test_bbse_from_sampled_predictions_is_close():
    rng = np.random.default_rng(0)
    k = 5
    c = 0.8 * np.eye(k) + 0.2 / k  # every class right 84% of the time, errors spread evenly
    q = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])
    val_labels = np.repeat(np.arange(k), 2000)
    val_preds = np.array([rng.choice(k, p=c[:, y]) for y in val_labels])
    pool_labels = rng.choice(k, size=20000, p=q)
    pool_preds = np.array([rng.choice(k, p=c[:, y]) for y in pool_labels])
    estimate = estimate_class_distribution(conditional_confusion(val_labels, val_preds, k),
                                           np.bincount(pool_preds, minlength=k))
    np.testing.assert_allclose(estimate, q, atol=0.02)
    assert estimate.sum() == pytest.approx(1.0) and (estimate >= 0).all()


def test_bbse_clips_negative_solution_and_renormalises():
    c = np.array([[0.8, 0.2], [0.2, 0.8]])
    counts = np.array([85.0, 15.0])  # mu outside C's image of the simplex: exact solution q = (1.1, -0.1)
    np.testing.assert_allclose(estimate_class_distribution(c, counts), [1.0, 0.0], atol=1e-12)


def test_bbse_refuses_ill_conditioned_confusion():
    c = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # classes 0 and 1 indistinguishable
    with pytest.raises(IllConditionedConfusionError, match=r"ill-conditioned \(condition number \S+ > 100"):
        estimate_class_distribution(c, [10, 10, 10])
    nearly = np.array([[0.51, 0.49], [0.49, 0.51]])  # cond = 1 / 0.02 = 50
    estimate_class_distribution(nearly, [60, 40])
    with pytest.raises(IllConditionedConfusionError, match=r"condition number 50 > 20"):
        estimate_class_distribution(nearly, [60, 40], max_condition=20)


def test_imbalance_ratio_with_floor():
    assert imbalance_ratio([0.5, 0.25, 0.25]) == 2.0
    assert imbalance_ratio([0.9, 0.1, 0.0]) == pytest.approx(900.0)  # zero share floored at 1e-3
    assert imbalance_ratio([0.9, 0.1, 0.0], floor=0.01) == pytest.approx(90.0)


def test_scores_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(max_softmax_score(probs), [0.7, 1 / 3])
    logits = np.array([[0.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(energy_score(logits), [np.log(2), np.log(np.e**2 + 1)])
    np.testing.assert_allclose(energy_score(logits, temperature=2.0), [2 * np.log(2), 2 * np.log(np.e + 1)])


def test_relevance_on_synthetic_scores():
    rng = np.random.default_rng(1)
    val = rng.normal(5.0, 1.0, 4000)  # in-domain scores
    pool = np.concatenate([rng.normal(5.0, 1.0, 6000), rng.normal(-5.0, 1.0, 4000)])  # 60% in-domain, OOD far below
    est = estimate_relevance(val, pool, tpr=0.95)
    assert est["threshold"] == pytest.approx(5.0 - 1.645, abs=0.1)
    assert est["fraction_above"] == pytest.approx(0.6 * 0.95, abs=0.015)
    assert est["relevance"] == pytest.approx(0.6, abs=0.02)
    assert estimate_relevance(val, rng.normal(5.0, 1.0, 5000))["relevance"] == pytest.approx(1.0, abs=0.02)
    assert estimate_relevance(val, rng.normal(-5.0, 1.0, 5000))["relevance"] == 0.0


def test_relevance_correction_by_hand():
    assert relevance_from_fraction(0.475, tpr=0.95) == pytest.approx(0.5)
    assert relevance_from_fraction(0.99, tpr=0.95) == 1.0  # clipped
    assert relevance_from_fraction(0.5, tpr=0.9, fpr=0.1) == pytest.approx(0.5)  # (0.5 - 0.1) / 0.8
    assert in_domain_threshold(np.arange(101), tpr=0.95) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="fpr < tpr"):
        relevance_from_fraction(0.5, tpr=0.5, fpr=0.5)


def test_summarise_pool_bbse_and_fallbacks():
    from models.pool_estimates import summarise_pool

    labels = np.repeat([0, 1], 10)
    preds = np.array([0] * 10 + [0] * 2 + [1] * 8)  # class 1 leaks 20% to class 0
    out = summarise_pool(2, [60, 40], labels, preds, {"max_softmax": {"relevance": 0.9}, "energy": {"relevance": 0.8}})
    assert out["class_distribution_method"] == "bbse"
    np.testing.assert_allclose(out["estimated_class_distribution"], [0.5, 0.5])  # 60 = 50 + 0.2 * 50
    assert out["raw_class_distribution"] == [0.6, 0.4] and out["raw_rho_u"] == pytest.approx(1.5)
    assert out["estimated_rho_u"] == pytest.approx(1.0)
    assert (out["estimated_relevance"], out["relevance_score"]) == (0.8, "energy")
    no_val = summarise_pool(2, [60, 40])
    assert no_val["estimated_class_distribution"] == [0.6, 0.4] and no_val["class_distribution_method"].startswith("raw")
    confused = summarise_pool(2, [60, 40], labels, np.zeros(20, int))  # everything predicted 0: singular C
    assert "ill-conditioned" in confused["class_distribution_method"]
    assert summarise_pool(2, [0, 0])["class_distribution_method"] == "none: the pool is empty"


def test_soft_confusion_and_bbse_soft_with_a_never_predicted_class():
    from models.pool_estimates import soft_confusion, summarise_pool

    # class 2 is never the argmax (its probability tops out at 0.4), so the hard C has a zero row
    profiles = np.array([[0.8, 0.1, 0.1], [0.1, 0.7, 0.2], [0.45, 0.15, 0.4]])  # row j = p(x) for x of class j
    labels = np.repeat([0, 1, 2], 4)
    probs = profiles[labels]
    c = soft_confusion(labels, probs, 3)
    np.testing.assert_allclose(c, profiles.T)
    q = np.array([0.2, 0.3, 0.5])
    pool_sums = (profiles.T @ q) * 1000  # what 1000 pool images' probabilities would sum to
    hard_counts = np.bincount(probs.argmax(1), minlength=3) * 100
    out = summarise_pool(3, hard_counts, labels, probs.argmax(1), validation_probabilities=probs,
                         pool_probability_sums=pool_sums)
    assert out["class_distribution_method"] == "bbse_soft"
    np.testing.assert_allclose(out["estimated_class_distribution"], q, atol=1e-9)
    assert out["bbse_condition_number"] is None  # the hard C is singular
    hard_only = summarise_pool(3, hard_counts, labels, probs.argmax(1))
    assert hard_only["class_distribution_method"].startswith("raw pseudo-label counts: bbse: validation confusion")


def test_best_bin_relevance_where_ood_scores_overlap():
    from models.pool_estimates import estimate_relevance_best_bin, relevance_best_bin

    rng = np.random.default_rng(2)
    val = rng.normal(0.0, 1.0, 20000)
    in_pool = rng.normal(0.0, 1.0, 5000)
    ood = rng.normal(-2.0, 1.0, 5000)  # overlaps the in-domain scores: one threshold at TPR 0.95 is fooled
    pool = np.concatenate([in_pool, ood])
    fixed = estimate_relevance(val, pool, tpr=0.95)["relevance"]
    best = estimate_relevance_best_bin(val, pool)
    assert fixed > 0.65  # the fixed-TPR estimate with FPR = 0 is far above the true 0.5
    assert best["relevance"] == pytest.approx(0.5, abs=0.05) and best["tpr"] < 0.95
    assert relevance_best_bin({0.9: 0.9, 0.5: 0.3, 0.1: 0.04}) == {
        "relevance": pytest.approx(0.4), "tpr": 0.1, "ratios": {"0.9": 1.0, "0.5": 0.6, "0.1": 0.4}}
    assert relevance_best_bin({0.95: 0.99, 0.5: 0.6})["relevance"] == 1.0  # clipped

"""Pool estimates: BBSE recovers a known class distribution; relevance from synthetic OOD scores."""

import numpy as np
import pytest

from models.class_prior import IllConditionedConfusionError, conditional_confusion, estimate_class_distribution, imbalance_ratio
from models.pool_estimates import energy_score, in_domain_threshold, relevance_from_fraction


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
    logits = np.array([[0.0, 0.0], [2.0, 0.0]])
    np.testing.assert_allclose(energy_score(logits), [np.log(2), np.log(np.e**2 + 1)])
    np.testing.assert_allclose(energy_score(logits, temperature=2.0), [2 * np.log(2), 2 * np.log(np.e + 1)])


def fixed_tpr_relevance(val, pool, tpr: float = 0.95) -> float:
    """One threshold at a fixed TPR, FPR 0: the estimator the best bin replaced, from the pieces it keeps."""
    return relevance_from_fraction(float(np.mean(np.asarray(pool) >= in_domain_threshold(val, tpr))), tpr)


def test_relevance_on_synthetic_scores():
    rng = np.random.default_rng(1)
    val = rng.normal(5.0, 1.0, 4000)  # in-domain scores
    pool = np.concatenate([rng.normal(5.0, 1.0, 6000), rng.normal(-5.0, 1.0, 4000)])  # 60% in-domain, OOD far below
    threshold = in_domain_threshold(val, 0.95)
    fraction = float(np.mean(pool >= threshold))
    assert threshold == pytest.approx(5.0 - 1.645, abs=0.1)
    assert fraction == pytest.approx(0.6 * 0.95, abs=0.015)
    assert fixed_tpr_relevance(val, pool) == pytest.approx(0.6, abs=0.02)
    assert fixed_tpr_relevance(val, rng.normal(5.0, 1.0, 5000)) == pytest.approx(1.0, abs=0.02)
    assert fixed_tpr_relevance(val, rng.normal(-5.0, 1.0, 5000)) == 0.0


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
    from models.class_prior import soft_confusion
    from models.pool_estimates import summarise_pool

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
    fixed = fixed_tpr_relevance(val, pool)
    best = estimate_relevance_best_bin(val, pool)
    assert fixed > 0.65  # the fixed-TPR estimate with FPR = 0 is far above the true 0.5
    assert best["relevance"] == pytest.approx(0.5, abs=0.05) and best["tpr"] < 0.95
    assert relevance_best_bin({0.9: 0.9, 0.5: 0.3, 0.1: 0.04}) == {
        "relevance": pytest.approx(0.4), "tpr": 0.1, "ratios": {"0.9": 1.0, "0.5": 0.6, "0.1": 0.4}}
    assert relevance_best_bin({0.95: 0.99, 0.5: 0.6})["relevance"] == 1.0  # clipped


def test_class_conditional_relevance_by_hand():
    from models.pool_estimates import ClassConditionalCalibration

    # one group (every class pooled is not needed: min_examples=1), validation scores 1..4
    cal = ClassConditionalCalibration([0, 0, 0, 0], [0, 0, 0, 0], [1.0, 2.0, 3.0, 4.0], 1, min_examples=1)
    np.testing.assert_allclose(cal.edges[0], [1, 2, 3, 4])
    assert cal.bin_of(0, 0.5) == (0, 0) and cal.bin_of(0, 3.0) == (0, 3) and cal.bin_of(0, 9.0) == (0, 4)
    counts = cal.count_pool([0, 0, 0, 0], [0.0, 2.5, 3.0, 5.0])
    np.testing.assert_array_equal(counts[0], [1, 0, 1, 1, 1])
    # TPR 1: threshold 1, 3 pool images at or above -> 3 / 1; TPR 0.5: threshold 3 (2 of 4 at or above), 2 pool
    # images -> 2 / 0.5 = 4; the best bin is 3 in-domain images of 4
    out = cal.relevance(counts, 4, tprs=(1.0, 0.5), min_above=1)
    assert out["relevance"] == pytest.approx(0.75)
    assert out["groups"]["0"]["ratios"] == {"1": 3.0, "0.5": 4.0} and out["groups"]["0"]["tpr"] == 1.0
    # min_above: TPR 0.5 keeps 2 validation images, fewer than 3, so only the first TPR is tried
    assert cal.relevance(counts, 4, tprs=(1.0, 0.5), min_above=3)["groups"]["0"]["ratios"] == {"1": 3.0}


def _two_class_validation(n=500):
    """Class 0 (head) scores in [2, 4], class 1 (tail) in [-1, 1]; the model predicts both right."""
    scores = np.concatenate([np.linspace(2, 4, n), np.linspace(-1, 1, n)])
    labels = np.repeat([0, 1], n)
    return labels, labels.copy(), scores


def test_class_conditional_holds_on_a_tail_heavy_pool_where_the_global_estimate_fails():
    from models.pool_estimates import estimate_relevance_best_bin, estimate_relevance_class_conditional

    labels, preds, scores = _two_class_validation()
    pool_preds = np.repeat([0, 1], [100, 900])  # in-domain, 90% tail
    pool_scores = np.concatenate([np.linspace(2, 4, 100), np.linspace(-1, 1, 900)])
    assert estimate_relevance_best_bin(scores, pool_scores)["relevance"] < 0.3  # the tail looks out-of-domain
    cc = estimate_relevance_class_conditional(labels, preds, scores, pool_preds, pool_scores, 2)
    assert cc["relevance"] == pytest.approx(1.0, abs=0.02) and cc["pooled_classes"] == []
    # half of it replaced by out-of-domain images the model calls class 1, scoring below the tail's
    ood = np.linspace(-3, -1.5, 1000)
    mixed = estimate_relevance_class_conditional(labels, preds, scores, np.concatenate([pool_preds, np.ones(1000, int)]),
                                                 np.concatenate([pool_scores, ood]), 2)
    assert mixed["relevance"] == pytest.approx(0.5, abs=0.02)
    assert mixed["groups"]["1"]["pool_examples"] == 1900 and mixed["groups"]["1"]["in_domain_estimate"] <= 910


def test_class_conditional_reweights_a_predicted_class_by_the_pool_class_mix():
    from models.pool_estimates import estimate_relevance_class_conditional

    # class 2 is always predicted as class 0 and scores lower than the true class 0
    n = 300
    labels = np.repeat([0, 1, 2], n)
    preds = np.array([0] * n + [1] * n + [0] * n)
    scores = np.concatenate([np.linspace(2, 4, n), np.linspace(2, 4, n), np.linspace(0, 1, n)])
    pool_preds = np.zeros(1000, int)  # in-domain: 100 of class 0, 900 of class 2
    pool_scores = np.concatenate([np.linspace(2, 4, 100), np.linspace(0, 1, 900)])
    q = np.array([0.1, 0.0, 0.9])
    plain = estimate_relevance_class_conditional(labels, preds, scores, pool_preds, pool_scores, 3)
    weighted = estimate_relevance_class_conditional(labels, preds, scores, pool_preds, pool_scores, 3, q)
    assert plain["relevance"] < 0.8  # calibrated on a 50/50 mix of classes 0 and 2, the pool's 10/90 looks low
    assert weighted["relevance"] == pytest.approx(1.0, abs=0.03)
    assert weighted["weighting"].startswith("pool class distribution")
    with pytest.raises(ValueError, match="must be 3 shares"):
        estimate_relevance_class_conditional(labels, preds, scores, pool_preds, pool_scores, 3, [1.0, 0.0])


def test_class_conditional_pools_rarely_predicted_classes():
    from models.pool_estimates import POOLED, ClassConditionalCalibration

    labels = np.repeat([0, 1, 2], 40)
    preds = np.array([0] * 40 + [1] * 40 + [0] * 35 + [2] * 5)  # class 2 predicted 5 times: pooled
    cal = ClassConditionalCalibration(labels, preds, np.arange(120.0), 3, min_examples=30)
    assert cal.pooled_classes == [2] and cal.group_of == [0, 1, POOLED]
    assert cal.pooled_source == "whole validation split"  # 5 < 30: the group uses all 120 images
    assert len(cal.edges[POOLED]) == 120 and cal.bin_of(2, 4.5)[0] == POOLED
    cal = ClassConditionalCalibration(labels, preds, np.arange(120.0), 3, min_examples=5)
    assert cal.pooled_classes == [] and cal.pooled_source == "none"
    with pytest.raises(ValueError, match="3 labels, 2 predictions and 3 scores"):
        ClassConditionalCalibration([0, 1, 2], [0, 1], [1.0, 2.0, 3.0], 3)


def test_logit_gaussian_mahalanobis_by_hand():
    from models.pool_estimates import LogitGaussian

    # class means (0, 0) and (4, 0); every point 1 from its mean along y: Sigma = [[0, 0], [0, 1]] (singular)
    g = LogitGaussian([0, 0, 1, 1], [[0, 1], [0, -1], [4, 1], [4, -1]], 2)
    np.testing.assert_allclose(g.means, [[0, 0], [4, 0]])
    np.testing.assert_allclose(g.precision, [[0, 0], [0, 1]], atol=1e-12)  # the pseudo-inverse
    np.testing.assert_allclose(g([[0, 0], [2, 3], [4, -2]]), [0.0, -9.0, -4.0])
    with pytest.raises(ValueError, match=r"classes \[2\] have no example"):
        LogitGaussian([0, 1], [[0, 0, 0], [1, 1, 1]], 3)


def test_summarise_pool_headline_is_class_conditional_mahalanobis():
    from models.pool_estimates import ClassConditionalCalibration, summarise_pool

    labels = np.repeat([0, 1], 10)
    preds = np.array([0] * 10 + [0] * 2 + [1] * 8)
    cal = ClassConditionalCalibration(labels, preds, np.arange(20.0), 2, min_examples=1)
    counts = cal.count_pool(np.array([0] * 60 + [1] * 40), np.full(100, 100.0))  # every pool image scores top
    global_ = {"mahalanobis": {"relevance": 0.3}, "energy": {"relevance": 0.8}}
    out = summarise_pool(2, [60, 40], labels, preds, global_, class_conditional={"mahalanobis": (cal, counts)})
    cc = out["relevance"]["mahalanobis"]["class_conditional"]
    assert (out["relevance_score"], out["relevance_estimator"]) == ("mahalanobis", "class_conditional")
    assert out["estimated_relevance"] == cc["relevance"] == 1.0 and out["relevance"]["mahalanobis"]["relevance"] == 0.3
    assert cc["weighting"].startswith("pool class distribution")  # BBSE gave q = (0.5, 0.5)
    assert global_["mahalanobis"] == {"relevance": 0.3}  # the caller's dict is not changed
    confused = summarise_pool(2, [60, 40], labels, np.zeros(20, int), class_conditional={"mahalanobis": (cal, counts)})
    assert confused["relevance"]["mahalanobis"]["class_conditional"]["weighting"].startswith("none: raw pseudo-label")


def test_out_of_fold_mahalanobis_at_six_validation_images_a_class_keeps_an_in_domain_pool_in_domain():
    """Issue #27: Gaussians fitted on 6 images a class score those same images too well (each pulls its class mean
    towards itself), the in-domain thresholds sit too high and a fully in-domain pool looks 40% out of domain.
    Scored out of fold, the validation images score like fresh in-domain images."""
    from models.pool_estimates import LogitGaussian, estimate_relevance_class_conditional

    rng = np.random.default_rng(0)
    k, dim = 10, 10
    centres = rng.normal(0, 3.0, (k, dim))

    def draw(counts):
        labels = np.repeat(np.arange(k), counts)
        return labels, centres[labels] + rng.normal(0, 1.0, (labels.size, dim))

    val_labels, val_logits = draw([6] * k)
    pool_labels, pool_logits = draw([300] * k)  # entirely in domain
    g = LogitGaussian(val_labels, val_logits, k)
    in_sample, oof = g(val_logits), g.out_of_fold(val_labels, val_logits)
    assert np.median(in_sample) > np.median(oof)  # the in-sample scores are optimistic
    fresh = g(pool_logits)
    assert abs(np.median(oof) - np.median(fresh)) < abs(np.median(in_sample) - np.median(fresh)) / 3

    def relevance(val_scores):
        nearest = np.argmin(((pool_logits[:, None] - g.means[None]) ** 2).sum(-1), 1)  # the pool's predicted class
        return estimate_relevance_class_conditional(val_labels, val_labels, val_scores, nearest, fresh, k)["relevance"]

    assert relevance(in_sample) < 0.4 and relevance(oof) > 0.7  # measured 0.32 and 0.75 (best bin still leans low)
    labels300, logits300 = draw([300] * k)  # at 300 a class the two barely differ
    g300 = LogitGaussian(labels300, logits300, k)
    assert abs(np.median(g300(logits300)) - np.median(g300.out_of_fold(labels300, logits300))) < 0.5

"""The data-aware planner's decision table, its reasons and its one-sentence explanation."""

import json
import re

import pytest

from models.planner import (
    PSEUDO_LABEL,
    SSP,
    SUPERVISED,
    PlannerThresholds,
    PoolEstimates,
    explain,
    plan,
    reason_text,
    reasons_text,
)

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]  # Fashion-MNIST-LT rho=100: 12,406 labeled
N = sum(COUNTS)


@pytest.mark.parametrize("pool,thresholds,choice,last_reason", [
    (PoolEstimates(7000, 0.98, 1.2), None, PSEUDO_LABEL, r"rho_U 1\.2 <= 10 \(balanced enough"),
    (PoolEstimates(7000, 0.98, 95.0), None, SSP, r"rho_U 95\.0 > 10: pseudo-labels would mostly add head-class"),
    (PoolEstimates(7000, 0.98, 95.0), PlannerThresholds(max_pool_imbalance=None), PSEUDO_LABEL, r"rho_U 95\.0 \("),
    (PoolEstimates(7000, 0.45, 1.0), None, SSP, r"relevance 0\.45 < 0\.60"),
    (PoolEstimates(7000, 0.60, 1.0), None, PSEUDO_LABEL, r"rho_U 1\.0"),  # at the threshold: relevant enough
    (PoolEstimates(400, 1.0, 1.0), None, SSP, r"about 400 in-domain pool images < 500"),
    (PoolEstimates(4000, 0.7, 1.0), None, SSP, r"in-domain pool / labeled = 0\.23 < 0\.25"),  # 2800 / 12406
    (PoolEstimates(7000, 0.98, 95.0), PlannerThresholds(max_pool_imbalance=50), SSP, r"rho_U 95\.0 > 50"),
    (PoolEstimates(7000, None, None), None, PSEUDO_LABEL, "rho_U was not estimated"),
    (PoolEstimates(7000, 0.9, 1.0), PlannerThresholds(min_relevance=0.95), SSP, r"relevance 0\.90 < 0\.95"),
    (PoolEstimates(0, None, None), None, SUPERVISED, r"pool is empty \(0 images\)"),
    # the same rho_U with the labeled set's head first, and reversed (its tail classes most of the pool)
    (PoolEstimates(7000, 0.9, 95.0, tuple(c / sum(COUNTS) for c in COUNTS)), None, SSP, r"mostly add head-class"),
    (PoolEstimates(7000, 0.9, 95.0, tuple(c / sum(COUNTS) for c in COUNTS[::-1])), None, PSEUDO_LABEL,
     r"rho_U 95\.0 > 10, but its frequent classes are the labeled set's rare ones \(the labeled head classes hold 0\.07"),
])
def test_decision_table(pool, thresholds, choice, last_reason):
    result = plan(N, COUNTS, pool, thresholds)
    assert result["choice"] == choice


    assert result["reasons"][-1]["code"] == result["decided_by"]  # reasons are data; the deciding one last
    assert re.search(last_reason, reasons_text(result)[-1]), reasons_text(result)
    json.dumps(result)  # JSON-ready for metrics.json


def test_empty_pool_is_supervised_and_says_so():
    result = plan(N, COUNTS, PoolEstimates(0))
    assert result == {
        "choice": SUPERVISED,
        "decided_by": "pool_empty",
        "reasons": [{"code": "pool_empty"}],
        "estimates": result["estimates"],
    }
    assert reasons_text(result) == ["the unlabeled pool is empty (0 images): supervised training on the labeled set only"]
    assert result["estimates"]["pool_size"] == 0 and result["estimates"]["num_labeled"] == N
    assert explain(result) == "Trained on the labeled images only, because there is no unlabeled pool."


def test_estimates_and_reasons_carry_the_numbers():
    result = plan(N, COUNTS, PoolEstimates(7000, 0.9, 3.0))
    e = result["estimates"]
    assert e["labeled_imbalance_ratio"] == 100.0
    assert e["pool_in_domain_examples"] == 6300.0
    assert e["pool_to_labeled_ratio"] == pytest.approx(6300 / N, abs=1e-4)
    assert e["thresholds"]["min_relevance"] == 0.6
    assert result["reasons"][0] == {"code": "relevance_ok", "relevance": 0.9, "min_relevance": 0.6}
    assert [reason_text(r) for r in result["reasons"][:2]] == ["estimated relevance 0.90 >= 0.60",
                                     f"about 6300 in-domain pool images, 0.51x the {N} labeled (>= 0.25x and >= 500)"]


def test_explain_one_sentence_per_choice():
    pseudo = explain(plan(N, COUNTS, PoolEstimates(7000, 0.98, 1.0)))
    assert pseudo.startswith("The model labeled the 7,000-image unlabeled pool, about 98% of it like the labeled images,")
    ssp = explain(plan(N, COUNTS, PoolEstimates(7000, 0.45, 1.0)))
    assert ssp == ("The 7,000-image unlabeled pool, about 45% of it like the labeled images, was not pseudo-labeled "
                   "(estimated relevance 0.45 < 0.60); self-supervised pre-training on the images is used instead.")
    for sentence in (pseudo, ssp):
        assert sentence.count(". ") == 0 and sentence.endswith(".")


def test_thresholds_are_frozen_and_labeled_set_required():
    with pytest.raises(AttributeError):
        PlannerThresholds().min_relevance = 0.1
    with pytest.raises(ValueError, match="labeled set is empty"):
        plan(0, [0, 0], PoolEstimates(10))


def test_pool_estimates_from_pseudo_label_stats():
    stats = {"num_pool_examples": 7000, "estimated_relevance": 0.5, "estimated_rho_u": 2.0, "per_class_predicted": [1]}
    assert PoolEstimates.from_pseudo_label_stats(stats) == PoolEstimates(7000, 0.5, 2.0)
    with_q = PoolEstimates.from_pseudo_label_stats({**stats, "estimated_class_distribution": [0.25, 0.75]})
    assert with_q.class_distribution == (0.25, 0.75)


def test_head_share_ranks_classes_by_count_not_by_index():
    from models.planner import head_share

    assert head_share([10, 500, 40, 1000], [0.4, 0.1, 0.4, 0.1]) == pytest.approx(0.2)  # heads: classes 1 and 3
    assert head_share([10, 500], None) is None
    assert PoolEstimates.from_pseudo_label_stats({"num_pool_examples": 0}) == PoolEstimates(0)

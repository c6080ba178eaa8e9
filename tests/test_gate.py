"""The gate's decisions on real per-class metrics: floors, margins and empty groups."""

import numpy as np

from components.gate import GateThresholds, decide
from models.metrics import per_class_metrics

NAMES = [f"c{i}" for i in range(4)]
GROUPS = {"many": [2], "medium": [0, 3], "few": [1]}  # class 1 is the rarest: not index order


def _metrics(preds, labels):
    return per_class_metrics(labels, preds, 4, GROUPS)


def _good():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    preds = np.where(rng.random(200) < 0.85, labels, (labels + 1) % 4)
    return labels, preds


def test_crippled_candidate_that_never_predicts_the_rarest_class_is_not_blessed():
    labels, preds = _good()
    t = GateThresholds(min_balanced_accuracy=0.5, min_per_class_recall=0.3)
    blessed, _ = decide(_metrics(preds, labels), None, t, NAMES)
    assert blessed
    crippled = np.where(preds == 1, 2, preds)  # never predicts class 1
    blessed, checks = decide(_metrics(crippled, labels), None, t, NAMES)
    assert not blessed
    failed = [c for c in checks if not c["passed"]]
    assert [c["check"] for c in failed] == ["every class recall >= floor"]
    assert "c1 0.000" in failed[0]["detail"]


def test_worse_than_last_blessed_by_more_than_margin_is_not_blessed():
    labels, preds = _good()
    baseline = _metrics(preds, labels)
    worse = preds.copy()
    worse[(labels == 1)[:]] = np.where(np.arange(50) < 20, 0, preds[labels == 1])  # 20 few-shot hits lost
    cand = _metrics(worse, labels)
    t = GateThresholds(min_balanced_accuracy=0.0, min_per_class_recall=0.0, max_drop_balanced_accuracy=0.5,
                       max_drop_few_shot_accuracy=0.05)
    blessed, checks = decide(cand, baseline, t, NAMES)
    assert not blessed
    assert [c["check"] for c in checks if not c["passed"]] == ["few-shot accuracy drop vs last blessed"]
    blessed, _ = decide(cand, baseline, GateThresholds(0.0, 0.0, 0.5, 0.5), NAMES)
    assert blessed  # within a looser margin
    tight = GateThresholds(0.0, 0.0, max_drop_balanced_accuracy=0.01, max_drop_few_shot_accuracy=1.0)
    blessed, checks = decide(cand, baseline, tight, NAMES)
    assert not blessed and [c["check"] for c in checks if not c["passed"]] == ["balanced_accuracy drop vs last blessed"]


def test_empty_few_shot_group_does_not_crash_the_gate():
    labels, preds = _good()
    groups = {"many": [0, 1, 2, 3], "medium": [], "few": []}
    m = per_class_metrics(labels, preds, 4, groups)
    assert m["few_shot_accuracy"] is None
    blessed, checks = decide(m, m, GateThresholds(0.5, 0.3), NAMES)
    assert blessed and "not applicable" in checks[-1]["detail"]

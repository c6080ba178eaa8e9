"""The gate's decisions on real per-class metrics: floors, margins and empty groups."""

import json

import numpy as np
import pytest

from components.gate import GateThresholds, PerClassGate, decide
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
    blessed, _ = decide(PerClassGate(NAMES), _metrics(preds, labels), None, t)
    assert blessed
    crippled = np.where(preds == 1, 2, preds)  # never predicts class 1
    blessed, checks = decide(PerClassGate(NAMES), _metrics(crippled, labels), None, t)
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
    blessed, checks = decide(PerClassGate(NAMES), cand, baseline, t)
    assert not blessed
    assert [c["check"] for c in checks if not c["passed"]] == ["few-shot accuracy drop vs last blessed"]
    blessed, _ = decide(PerClassGate(NAMES), cand, baseline, GateThresholds(0.0, 0.0, 0.5, 0.5))
    assert blessed  # within a looser margin
    tight = GateThresholds(0.0, 0.0, max_drop_balanced_accuracy=0.01, max_drop_few_shot_accuracy=1.0)
    blessed, checks = decide(PerClassGate(NAMES), cand, baseline, tight)
    assert not blessed and [c["check"] for c in checks if not c["passed"]] == ["balanced_accuracy drop vs last blessed"]


def test_empty_few_shot_group_does_not_crash_the_gate():
    labels, preds = _good()
    groups = {"many": [0, 1, 2, 3], "medium": [], "few": []}
    m = per_class_metrics(labels, preds, 4, groups)
    assert m["few_shot_accuracy"] is None
    blessed, checks = decide(PerClassGate(NAMES), m, m, GateThresholds(0.5, 0.3))
    assert blessed and "not applicable" in checks[-1]["detail"]


# ---- how sure the gate is, at a user's 5 validation images a class (issue #27)


def test_wilson_interval_matches_the_formula_and_stays_in_range():
    from models.uncertainty import wilson_interval

    lo, hi = wilson_interval(4, 5)  # p=0.8, n=5, z=1.96: the closed form
    z, p, n = 1.959964, 0.8, 5
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (round(lo, 4), round(hi, 4)) == (round(centre - half, 4), round(centre + half, 4)) == (0.3755, 0.9638)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0 and wilson_interval(0, 0) is None


def test_intervals_at_five_images_a_class_are_wide_and_name_the_classes_too_small_to_judge():
    from models.uncertainty import recall_intervals

    labels = np.repeat(np.arange(4), [5, 5, 5, 4])  # class 3 has 4 gate images
    preds = labels.copy()
    preds[[0, 5]] = 2  # one miss in classes 0 and 1
    u = recall_intervals(labels, preds, 4)
    assert u["per_class_support"] == [5, 5, 5, 4] and u["classes_too_small"] == [3]
    lo, hi = u["balanced_accuracy_interval"]
    assert lo < 0.9 < hi <= 1.0 and hi - lo > 0.1  # 19 images: no sharper than this
    big = recall_intervals(np.repeat(labels, 60), np.repeat(preds, 60), 4)  # the same rates on 60x the images
    assert big["balanced_accuracy_interval"][1] - big["balanced_accuracy_interval"][0] < (hi - lo) / 4
    m = per_class_metrics(labels, preds, 4, GROUPS)
    m["uncertainty"] = u
    blessed, checks = decide(PerClassGate(NAMES), m, None, GateThresholds(0.5, 0.3))
    assert blessed
    per_class = next(c for c in checks if c["check"] == "every class recall >= floor")
    assert per_class["certainty"] == "too few images" and "too few images to judge c3" in per_class["detail"]
    assert "interval [" in checks[0]["detail"] and checks[0]["certainty"] == "sure"


def test_a_drop_of_one_image_in_a_small_split_is_noise_but_a_broken_candidate_is_caught():
    from models.uncertainty import paired_drop

    labels = np.repeat(np.arange(4), 5)
    base = labels.copy()
    one_off = labels.copy()
    one_off[0] = 1  # one image of 20 answered differently: point drop 0.05
    t = GateThresholds(0.0, 0.0, max_drop_balanced_accuracy=0.01, max_drop_few_shot_accuracy=0.02)
    point_blessed, _ = decide(PerClassGate(NAMES), _metrics(one_off, labels), _metrics(base, labels), t)
    assert not point_blessed  # the point rule would block it on one image
    comparison = {"balanced_accuracy": paired_drop(labels, base, one_off, 4),
                  "few_shot": paired_drop(labels, base, one_off, 4, GROUPS["few"])}
    assert comparison["balanced_accuracy"]["drop"] == 0.05 and comparison["balanced_accuracy"]["images_that_differ"] == 1
    blessed, checks = decide(PerClassGate(NAMES, comparison), _metrics(one_off, labels), _metrics(base, labels), t)
    assert blessed and checks[2]["certainty"] == "unsure" and "1 answered differently" in checks[2]["detail"]
    broken = (labels + 1) % 4  # every image wrong
    comparison = {"balanced_accuracy": paired_drop(labels, base, broken, 4), "few_shot": None}
    blessed, checks = decide(PerClassGate(NAMES, comparison), _metrics(broken, labels), _metrics(base, labels), t)
    assert not blessed and checks[2]["certainty"] == "sure" and checks[2]["value"] == 1.0


def test_a_baseline_of_another_label_space_is_no_comparable_model(tmp_path):
    from components.evaluator import incomparable_baseline
    from models.export import SERVING_METADATA

    def model(uri, classes):
        path = tmp_path / uri / "Format-Serving" / SERVING_METADATA
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"class_names": classes}))
        return str(tmp_path / uri)

    same = model("a", NAMES)
    other = model("b", ["zero", "one", "two", "three"])
    assert incomparable_baseline(same, NAMES) is None
    reason = incomparable_baseline(other, NAMES)
    assert reason.startswith("no comparable blessed model") and "'zero'" in reason and "'c0'" in reason
    labels, preds = _good()
    blessed, checks = decide(PerClassGate(NAMES), _metrics(preds, labels), None, GateThresholds(0.5, 0.3),
                             no_baseline_reason=reason)
    assert blessed and checks[-1]["detail"] == reason


def test_the_pusher_refuses_a_serving_folder_whose_newest_version_serves_other_classes(tmp_path):
    from components.pusher import LabelSpaceError, check_same_label_space
    from models.export import SERVING_METADATA

    def version(path, classes):
        (path / SERVING_METADATA).parent.mkdir(parents=True)
        (path / SERVING_METADATA).write_text(json.dumps({"class_names": classes}))
        return str(path)

    base = tmp_path / "serving" / "longtail-smoke"
    version(base / "100", ["shirt", "bag"])
    version(base / "200", ["zero", "one"])  # the newest
    check_same_label_space(str(tmp_path / "empty"), str(tmp_path / "nothing-yet"))  # no folder yet: fine
    check_same_label_space(version(tmp_path / "ours", ["zero", "one"]), str(base))  # same classes: fine
    with pytest.raises(LabelSpaceError, match=r"newest version 200 serves classes \['zero', 'one'\], this model serves "
                                              r"\['shirt', 'bag'\]"):
        check_same_label_space(version(tmp_path / "theirs", ["shirt", "bag"]), str(base))

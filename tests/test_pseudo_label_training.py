"""Pseudo-label training in the Trainer (models/pseudo_label.py, models/training.py): the run-time plan, the
combined label statistics, and the reader of labeled + pseudo-labeled examples with weight w."""

import os

import numpy as np
import pytest

from models import planner
from models.config import PlannerConfig, PseudoLabelConfig, SemiConfig, TrainConfig
from models.dotted import from_dict
from models.planner import explain
from models.pseudo_label import combined_stats, decide

STATS = {"num_classes": 3, "num_examples": 1000, "class_counts": [800, 150, 50], "class_priors": [0.8, 0.15, 0.05]}


def _pl_stats(size, relevance=0.9, rho_u=5.0, accepted=(10, 20, 30)):
    return {"num_pool_examples": size, "estimated_relevance": relevance, "estimated_rho_u": rho_u,
            "per_class_accepted": list(accepted), "num_accepted": sum(accepted)}


def test_auto_follows_the_planner():
    plan = decide(SemiConfig(method="auto"), STATS, _pl_stats(5000))
    assert plan["choice"] == planner.PSEUDO_LABEL and plan["trained_with"] == planner.PSEUDO_LABEL
    assert plan["semi"] == "auto" and plan["estimates"]["pool_size"] == 5000
    assert "retrained on the labeled images plus these pseudo-labels" in explain(plan)


def test_auto_with_a_small_or_irrelevant_pool_runs_ssp_in_the_trainer():
    for pl, why in ((_pl_stats(100), "in-domain"), (_pl_stats(5000, relevance=0.3), "relevance")):
        plan = decide(SemiConfig(method="auto"), STATS, pl)
        assert plan["choice"] == planner.SSP and plan["trained_with"] == planner.SSP and plan["inline_ssp"] == "rotation"
        assert "runs rotation self-supervised pre-training" in plan["reasons_text"][-1]
        sentence = explain(plan)
        assert "ran rotation self-supervised pre-training on the labeled images" in sentence and why in sentence
    assert decide(SemiConfig(method="auto", planner=PlannerConfig(ssp="moco")), STATS, _pl_stats(100))["inline_ssp"] == "moco"


def test_auto_with_plan_ssp_none_trains_supervised_and_recommends_ssp():
    for pl in (_pl_stats(100), _pl_stats(5000, relevance=0.3)):
        plan = decide(SemiConfig(method="auto", planner=PlannerConfig(ssp="none")), STATS, pl)
        assert plan["choice"] == planner.SSP and plan["trained_with"] == planner.SUPERVISED
        assert "--set ssp=rotation" in plan["reasons_text"][-1] and "--set ssp=rotation" in explain(plan)
    plan = decide(SemiConfig(method="auto"), STATS, _pl_stats(100), pretrain_method="rotation")
    assert "already on" in plan["reasons_text"][-1] and "warm-started" in explain(plan)


def test_auto_with_an_empty_pool_is_supervised_and_says_so():
    plan = decide(SemiConfig(method="auto"), STATS, None)
    assert plan["choice"] == planner.SUPERVISED and plan["trained_with"] == planner.SUPERVISED
    assert "empty" in plan["reasons_text"][0] and "no unlabeled pool" in explain(plan)


def test_pseudo_label_overrides_the_planner_and_zero_accepted_falls_back():
    plan = decide(SemiConfig(method="pseudo_label"), STATS, _pl_stats(100))
    assert plan["choice"] == planner.SSP and plan["trained_with"] == planner.PSEUDO_LABEL
    assert "overrides" in plan["reasons_text"][-1] and "semi.method=pseudo_label was set" in explain(plan)
    plan = decide(SemiConfig(method="pseudo_label"), STATS, _pl_stats(100, accepted=(0, 0, 0)))
    assert plan["trained_with"] == planner.SUPERVISED and "no pseudo-label was accepted" in plan["reasons_text"][-1]


def test_semi_config_validates():
    with pytest.raises(ValueError, match="unknown training mode semi.method='pseudo'"):
        from_dict(SemiConfig, {"method": "pseudo"})
    with pytest.raises(ValueError, match="unknown semi.planner.ssp 'simclr'"):
        from_dict(SemiConfig, {"method": "auto", "planner": {"ssp": "simclr"}})
    with pytest.raises(ValueError, match="semi.pseudo_label.weight must be >= 0"):
        PseudoLabelConfig(weight=-1.0)
    assert from_dict(SemiConfig, {"method": "auto"}).pseudo_label.threshold == 0.0  # the paper: no confidence filter


def test_combined_stats_counts_pseudo_labels_and_weighs_the_priors():
    out = combined_stats(STATS, [10, 20, 30], 0.5)
    assert out["class_counts"] == [810, 170, 80] and out["num_examples"] == 1060
    np.testing.assert_allclose(out["class_priors"], np.array([805, 160, 65]) / 1030)
    assert STATS["class_counts"] == [800, 150, 50]  # not modified
    with pytest.raises(ValueError, match="classes"):
        combined_stats(STATS, [1, 2], 1.0)


def _write(path, images, labels, pseudo):
    import tensorflow as tf

    from components.data.prepare import encode_png
    from components.pseudo_labeler import to_example

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for image, label in zip(images, labels):
            if pseudo:  # the PseudoLabeler's examples: image, label, confidence, origin
                w.write(to_example({"image": encode_png(image), "label": int(label), "confidence": 0.7}))
            else:
                w.write(tf.train.Example(features=tf.train.Features(feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_png(image)])),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))})).SerializeToString())


@pytest.mark.parametrize("sampler", ["instance", "class_balanced"])
def test_trainer_input_reads_pseudo_labeled_examples_with_weight(tmp_path, sampler):
    from models.toolkit import labeled_dataset

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 8, 8, 1), dtype=np.uint8)
    labeled, pseudo = str(tmp_path / "l" / "a.gz"), str(tmp_path / "p" / "b.gz")
    _write(labeled, images[:6], [0, 0, 0, 0, 1, 2], pseudo=False)
    _write(pseudo, images[6:], [1, 1, 2, 2, 2, 1], pseudo=True)
    cfg = TrainConfig(batch_size=12, augment=False, sampler=sampler)
    stats = combined_stats({"num_classes": 3, "num_examples": 6, "class_counts": [4, 1, 1]}, [0, 3, 3], 0.25)
    ds, steps = labeled_dataset(cfg, [labeled], stats, [8, 8, 1], sampler, 1, pseudo_files=[pseudo], pseudo_weight=0.25)
    # the sources' untuned option reaches the sampled, mixed and batched pipeline (models.inputs.untuned)
    assert ds.options().autotune.enabled is False
    x, y, w = next(iter(ds))
    assert steps == 1 and x.shape == (12, 8, 8, 1) and set(np.unique(w.numpy())) <= {1.0, 0.25}
    if sampler == "instance":  # one shuffled pass: every example once, its weight by origin
        assert sorted(y.numpy().tolist()) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
        assert sorted(w.numpy().tolist()) == [0.25] * 6 + [1.0] * 6
    # w == 1: no weights at all, labeled + pseudo-labeled read as one set
    ds, _ = labeled_dataset(cfg, [labeled], stats, [8, 8, 1], sampler, 1, pseudo_files=[pseudo], pseudo_weight=1.0)
    assert len(next(iter(ds))) == 2

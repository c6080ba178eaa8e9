"""Label statistics: the math against hand-computed numbers, and LabelStatsGen's Beam counting."""

import json
import os

import numpy as np
import pytest

from models.label_stats import default_shot_thresholds, derive_label_stats, effective_number_weights, shot_groups
from models.metrics import per_class_metrics


def test_effective_number_weights_by_hand():
    # beta = 0.9: (1-0.9)/(1-0.9^n) for n = 1, 2, 10 -> 1, 0.526316, 0.153690; scaled to sum to 3.
    raw = np.array([1.0, 0.1 / (1 - 0.81), 0.1 / (1 - 0.9**10)])
    np.testing.assert_allclose(effective_number_weights([1, 2, 10], beta=0.9), raw * 3 / raw.sum(), rtol=1e-12)
    w = effective_number_weights([5000, 50, 500], beta=0.9999)
    assert w.sum() == pytest.approx(3) and w[1] > w[2] > w[0]


def test_shot_groups_scaled_to_data_and_configurable():
    counts = [50, 5000, 232, 1077, 139]  # shuffled order: class 1 is the head
    many, few = default_shot_thresholds(counts)
    assert (many, few) == (1077, 232)  # floor(50 * 100^(2/3)), floor(50 * 100^(1/3))
    assert shot_groups(counts, many, few) == {"many": [1, 3], "medium": [2], "few": [0, 4]}
    assert shot_groups(counts, 100, 20) == {"many": [1, 2, 3, 4], "medium": [0], "few": []}  # the papers' cut-offs


def test_derive_label_stats_ranks_by_count_not_index():
    stats = derive_label_stats([10, 40, 20, 30], ["a", "b", "c", "d"])
    assert stats["classes_by_frequency"] == [1, 3, 2, 0]
    assert stats["class_priors"] == [0.1, 0.4, 0.2, 0.3]
    assert stats["imbalance_ratio"] == 4.0 and stats["num_examples"] == 100


def test_per_class_metrics_by_hand_and_empty_groups():
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    preds = [0, 0, 0, 1, 1, 0, 2, 0]
    m = per_class_metrics(labels, preds, 3, {"many": [0], "medium": [], "few": [1, 2]})
    assert m["per_class_recall"] == [0.75, 0.5, 0.5]
    assert m["per_class_precision"] == [0.6, 0.5, 1.0]
    assert m["balanced_accuracy"] == pytest.approx(1.75 / 3)
    f1 = [2 * 0.6 * 0.75 / 1.35, 0.5, 2 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["many_shot_accuracy"] == 0.75 and m["few_shot_accuracy"] == 0.5 and m["medium_shot_accuracy"] is None
    assert m["worst_class"] == 1 and m["confusion_matrix"][0] == [3, 1, 0]


def _write_examples(path, items):
    import tensorflow as tf

    from components.data.prepare import encode_png

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for image, label in items:
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[
                image if isinstance(image, bytes) else encode_png(image)]))}
            if label is not None:
                feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def _run_label_stats(tmp_path, labeled_items, unlabeled_items=None, num_classes=3):
    """Run the real LabelStatsGen executor (Beam DirectRunner, in memory) on hand-made Examples."""
    from tfx.types import standard_artifacts

    from components.artifacts import LABEL_STATS_FILE, LabelStatistics
    from components.label_stats_gen import Executor

    def examples(name, split, items):
        a = standard_artifacts.Examples()
        a.uri = str(tmp_path / name)
        a.split_names = json.dumps([split])
        _write_examples(str(tmp_path / name / f"Split-{split}" / "data.gz"), items)
        return a

    inputs = {"examples": [examples("labeled", "train", labeled_items)]}
    if unlabeled_items is not None:
        inputs["unlabeled_examples"] = [examples("unlabeled", "unlabeled", unlabeled_items)]
    out = LabelStatistics()
    out.uri = str(tmp_path / "stats")
    os.makedirs(out.uri)
    props = {"num_classes": num_classes, "class_names": json.dumps(["a", "b", "c"][:num_classes]),
             "image_shape": json.dumps([4, 4, 1]), "split": "train", "effective_number_beta": 0.99}
    Executor(Executor.Context(beam_pipeline_args=["--direct_running_mode=in_memory"], tmp_dir=str(tmp_path / "tmp"))
             ).Do(inputs, {"label_stats": [out]}, props)
    return json.load(open(os.path.join(out.uri, LABEL_STATS_FILE)))


IMG = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)


def test_label_stats_gen_counts_match_hand_computed(tmp_path):
    labels = [2] * 7 + [0] * 2 + [1] * 1  # class order shuffled: class 2 is the head
    stats = _run_label_stats(tmp_path, [(IMG, y) for y in labels], [(IMG, None)] * 4)
    assert stats["class_counts"] == [2, 1, 7]
    assert stats["class_priors"] == pytest.approx([0.2, 0.1, 0.7])
    assert stats["imbalance_ratio"] == 7.0
    assert stats["classes_by_frequency"] == [2, 0, 1]
    expected = effective_number_weights([2, 1, 7], 0.99)
    assert stats["effective_number_weights"] == pytest.approx(expected.tolist())
    assert sum(stats["effective_number_weights"]) == pytest.approx(3)
    assert stats["unlabeled_examples"] == 4


@pytest.mark.parametrize("items,message", [
    ([(IMG, 0), (b"not an image", 1), (b"\x89PNG\r\n", 2), (IMG, 1)], r"image does not decode.*\(2 examples affected\)"),
    ([(IMG, 0), (IMG, 3), (IMG, 1), (IMG, 2), (IMG, 7)], r"label outside range.*\(2 examples affected\)"),
    ([(IMG, 0), (IMG, None), (IMG, 1), (IMG, 2)], r"missing label.*\(1 example affected\)"),
    ([(IMG, 0), (IMG, 0), (IMG, 1)], r"classes with no training example: \['c'\]"),
])
def test_label_stats_gen_stops_on_bad_data(tmp_path, items, message):
    from components.errors import PipelineDataError

    with pytest.raises(PipelineDataError, match=r"labeled examples \(Split-train\).*" + message):
        _run_label_stats(tmp_path, items)


def test_labeled_schema_gets_the_label_domain_of_the_data_at_hand():
    from components.schema_gen import label_domain_schema

    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "labeled.pbtxt")) as f:
        text = f.read()
    label = next(f for f in label_domain_schema(text, 7).feature if f.name == "label")
    assert (label.int_domain.min, label.int_domain.max, label.int_domain.is_categorical) == (0, 6, True)
    with pytest.raises(ValueError, match="no feature 'label'"):
        label_domain_schema('feature { name: "image" type: BYTES }', 3)

"""PseudoLabeler: a model with fixed weights gives exactly the expected pseudo-labels; no true label leaks."""

import json
import os

import numpy as np
import pytest

K, SHAPE = 3, (2, 2, 1)
# logits = x @ W + b with x the image's 4 pixels / 255: class 0 likes pixel 0, class 1 pixel 3, class 2 neither.
W = np.array([[4.0, -2.0, 0.0], [1.0, 1.0, 0.0], [0.5, -0.5, 0.0], [-2.0, 5.0, 0.0]], np.float32)
B = np.array([0.0, -0.5, 1.0], np.float32)


def _export_model(tmp_path):
    import keras
    from tfx.types import standard_artifacts

    from models.export import export_serving_model

    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(K)])
    model.layers[-1].set_weights([W, B])
    artifact = standard_artifacts.Model()
    artifact.uri = str(tmp_path / "model")
    export_serving_model(model, os.path.join(artifact.uri, "Format-Serving"), SHAPE)
    return artifact


def _examples(tmp_path, name, split, images, labels):
    import tensorflow as tf
    from tfx.types import standard_artifacts

    from components.data.prepare import encode_png

    artifact = standard_artifacts.Examples()
    artifact.uri = str(tmp_path / name)
    artifact.split_names = json.dumps([split])
    path = tmp_path / name / f"Split-{split}" / "data_tfrecord-00000-of-00001.gz"
    os.makedirs(path.parent)
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for image, label in zip(images, labels):
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_png(image)]))}
            if label is not None:
                feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return artifact


def _expected(images):
    x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    logits = x @ W + B
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return p.argmax(1), p.max(1), logits


def _run(tmp_path, pool_images, pool_labels, val_images=None, val_labels=None, **props):
    import tensorflow as tf
    from tfx.types import standard_artifacts

    from components.artifacts import PSEUDO_LABEL_STATS_FILE, PseudoLabelStatistics
    from components.pseudo_labeler import Executor

    inputs = {"model": [_export_model(tmp_path)],
              "unlabeled_examples": [_examples(tmp_path, "pool", "unlabeled", pool_images, pool_labels)]}
    if val_images is not None:
        inputs["examples"] = [_examples(tmp_path, "labeled", "eval", val_images, val_labels)]
    out = standard_artifacts.Examples()
    out.uri = str(tmp_path / "pseudo")
    stats = PseudoLabelStatistics()
    stats.uri = str(tmp_path / "stats")
    os.makedirs(stats.uri)
    Executor(Executor.Context(beam_pipeline_args=["--direct_running_mode=in_memory"], tmp_dir=str(tmp_path / "tmp"))
             ).Do(inputs, {"pseudo_labeled_examples": [out], "statistics": [stats]}, {"num_classes": K, **props})
    assert json.loads(out.split_names) == ["train"]
    files = tf.io.gfile.glob(os.path.join(out.uri, "Split-train", "*.gz"))
    examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    return examples, json.load(open(os.path.join(stats.uri, PSEUDO_LABEL_STATS_FILE)))


def _decode(example):
    import tensorflow as tf

    f = example.features.feature
    image = tf.io.decode_png(f["image"].bytes_list.value[0]).numpy()
    return (image.tobytes(), int(f["label"].int64_list.value[0]), f["confidence"].float_list.value[0],
            f["origin"].bytes_list.value[0], sorted(f.keys()))


POOL = np.random.default_rng(0).integers(0, 256, size=(40, *SHAPE), dtype=np.uint8)


def test_fixed_weights_give_exact_labels_and_confidences_and_no_true_label_leaks(tmp_path):
    labels, confidences, _ = _expected(POOL)
    assert set(labels) == {0, 1, 2}  # the pool exercises every class
    planted = [int((y + 1) % K) for y in labels]  # a pool that (wrongly) carries labels, all different from the prediction
    examples, stats = _run(tmp_path, POOL, planted)
    assert len(examples) == len(POOL)
    by_image = {image.tobytes(): (int(y), float(c)) for image, y, c in zip(POOL, labels, confidences)}
    for example in examples:
        image, label, confidence, origin, keys = _decode(example)
        assert keys == ["confidence", "image", "label", "origin"] and origin == b"pseudo"
        assert label == by_image[image][0]  # the prediction, never the planted label
        assert confidence == pytest.approx(by_image[image][1], rel=1e-6)  # float32: TF and NumPy may differ by 1 ulp
    assert sorted(label for _, label, *_ in map(_decode, examples)) == sorted(labels.tolist())
    assert stats["per_class_predicted"] == np.bincount(labels, minlength=K).tolist()
    assert stats["per_class_accepted"] == stats["per_class_predicted"]
    assert stats["confidence_threshold"] == 0.0 and stats["num_accepted"] == len(POOL) == stats["num_pool_examples"]
    expected_hist = np.bincount(np.minimum((confidences * 20).astype(int), 19), minlength=20)
    assert stats["confidence_histogram"]["counts"] == expected_hist.tolist()
    assert stats["estimated_class_distribution"] == stats["raw_class_distribution"]  # no validation split given
    assert stats["class_distribution_method"].startswith("raw pseudo-label counts: no validation split")


def test_threshold_top_k_and_pool_estimates(tmp_path):
    labels, confidences, logits = _expected(POOL)
    val = POOL[:30]  # validation = images whose true class is the model's prediction: C = I
    examples, stats = _run(tmp_path, POOL, [None] * len(POOL), val, labels[:30].tolist(),
                           confidence_threshold=0.5, top_k_per_class=3)
    keep = []
    for c in range(K):
        idx = [i for i in np.argsort(-confidences, kind="stable") if labels[i] == c and confidences[i] >= 0.5]
        keep += idx[:3]
    got = {image: (label, conf) for image, label, conf, *_ in map(_decode, examples)}
    assert len(examples) == len(keep) and set(got) == {POOL[i].tobytes() for i in keep}
    for i in keep:
        assert got[POOL[i].tobytes()][0] == labels[i]
        assert got[POOL[i].tobytes()][1] == pytest.approx(confidences[i], rel=1e-6)
    assert stats["per_class_accepted"] == np.bincount(labels[keep], minlength=K).tolist()
    assert stats["per_class_predicted"] == np.bincount(labels, minlength=K).tolist()
    # C = I for hard BBSE (validation images labeled with the model's own predictions)
    assert stats["bbse_condition_number"] == pytest.approx(1.0)
    assert stats["class_distribution_method"].startswith("bbse")
    np.testing.assert_allclose(stats["raw_class_distribution"], np.bincount(labels, minlength=K) / len(POOL))
    assert sum(stats["estimated_class_distribution"]) == pytest.approx(1.0)
    assert stats["validation_examples"] == 30
    assert (stats["relevance_score"], stats["relevance_estimator"]) == ("mahalanobis", "class_conditional")
    energy = np.log(np.exp(logits.astype(np.float64)).sum(1))
    at = stats["relevance"]["energy"]["at_tpr"]
    t = np.quantile(energy[:30], 0.05)
    assert at["threshold"] == pytest.approx(t, rel=1e-5)
    assert at["fraction_above"] == pytest.approx(np.mean(energy >= t))
    assert at["relevance"] == pytest.approx(min(1.0, np.mean(energy >= t) / 0.95))
    ratios = {tpr: np.mean(energy >= np.quantile(energy[:30], 1 - tpr)) / tpr for tpr in (0.95, 0.8, 0.6, 0.4, 0.2, 0.1)}
    assert stats["relevance"]["energy"]["relevance"] == pytest.approx(min(1.0, min(ratios.values())), rel=1e-5)
    # the headline: class-conditional Mahalanobis on the logits, as computed in-process from the same numbers; the
    # first 30 pool images are the validation images, so a last-ulp difference between TF and NumPy can move one
    # of them across its own bin edge: one image of 40 (/ 0.95)
    from models.pool_estimates import LogitGaussian, estimate_relevance_class_conditional

    gaussian = LogitGaussian(labels[:30], logits[:30], K)
    expected = estimate_relevance_class_conditional(labels[:30], labels[:30], gaussian(logits[:30]), labels,
                                                    gaussian(logits), K, stats["estimated_class_distribution"])
    assert stats["estimated_relevance"] == pytest.approx(expected["relevance"], abs=1.1 / 40 / 0.95)
    cc = stats["relevance"]["mahalanobis"]["class_conditional"]
    assert cc["pooled_classes"] == [0, 1, 2] and cc["pooled_calibrated_on"] == "pooled classes"  # < 30 a class
    assert sum(g["pool_examples"] for g in cc["groups"].values()) == len(POOL)
    assert stats["relevance"]["max_softmax"]["at_tpr"]["threshold"] == pytest.approx(
        np.quantile(confidences[:30], 0.05), rel=1e-5)


def test_component_spec_wires_channels_and_defaults():
    from tfx import types
    from tfx.types import standard_artifacts

    from components.artifacts import PseudoLabelStatistics
    from components.pseudo_labeler import PseudoLabeler

    c = PseudoLabeler(model=types.Channel(type=standard_artifacts.Model),
                      unlabeled_examples=types.Channel(type=standard_artifacts.Examples),
                      examples=types.Channel(type=standard_artifacts.Examples), num_classes=10, top_k_per_class=500)
    assert c.outputs["pseudo_labeled_examples"].type == standard_artifacts.Examples
    assert c.outputs["statistics"].type == PseudoLabelStatistics
    assert c.exec_properties["confidence_threshold"] == 0.0 and c.exec_properties["top_k_per_class"] == 500
    assert c.exec_properties["ood_tpr"] == 0.95 and c.exec_properties["eval_split"] == "eval"


def test_em_bcts_prior_adjustment_labels_by_the_adjusted_posterior(tmp_path):
    """semi.pseudo_label.prior=em_bcts: each pool image's label and confidence are those of its posterior adjusted to
    the EM-BCTS prior the statistics report (recomputed here from the reported T, b and priors); the counts the pool
    estimates read stay the served argmax's."""
    from models.class_prior import bcts_log_probabilities, prior_adjusted_log_probabilities

    labels, _, logits = _expected(POOL)
    val_labels = labels[:30].copy()
    val_labels[::4] = (val_labels[::4] + 1) % K  # a validation split the model gets 3 in 4 right
    examples, stats = _run(tmp_path, POOL, [None] * len(POOL), POOL[:30], val_labels.tolist(), prior_adjustment="em_bcts")
    prior = stats["prior_adjustment"]
    assert prior["method"] == "em_bcts" and prior["setting"] == "em_bcts" and prior["pool_examples"] == len(POOL)
    assert sum(prior["prior"]) == pytest.approx(1.0) and np.asarray(prior["interval"]).shape == (K, 2)
    assert prior["validation_per_class"] == np.bincount(val_labels, minlength=K).tolist()
    assert prior["interval_covers"] is False  # 6-14 validation images a class: the report says it under-covers
    adjusted = np.exp(prior_adjusted_log_probabilities(
        bcts_log_probabilities(logits, prior["temperature"], prior["bias"]), prior["source_prior"], prior["prior"]))
    by_image = {image.tobytes(): (int(p.argmax()), float(p.max())) for image, p in zip(POOL, adjusted)}
    for example in examples:
        image, label, confidence, *_ = _decode(example)
        assert label == by_image[image][0]
        assert confidence == pytest.approx(by_image[image][1], rel=1e-4, abs=1e-5)
    assert prior["per_class_labeled"] == np.bincount(adjusted.argmax(1), minlength=K).tolist()
    assert stats["per_class_predicted"] == np.bincount(labels, minlength=K).tolist()  # the served argmax


def test_em_bcts_without_a_validation_split_says_why_it_is_off(tmp_path):
    labels, _, _ = _expected(POOL)
    examples, stats = _run(tmp_path, POOL, [None] * len(POOL), prior_adjustment="em_bcts")
    assert stats["prior_adjustment"]["method"] == "none" and "no validation logits" in stats["prior_adjustment"]["reason"]
    assert sorted(_decode(e)[1] for e in examples) == sorted(labels.tolist())

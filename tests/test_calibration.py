"""Per-class logit offsets (models/calibration.py): the fit, the two halves of the validation split, the settings."""

import os

import numpy as np
import pytest
import tensorflow as tf

from models import calibration
from models.config import CalibrationConfig


def biased_logits(n_per_class=200, num_classes=4, bias_class=3, bias=1.5, seed=0):
    """Noisy one-hot logits with one class's logit pushed down: that class's recall is low until an offset lifts it."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    logits = 2.0 * np.eye(num_classes)[labels] + rng.normal(0, 1.0, (labels.size, num_classes))
    logits[:, bias_class] -= bias
    return logits, labels


def test_fit_lifts_the_suppressed_class_and_never_lowers_the_objective():
    logits, labels = biased_logits()
    before = calibration.recalls(logits, labels, 4)
    fit = calibration.fit_offsets(logits, labels, 4, worst_class_weight=1.0)
    after = calibration.recalls(logits, labels, 4, fit["offsets"])
    assert before[3] < 0.5 and after[3] > before[3] + 0.2  # the suppressed class
    assert fit["objective_after"] >= fit["objective_before"]
    assert fit["objective_after"] == pytest.approx(calibration.objective(after, 1.0))
    assert np.allclose(fit["recall_after"], after) and np.allclose(fit["recall_before"], before)
    assert abs(np.mean(fit["offsets"])) < 1e-9  # a shared shift changes no argmax: centred
    assert fit["offsets"][3] == max(fit["offsets"])
    # on fresh draws of the same model the lift holds: it corrects a bias, not the sample's noise
    fresh, fresh_labels = biased_logits(seed=1)
    assert calibration.recalls(fresh, fresh_labels, 4, fit["offsets"])[3] > calibration.recalls(fresh, fresh_labels, 4)[3] + 0.2


def test_offsets_stay_within_their_bound_and_an_unseen_class_keeps_its_base():
    logits, labels = biased_logits(bias=1.5)
    keep = labels != 1  # class 1 has no example to measure an offset on
    base = np.array([0.0, 0.7, 0.0, 0.0])
    fit = calibration.fit_offsets(logits[keep], labels[keep], 4, max_offset=0.5, step=0.1, base_offsets=base)
    shifted = np.asarray(fit["offsets"]) - base  # each class's move, less the centring shift
    moves = shifted - shifted[1]  # class 1 never moves: only the centring shifted it
    assert np.all(np.abs(moves) <= 0.5 + 1e-9) and np.isclose(shifted.sum(), 0.0)
    assert fit["recall_before"][1] is None and fit["recall_after"][1] is None
    assert moves[3] > 0  # the suppressed class is lifted, as far as the bound allows


def test_the_halves_are_a_function_of_the_image_bytes(tmp_path):
    images = [tf.io.encode_png(tf.fill([4, 4, 1], tf.constant(i % 256, tf.uint8))).numpy() + bytes([i // 256])
              for i in range(400)]
    buckets = calibration.holdout_bucket(tf.constant(images)).numpy()
    assert set(buckets) == {0, 1} and 150 < (buckets == calibration.FIT_BUCKET).sum() < 250
    again = calibration.holdout_bucket(tf.constant(images[::-1])).numpy()[::-1]  # any order: the same halves
    assert (buckets == again).all()


def write_split(path, n=120, seed=0):
    """A labeled split of random 8x8 grayscale PNGs (tf.Examples), and the images' bytes."""
    rng = np.random.default_rng(seed)
    encoded = []
    with tf.io.TFRecordWriter(path) as w:
        for i in range(n):
            png = tf.io.encode_png(rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)).numpy()
            encoded.append(png)
            ex = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 3]))}))
            w.write(ex.SerializeToString())
    return encoded


def test_trainer_fit_half_and_gate_half_partition_the_split(tmp_path):
    import keras

    from components.evaluator import predict_split
    from models.export import export_serving_model
    from models.predict import SavedModelPredictor, parse_labels

    path = str(tmp_path / "eval.tfrecord")
    write_split(path)
    fit_labels = np.concatenate([y.numpy() for _, y in calibration.fit_half(path, [8, 8, 1])])
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    export = str(tmp_path / "model")
    offsets = np.array([0.5, -0.25, -0.25], np.float32)
    export_serving_model(model, export, [8, 8, 1], offsets, calibration_offsets=offsets)
    gate_labels, gate_pred, gate_logits = predict_split(export, path, holdout=True)
    all_labels, _, _ = predict_split(export, path)
    assert len(fit_labels) + len(gate_labels) == len(all_labels) == 120 and len(fit_labels) > 30 and len(gate_labels) > 30
    assert sorted(np.concatenate([fit_labels, gate_labels]).tolist()) == sorted(all_labels.tolist())
    # the served logits carry the offsets
    parsed, out = SavedModelPredictor(export).predict_files(path, parse_labels)
    images = np.stack([x for x, _ in calibration.fit_half(path, [8, 8, 1]).unbatch().as_numpy_iterator()])
    assert out["logits"].shape == (120, 3) and gate_logits.shape[1] == 3 and (gate_pred == gate_logits.argmax(1)).all()
    raw = keras.ops.convert_to_numpy(model(images))
    fit_served = [o for o, b in zip(out["logits"], calibration.holdout_bucket(
        tf.constant([e for e in _images_in_file(path)])).numpy()) if b == calibration.FIT_BUCKET]
    np.testing.assert_allclose(np.stack(fit_served), raw + offsets, atol=1e-5)
    assert os.path.exists(os.path.join(export, "assets.extra", "longtail_serving.json"))


def _images_in_file(path):
    for record in tf.data.TFRecordDataset([path]):
        yield tf.io.parse_single_example(record, {"image": tf.io.FixedLenFeature([], tf.string)})["image"].numpy()


def test_calibrate_summarises_the_fit_by_class_name(tmp_path):
    import keras

    path = str(tmp_path / "eval.tfrecord")
    write_split(path, n=90)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    block = calibration.calibrate(model, CalibrationConfig(method="class_offsets"), [path], [8, 8, 1], 3,
                                  ["a", "b", "c"])
    assert block["fit_examples"] == sum(block["fit_support"]) and set(block["offsets_by_class"]) == {"a", "b", "c"}
    assert block["objective_after"] >= block["objective_before"] and block["halves"] == calibration.HALVES_TEXT
    with pytest.raises(ValueError, match="needs the Trainer's eval split"):
        calibration.calibrate(model, CalibrationConfig(method="class_offsets"), None, [8, 8, 1], 3)


def test_test_time_flip_serves_and_calibrates_the_mean_of_image_and_mirror(tmp_path):
    """With train.test_time_flip the served logits are the mean of the image's and its mirror image's, plus the
    offset, and calibrate fits on exactly those logits: its fit-half recall before the offsets is theirs."""
    import keras

    from models.export import export_serving_model, serving_metadata
    from models.predict import SavedModelPredictor, parse_labels

    path = str(tmp_path / "eval.tfrecord")
    write_split(path)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    images = np.stack([x for x, _ in calibration.fit_half(path, [8, 8, 1]).unbatch().as_numpy_iterator()])
    labels = np.concatenate([y.numpy() for _, y in calibration.fit_half(path, [8, 8, 1])])
    raw = keras.ops.convert_to_numpy(model(images))
    mirrored = keras.ops.convert_to_numpy(model(images[:, :, ::-1, :]))
    assert np.abs(raw - mirrored).max() > 1e-3  # a dense layer over pixels is not mirror-invariant: the test can tell
    expected = 0.5 * (raw + mirrored)
    offsets = np.array([0.25, -0.5, 0.25], np.float32)
    export = str(tmp_path / "model")
    export_serving_model(model, export, [8, 8, 1], offsets, calibration_offsets=offsets, test_time_flip=True)
    assert serving_metadata(export)["test_time_flip"] is True
    _, out = SavedModelPredictor(export).predict_files(path, parse_labels)
    buckets = calibration.holdout_bucket(tf.constant(list(_images_in_file(path)))).numpy()
    np.testing.assert_allclose(out["logits"][buckets == calibration.FIT_BUCKET], expected + offsets, atol=1e-5)
    block = calibration.calibrate(model, CalibrationConfig(method="class_offsets"), [path], [8, 8, 1], 3,
                                  test_time_flip=True)
    assert block["test_time_flip"] is True
    assert block["recall_before"] == [float(r) for r in calibration.recalls(expected, labels, 3)]
    plain = calibration.calibrate(model, CalibrationConfig(method="class_offsets"), [path], [8, 8, 1], 3)
    assert plain["test_time_flip"] is False
    assert plain["recall_before"] == [float(r) for r in calibration.recalls(raw, labels, 3)]


def test_test_time_flip_follows_the_augmentation_unless_set():
    from models.config import TrainConfig, test_time_flip

    assert test_time_flip(TrainConfig(augment="crop,flip")) and not test_time_flip(TrainConfig(augment="crop"))
    assert not test_time_flip(TrainConfig(augment="crop,flip", test_time_flip="off"))
    assert test_time_flip(TrainConfig(augment="none", test_time_flip="on"))
    with pytest.raises(ValueError, match="unknown train.test_time_flip 'sometimes'"):
        test_time_flip(TrainConfig(test_time_flip="sometimes"))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown calibration.method 'platt'"):
        CalibrationConfig(method="platt")
    with pytest.raises(ValueError, match="step in"):
        CalibrationConfig(method="class_offsets", step=0.0)
    assert not CalibrationConfig().enabled and CalibrationConfig(method="class_offsets").enabled

"""Retraining: warm starts from the last blessed model (models/retrain.py: when a retrain starts from it, for how many
epochs, why it starts from scratch otherwise; the strict load of every weight, head included) and the shift report
(models/shift.py)."""

import os

import keras
import numpy as np
import pytest

from models import backbones, retrain, shift, toolkit
from models.config import TrainConfig
from models.export import write_serving_metadata

CLASSES = ["ant", "bee", "cow"]
SHAPE = [16, 16, 3]


def _export(tmp_path, classes=CLASSES, backbone="resnet8", shape=SHAPE, weights=True) -> str:
    folder = str(tmp_path / "serving" / "m" / "1")
    os.makedirs(folder, exist_ok=True)
    write_serving_metadata(folder, {"task": "classification", "class_names": classes, "image_shape": shape,
                                    "training": {"backbone": backbone, "class_counts": [10] * len(classes)}})
    if weights:
        cfg = TrainConfig(backbone=backbone)
        model = toolkit.build_model(cfg, shape, len(classes))
        backbones.save_backbone_weights(model, folder, file=backbones.CLASSIFIER_WEIGHTS_FILE)
    return folder


def _decide(model_dir, setting="auto", classes=CLASSES, backbone="resnet8", epochs=60, **kw):
    return retrain.decide(TrainConfig(warm_start=setting, backbone=backbone, **kw), model_dir, classes, SHAPE, backbone,
                          epochs)


def test_same_label_space_starts_warm_with_a_third_of_the_epochs_or_the_set_number(tmp_path):
    folder = _export(tmp_path)
    d = _decide(folder)
    assert (d["start"], d["model"], d["epochs"], d["scratch_epochs"]) == ("warm", folder, 20, 60)
    assert "same 3 classes" in d["reason"] and "20 epochs instead of 60" in d["reason"]
    assert _decide(folder, warm_start_epochs=4)["epochs"] == 4
    assert _decide(folder, warm_start_epochs=90)["epochs"] == 60  # never more than from scratch
    assert _decide(folder, epochs=1)["epochs"] == 1
    with pytest.raises(ValueError, match="warm_start_epochs must be >= 1"):
        _decide(folder, warm_start_epochs=0)


def test_a_new_class_or_no_blessed_model_starts_from_scratch_and_says_why(tmp_path):
    folder = _export(tmp_path)
    new = _decide(folder, classes=["ant", "bee", "cat", "cow"])
    assert new["start"] == "scratch" and new["epochs"] == 60
    assert "new class 'cat'" in new["reason"] and "3 classes then, 4 now" in new["reason"]
    gone = _decide(folder, classes=["ant", "bee"])
    assert "class 'cow' no longer in the data" in gone["reason"]
    order = _decide(folder, classes=["bee", "ant", "cow"])
    assert order["start"] == "scratch" and "another order" in order["reason"]
    assert "no blessed model" in _decide(None)["reason"]
    assert _decide(folder, setting="none")["reason"] == "trained from scratch: train.warm_start=none"
    unsupported = retrain.decide(TrainConfig(), folder, CLASSES, SHAPE, "resnet8", 60, unsupported="fixmatch reads")
    assert unsupported["start"] == "scratch" and "fixmatch reads" in unsupported["reason"]


def test_auto_falls_back_to_scratch_where_a_named_folder_is_an_error(tmp_path):
    other = _export(tmp_path, backbone="resnet20")
    assert "backbone changed (resnet20 then, resnet8 now)" in _decide(other)["reason"]
    with pytest.raises(retrain.WarmStartError, match="backbone changed"):
        _decide(other, setting=other)
    bare = _export(tmp_path / "bare", weights=False)
    assert "has no classifier.weights.npz" in _decide(bare)["reason"]
    with pytest.raises(retrain.WarmStartError, match="classifier.weights.npz"):
        _decide(bare, setting=bare)
    with pytest.raises(retrain.WarmStartError, match="no such model folder"):
        _decide(str(tmp_path / "missing"), setting=str(tmp_path / "missing"))
    reshaped = _export(tmp_path / "shape", shape=[32, 32, 3])
    assert "image shape changed" in _decide(reshaped)["reason"]


def test_stage_config_scales_the_drw_switch_with_the_epochs():
    train = TrainConfig(epochs=60, drw_epoch=48)
    warm = {"start": "warm", "epochs": 10, "scratch_epochs": 60}
    cfg = retrain.stage_config(train, warm)
    assert (cfg.epochs, cfg.drw_epoch) == (10, 8)
    assert retrain.stage_config(train, dict(warm, start="scratch")) is train


def test_the_warm_start_loads_every_weight_head_included_and_refuses_another_model(tmp_path):
    folder = _export(tmp_path)
    keras.utils.set_random_seed(1)
    model = toolkit.build_model(TrainConfig(), SHAPE, 3)
    saved = np.load(os.path.join(folder, backbones.CLASSIFIER_WEIGHTS_FILE))
    assert toolkit.init_from_classifier(model, folder) == len(saved.files)
    head = model.layers[-1].get_weights()[0]
    assert any(np.array_equal(head, saved[k]) for k in saved.files)  # the head too, not a fresh one
    four = toolkit.build_model(TrainConfig(), SHAPE, 4)
    with pytest.raises(ValueError):  # a head of another size: the strict loader refuses it
        toolkit.init_from_classifier(four, folder)


def test_the_shift_report_says_which_classes_moved_beyond_the_threshold():
    names = ["ant", "bee", "cow"]
    estimate = {"method": "em_bcts", "prior": [0.2, 0.3, 0.5], "interval": [[0.1, 0.3]] * 3, "pool_examples": 90,
                "validation_per_class": [5, 5, 5], "interval_covers": False, "temperature": 1.1}
    r = shift.class_shift(names, [60, 30, 10], "last blessed model's training set", [58, 32, 10], "span-2's labeled images",
                          estimate, max_l1=0.2)
    assert r["newest_labeled"]["l1"] == pytest.approx(0.04) and r["pool"]["l1"] == pytest.approx(0.8)
    assert r["shifted"] and len(r["messages"]) == 1
    assert "newest pool (estimated) class shares are 0.800 L1" in r["messages"][0]
    assert "ant -0.400" in r["messages"][0] and "cow +0.400" in r["messages"][0]
    quiet = shift.class_shift(names, [60, 30, 10], "x", [60, 30, 10], "y", None, 0.2, pool_reason="no unlabeled pool")
    assert not quiet["shifted"] and quiet["pool"] == {"reason": "no unlabeled pool"} and quiet["messages"] == []


def test_a_warm_start_setting_is_checked_with_the_config(tmp_path):
    from pipeline.configs import load_config

    with pytest.raises(ValueError, match="no such model folder"):
        load_config("smoke", {"train.warm_start": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="warm_start_epochs must be >= 1"):
        load_config("smoke", {"train.warm_start_epochs": "0"})
    assert load_config("smoke", {"train.warm_start": str(tmp_path)}).train.warm_start == str(tmp_path)
    assert (load_config("default").train.warm_start, load_config("default").train.warm_start_epochs) == ("auto", 20)

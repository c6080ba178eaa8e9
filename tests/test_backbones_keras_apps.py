"""models/backbones.py beyond the plain CIFAR ResNets: ``keras:<Name>`` applications (preprocessing, gray images, the
minimum size, strict local weights), the downsampling stems ``resnetN/sK``, :func:`auto_backbone`, and the warm-start
variable keys of a nested application. Small images (32-48 px) and MobileNetV3Small, so the file runs in seconds."""

import os
import shutil

import h5py
import keras
import numpy as np
import pytest

from models import backbones
from models.backbones import (
    CLASSIFIER_WEIGHTS_FILE,
    ImageNetPreprocessing,
    auto_backbone,
    backbone_variables,
    build_backbone,
    build_classifier,
    load_backbone_weights,
    load_weights_strictly,
    save_backbone_weights,
)

SMALL = "keras:MobileNetV3Small"
SMALL_FEATURES = 576  # MobileNetV3Small's last conv (alpha 1.0), average pooled
RESNET8_LAYERS = [
    "image", "stem_conv", "stem_bn", "stem_relu",
    "stage1_block1_a_conv", "stage1_block1_a_bn", "stage1_block1_a_relu", "stage1_block1_b_conv", "stage1_block1_b_bn",
    "stage1_block1_add", "stage1_block1_out",
    "stage2_block1_a_conv", "stage2_block1_a_bn", "stage2_block1_a_relu", "stage2_block1_b_conv",
    "stage2_block1_proj_conv", "stage2_block1_b_bn", "stage2_block1_proj_bn", "stage2_block1_add", "stage2_block1_out",
    "stage3_block1_a_conv", "stage3_block1_a_bn", "stage3_block1_a_relu", "stage3_block1_b_conv",
    "stage3_block1_proj_conv", "stage3_block1_b_bn", "stage3_block1_proj_bn", "stage3_block1_add", "stage3_block1_out",
    "pool",
]


def images(n, side, channels, seed=0):
    return np.random.default_rng(seed).random((n, side, side, channels)).astype("float32")


def features(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def gap(a, b):
    """max |a - b| relative to max |b|: a random MobileNetV3's inference-mode features are ~1e-10."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def values(model):
    return [keras.ops.convert_to_numpy(v).copy() for v in model.weights]


def datasets(path):
    out = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.append(name) if isinstance(obj, h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A MobileNetV3Small weights file as a user writes it: keras.applications' own net, without its top, at another
    image size and with its own preprocessing layer (no weights), saved with save_weights."""
    keras.utils.set_random_seed(3)
    app = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    path = str(tmp_path_factory.mktemp("weights") / "small.weights.h5")
    app.save_weights(path)
    return path


def test_preprocessing_modes_by_hand():
    rgb = np.array([[[[1.0, 0.0, 0.5]]]], np.float32)  # one pixel, R=1, G=0, B=0.5
    expected = {
        "tf": [1.0, -1.0, 0.0],
        "torch": [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.5 - 0.406) / 0.225],
        "caffe": [0.5 * 255 - 103.939, 0.0 - 116.779, 255.0 - 123.68],  # BGR
        "raw": [255.0, 0.0, 127.5],
    }
    for mode, want in expected.items():
        layer = ImageNetPreprocessing(mode)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(rgb))[0, 0, 0], want, rtol=1e-5, atol=1e-4)
        assert ImageNetPreprocessing.from_config(layer.get_config()).mode == mode
    with pytest.raises(ValueError, match="unknown preprocessing mode 'imagenet'"):
        ImageNetPreprocessing("imagenet")


def test_keras_application_rgb_and_gray_features():
    keras.utils.set_random_seed(0)
    rgb = build_backbone(SMALL, (48, 48, 3))
    gray = build_backbone(SMALL, (48, 48, 1))
    assert rgb.name == "keras_MobileNetV3Small" and rgb.output.shape == (None, SMALL_FEATURES)
    assert [layer.name for layer in rgb.layers] == ["image", "preprocessing", "MobileNetV3Small"]
    assert [layer.name for layer in gray.layers] == ["image", "gray_to_rgb", "preprocessing", "MobileNetV3Small"]
    assert gray.get_layer("MobileNetV3Small").input.shape == (None, 48, 48, 3)  # as ImageNet weights need
    assert gray.get_layer("preprocessing").mode == "tf"  # MobileNetV3 without its own rescaling: [-1, 1]
    x = images(2, 48, 1)
    y_rgb, y_gray = features(rgb, np.repeat(x, 3, axis=-1)), features(gray, x)
    assert y_gray.shape == (2, SMALL_FEATURES) and np.isfinite(y_gray).all() and np.isfinite(y_rgb).all()
    # the same net weights: the gray model is the RGB model on the image repeated to 3 channels
    assert gap(y_gray, y_rgb) > 0.1
    gray.get_layer("MobileNetV3Small").set_weights(rgb.get_layer("MobileNetV3Small").get_weights())
    assert gap(features(gray, x), y_rgb) < 1e-5
    assert build_backbone(SMALL, (48, 48, 3), model_name="encoder").name == "encoder"


def test_too_small_or_unknown_names_raise():
    with pytest.raises(ValueError, match=r"'keras:MobileNetV3Small' needs images of at least 32x32 pixels; got 28x28"):
        build_backbone(SMALL, (28, 28, 1))
    with pytest.raises(ValueError, match="1- or 3-channel"):
        build_backbone(SMALL, (32, 32, 4))
    for name in ("keras:NoSuchNet", "resnet8/s3", "resnet9", "resnet8/x2"):
        with pytest.raises(ValueError, match=f"unknown backbone '{name}'.*'resnet8/s2'.*'keras:MobileNetV3Small'"):
            build_backbone(name, (32, 32, 3))
    with pytest.raises(ValueError, match="resolve it with auto_backbone first"):
        build_backbone("auto", (32, 32, 3))


def test_registry_names_exist_in_keras():
    for name, spec in backbones.KERAS_APPLICATIONS.items():
        assert callable(getattr(keras.applications, name)), name
        assert spec.preprocessing in ImageNetPreprocessing.MODES and spec.min_size == 32, name


def test_local_weights_load_exactly(small_weights):
    loaded = build_backbone(SMALL, (48, 48, 3), weights=small_weights)
    fresh = build_backbone(SMALL, (48, 48, 3))
    reference = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(48, 48, 3),
                                                    pooling="avg", include_preprocessing=False)
    reference.load_weights(small_weights)
    x = images(3, 48, 3, seed=1)
    want = features(reference, x * 2.0 - 1.0)  # MobileNetV3 without its rescaling layer wants [-1, 1]
    assert gap(features(loaded, x), want) < 1e-5
    assert gap(features(fresh, x), want) > 0.1  # random weights: not the file's
    # a 1-channel backbone loads the same 3-channel file (its net sees the gray image repeated)
    gray = build_backbone(SMALL, (48, 48, 1), weights=small_weights)
    assert gap(features(gray, x[..., :1]), features(loaded, np.repeat(x[..., :1], 3, -1))) < 1e-5
    for a, b in zip(values(loaded.get_layer("MobileNetV3Small")), values(reference)):
        np.testing.assert_array_equal(a, b)


def test_weights_of_another_net_raise(tmp_path):
    large = tmp_path / "large.weights.h5"
    keras.applications.MobileNetV3Large(include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(large)
    with pytest.raises(ValueError, match=r"large.weights.h5 does not match MobileNetV3Small: missing from the file 18 "
                                         r".*unexpected in the file 74 .*shape mismatches \d+"):
        build_backbone(SMALL, (32, 32, 3), weights=str(large))
    other = tmp_path / "small.npz"
    other.write_bytes(b"not a Keras file")
    with pytest.raises(ValueError, match="expected a Keras .weights.h5"):
        build_backbone(SMALL, (32, 32, 3), weights=str(other))


def test_a_missing_or_unexpected_variable_raises_before_loading(small_weights, tmp_path):
    names = datasets(small_weights)
    assert len(names) == 206 and "layers/conv2d/vars/0" in names
    missing = tmp_path / "missing.weights.h5"
    shutil.copy(small_weights, missing)
    with h5py.File(missing, "a") as f:
        del f["layers/batch_normalization_1/vars/1"]
    extra = tmp_path / "extra.weights.h5"
    shutil.copy(small_weights, extra)
    with h5py.File(extra, "a") as f:
        f.create_dataset("layers/dense_99/vars/0", data=np.zeros((3, 3), np.float32))
    keras.utils.set_random_seed(5)
    app = build_backbone(SMALL, (32, 32, 3)).get_layer("MobileNetV3Small")
    before = values(app)
    with pytest.raises(ValueError, match=r"missing from the file 1 \['layers/batch_normalization_1/vars/1'\]; "
                                         r"unexpected in the file 0 \[\]; shape mismatches 0 \[\]"):
        load_weights_strictly(app, str(missing))
    with pytest.raises(ValueError, match=r"missing from the file 0 \[\]; unexpected in the file 1 "
                                         r"\['layers/dense_99/vars/0'\]"):
        load_weights_strictly(app, str(extra))
    for a, b in zip(before, values(app)):  # nothing half loaded
        np.testing.assert_array_equal(a, b)
    assert load_weights_strictly(app, small_weights) == 206
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_weights_strictly(app, str(tmp_path / "absent.weights.h5"))


def _write_legacy_h5(path, model, drop=None):
    """A legacy Keras .h5 weights file (the layout of keras.applications' ImageNet downloads): root attr
    layer_names, a group a layer with attr weight_names, trainable weights first."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers if layer.name != drop]
        for layer in model.layers:
            if layer.name == drop:
                continue
            group = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            group.attrs["weight_names"] = [f"{layer.name}/{w.name}:0".encode() for w in weights]
            for w in weights:
                group[f"{layer.name}/{w.name}:0"] = keras.ops.convert_to_numpy(w)


def test_legacy_h5_file_is_checked_by_layer_order(tmp_path):
    keras.utils.set_random_seed(7)
    source = build_backbone(SMALL, (32, 32, 3)).get_layer("MobileNetV3Small")
    good, short = tmp_path / "legacy.h5", tmp_path / "short.h5"
    _write_legacy_h5(good, source)
    _write_legacy_h5(short, source, drop="conv_1")  # the last 1x1 conv
    loaded = build_backbone(SMALL, (32, 32, 3), weights=str(good))
    for a, b in zip(values(loaded.get_layer("MobileNetV3Small")), values(source)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"read by layer order\): 2 \['85 weighted layers in the file vs 86 in the model', "
                                         r"\"layer #84 conv_1 \(the file's conv_1_bn\): file \[\(576,\)"):
        build_backbone(SMALL, (32, 32, 3), weights=str(short))


def test_stem_stride_keeps_the_layer_names():
    keras.utils.set_random_seed(0)
    plain = build_backbone("resnet8", (32, 32, 3))
    assert [layer.name for layer in plain.layers] == RESNET8_LAYERS and len(plain.weights) == 45
    assert plain.get_layer("stem_conv").strides == (1, 1) and plain.name == "resnet8"
    assert plain.get_layer("stage3_block1_out").output.shape == (None, 8, 8, 64)
    keras.utils.set_random_seed(0)
    same = backbones.cifar_resnet((32, 32, 3), 1, name="resnet8", stem_stride=1)
    x = images(2, 32, 3)
    np.testing.assert_array_equal(features(plain, x), features(same, x))

    s2 = build_backbone("resnet8/s2", (48, 48, 1))
    assert s2.name == "resnet8_s2" and s2.output.shape == (None, 64)
    assert s2.get_layer("stem_conv").strides == (2, 2)
    assert s2.get_layer("stage3_block1_out").output.shape == (None, 6, 6, 64)
    assert [layer.name for layer in s2.layers] == RESNET8_LAYERS
    s4 = build_backbone("resnet8/s4", (128, 128, 3))
    assert s4.get_layer("stem_conv").strides == (2, 2) and s4.get_layer("stem_pool").strides == (2, 2)
    assert s4.get_layer("stage3_block1_out").output.shape == (None, 8, 8, 64)
    assert [layer.name for layer in s4.layers if layer.weights] == [n for n in RESNET8_LAYERS if "conv" in n or "bn" in n]
    assert features(s2, images(2, 48, 1)).shape == (2, 64)
    with pytest.raises(ValueError, match=r"stem_stride must be one of \(1, 2, 4\)"):
        backbones.cifar_resnet((32, 32, 3), 1, stem_stride=3)


def test_warm_start_from_resnet8_into_resnet8_s2(tmp_path):
    keras.utils.set_random_seed(1)
    plain = build_backbone("resnet8", (32, 32, 1))
    names = save_backbone_weights(plain, str(tmp_path))
    s2 = build_classifier(build_backbone("resnet8/s2", (48, 48, 1)), 3)
    assert load_backbone_weights(s2, str(tmp_path)) == names and len(names) == 45
    assert "stem_conv/kernel" in names and "stage3_block1_proj_bn/moving_variance" in names  # today's keys
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(s2.get_layer("stem_conv").kernel),
                                  keras.ops.convert_to_numpy(plain.get_layer("stem_conv").kernel))
    # weights=PATH for a CIFAR ResNet: its own save_weights file, loaded strictly
    plain.save_weights(tmp_path / "resnet8.weights.h5")
    loaded = build_backbone("resnet8/s2", (48, 48, 1), weights=str(tmp_path / "resnet8.weights.h5"))
    for a, b in zip(values(loaded), values(plain)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"does not match resnet20: missing from the file 60 "):
        build_backbone("resnet20", (32, 32, 1), weights=str(tmp_path / "resnet8.weights.h5"))


def test_auto_backbone_by_image_size():
    assert auto_backbone((28, 28, 1), "resnet8")[0] == "resnet8"
    assert auto_backbone((40, 40, 3), "resnet32")[0] == "resnet32"
    name, reason = auto_backbone((48, 48, 3), "resnet8")
    assert name == "resnet8/s2" and "stride-2 stem" in reason and "6x6" in reason and "\n" not in reason
    name, reason = auto_backbone((128, 128, 1), "resnet8")
    assert name == "resnet8/s4" and "8x8" in reason
    assert auto_backbone((100, 100, 3), "resnet20")[0] == "resnet20/s2"
    assert auto_backbone((101, 101, 3), "resnet20")[0] == "resnet20/s4"
    assert auto_backbone((128, 128, 3), SMALL)[0] == SMALL  # an application downsamples itself
    assert "28 px" in auto_backbone((28, 28, 1), "resnet8")[1]


def test_nested_application_variables_round_trip(tmp_path):
    keras.utils.set_random_seed(2)
    backbone = build_backbone(SMALL, (32, 32, 1))
    classifier = build_classifier(backbone, 5)
    keys = backbone_variables(classifier)
    assert len(keys) == len(backbone.weights) == 206 and len(set(keys)) == 206
    assert list(keys) == list(backbone_variables(backbone, head=None))  # the same keys bare and in a classifier
    assert "MobileNetV3Small/conv/kernel" in keys and "MobileNetV3Small/conv_bn/moving_mean" in keys
    assert list(keys) == list(backbone_variables(build_backbone(SMALL, (32, 32, 1))))  # a second build: same keys

    # warm start: a bare backbone's file into a fresh classifier, its head left as initialised
    backbone_dir, classifier_dir = tmp_path / "backbone", tmp_path / "classifier"
    backbone_dir.mkdir(), classifier_dir.mkdir()
    assert len(save_backbone_weights(backbone, str(backbone_dir))) == 206
    assert len(save_backbone_weights(classifier, str(classifier_dir), file=CLASSIFIER_WEIGHTS_FILE)) == 208
    keras.utils.set_random_seed(9)
    fresh = build_classifier(build_backbone(SMALL, (32, 32, 1)), 5)
    x = images(2, 32, 1, seed=4)
    fresh_features = keras.Model(fresh.input, fresh.get_layer("classifier").input)
    assert gap(features(fresh_features, x), features(backbone, x)) > 0.1
    head_before = keras.ops.convert_to_numpy(fresh.get_layer("classifier").kernel).copy()
    assert len(load_backbone_weights(fresh, str(backbone_dir))) == 206
    assert gap(features(fresh_features, x), features(backbone, x)) < 1e-6
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fresh.get_layer("classifier").kernel), head_before)
    assert len(load_backbone_weights(fresh, str(classifier_dir), head=None, file=CLASSIFIER_WEIGHTS_FILE)) == 208
    assert gap(features(fresh, x), features(classifier, x)) < 1e-6
    # a CIFAR ResNet's file does not fit: named, not half loaded
    save_backbone_weights(build_backbone("resnet8", (32, 32, 1)), str(tmp_path))
    with pytest.raises(ValueError, match=r"missing from the file 206 .*unexpected in the file 45 "):
        load_backbone_weights(fresh, str(tmp_path))
    assert os.path.exists(tmp_path / backbones.WEIGHTS_FILE)


def test_plain_copy_of_a_keras_application_classifier_keeps_its_outputs():
    """What a multi-worker or mixed-precision Trainer exports (models.precision.plain_copy): the nested application
    holds bare keras.ops Operations, whose configs take no dtype."""
    from models.precision import plain_copy

    model = build_classifier(build_backbone("keras:MobileNetV3Small", (32, 32, 3)), 4)
    x = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype("float32")
    copy = plain_copy(model)
    # batch statistics (training=True): inference-mode features of a fresh MobileNetV3 are ~1e-10, nothing to compare
    ours, theirs = (keras.ops.convert_to_numpy(m(x, training=True)) for m in (copy, model))
    assert np.abs(theirs).max() > 1e-3
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)

"""Self-supervised pre-training (models/ssp.py) and the strict warm start (models/backbones.py).

Runs under TensorFlow here and under JAX through tests/test_backends.py."""

import keras
import numpy as np
import pytest
from keras import layers, ops

from models import backbones, pretext, ssp, toolkit
from models.config import TrainConfig
from models.toolkit import build_model


@pytest.fixture(autouse=True)
def seeded():
    """Each test's tiny encoders start from the same weights, whatever ran before in the process: unseeded, the
    projection head's 4 ReLU units could all be dead on a batch now and then, and the keys come out zero."""
    keras.utils.set_random_seed(0)


def tiny_encoder(name="tiny"):
    """A small functional backbone with BatchNorm (its moving statistics are part of the EMA)."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    return keras.Model(inputs, layers.GlobalAveragePooling2D(name="pool")(x), name=name)


def numpy_weights(variables):
    return [np.array(ops.convert_to_numpy(v)) for v in variables]


# ------------------------------------------------------------------------------------------ rotation


def test_rotations_and_labels_match_np_rot90():
    images = np.random.default_rng(0).random((3, 5, 5, 2)).astype("float32")
    rotated, labels = pretext.rotations(ops.convert_to_tensor(images))
    rotated, labels = ops.convert_to_numpy(rotated), ops.convert_to_numpy(labels)
    assert rotated.shape == (12, 5, 5, 2)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for i in range(12):
        k, image = i // 3, images[i % 3]
        np.testing.assert_array_equal(rotated[i], np.rot90(image, k))  # axes (0, 1) of an HWC image = H, W
    assert not np.array_equal(rotated[3], images[0])  # a rotation really happened


def test_rotation_needs_square_images():
    with pytest.raises(ValueError, match="square images, got 4x6"):
        pretext.rotations(ops.zeros((2, 4, 6, 1)))


def test_rotation_loss_is_cross_entropy_against_the_rotation_index():
    model = pretext.RotationPretext(tiny_encoder())
    images = np.random.default_rng(1).random((2, 8, 8, 1)).astype("float32")
    logits = ops.convert_to_numpy(model(images))
    assert logits.shape == (8, 4)
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean(log_p[np.arange(8), [0, 0, 1, 1, 2, 2, 3, 3]])
    assert float(ops.convert_to_numpy(model.compute_loss(y_pred=ops.convert_to_tensor(logits)))) == pytest.approx(expected,
                                                                                                                 rel=1e-5)


# ------------------------------------------------------------------------------------------ MoCo


def tiny_moco(queue_size=6, momentum=0.9):
    return pretext.MoCo(tiny_encoder("q"), tiny_encoder("k"), dim=3, queue_size=queue_size, momentum=momentum, temperature=0.2)


def test_moco_queue_is_fifo_with_a_wrapping_pointer():
    model = tiny_moco(queue_size=6)
    start = numpy_weights([model.queue])[0]
    np.testing.assert_allclose(np.linalg.norm(start, axis=1), 1.0, rtol=1e-5)  # starts as random unit vectors
    blocks = [np.full((2, 3), i, "float32") for i in (1, 2, 3, 4)]
    model.enqueue(ops.convert_to_tensor(blocks[0]))
    queue = numpy_weights([model.queue])[0]
    np.testing.assert_array_equal(queue[:2], blocks[0])
    np.testing.assert_array_equal(queue[2:], start[2:])  # the rest untouched
    for b in blocks[1:3]:
        model.enqueue(ops.convert_to_tensor(b))
    assert int(ops.convert_to_numpy(model.queue_pointer)) == 0  # wrapped after K=6 keys
    model.enqueue(ops.convert_to_tensor(blocks[3]))  # the oldest block (1) leaves first
    np.testing.assert_array_equal(numpy_weights([model.queue])[0], np.concatenate([blocks[3], blocks[1], blocks[2]]))
    assert int(ops.convert_to_numpy(model.queue_pointer)) == 2


def test_moco_rejects_a_batch_that_does_not_tile_the_queue():
    with pytest.raises(ValueError, match="not a multiple of the batch 4"):
        tiny_moco(queue_size=6).enqueue(ops.zeros((4, 3)))
    with pytest.raises(ValueError, match="multiple of pretrain.batch_size 32"):
        pretext.queue_size_for(1000, 32, requested=100)
    assert pretext.queue_size_for(12_406, 128) == 4096 and pretext.queue_size_for(492, 32) == 224


def test_moco_training_call_updates_key_encoder_by_ema_then_enqueues_its_keys():
    m = 0.9
    model = tiny_moco(queue_size=6, momentum=m)
    model.query_backbone.get_layer("conv").kernel.assign(
        np.random.default_rng(2).standard_normal((3, 3, 1, 4)).astype("float32"))  # query != key from here on
    query_vars = model.query_backbone.trainable_weights + model.query_head.trainable_weights
    key_vars = [k for _, k in model._pairs]
    assert len(query_vars) == len(key_vars) == 8  # conv 2, BN gamma/beta 2, MLP 4: the parameters
    assert not model.key_backbone.trainable_weights and not model.key_head.trainable_weights  # no gradient there
    key_before, old_queue = numpy_weights(key_vars), numpy_weights([model.queue])[0]
    key_stats = numpy_weights([model.key_backbone.get_layer("bn").moving_mean])[0]
    views = np.random.default_rng(3).random((2, 2, 8, 8, 1)).astype("float32")
    q = ops.convert_to_numpy(model.encode_query(views[:, 0], training=True))  # batch statistics: same q as in the call
    query_at_update = numpy_weights(query_vars)
    logits = ops.convert_to_numpy(model(views, training=True))
    for before, query, after in zip(key_before, query_at_update, numpy_weights(key_vars), strict=True):
        np.testing.assert_allclose(after, m * before + (1 - m) * query, rtol=1e-5, atol=1e-6)
    # the key encoder's BN statistics follow its own forward passes (batch statistics, as in MoCo)
    assert not np.allclose(numpy_weights([model.key_backbone.get_layer("bn").moving_mean])[0], key_stats)
    keys = ops.convert_to_numpy(model.encode_key(views[:, 1], training=True))  # the keys of the updated key encoder
    np.testing.assert_allclose(numpy_weights([model.queue])[0][:2], keys, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(numpy_weights([model.queue])[0][2:], old_queue[2:])
    np.testing.assert_allclose(logits[:, 0], (q * keys).sum(1) / 0.2, rtol=1e-4, atol=1e-5)  # positive first
    np.testing.assert_allclose(logits[:, 1:], q @ old_queue.T / 0.2, rtol=1e-4, atol=1e-5)  # negatives: the old queue
    assert len(model.trainable_weights) == 8 and model.trainable_weights == query_vars


def test_moco_inference_call_changes_no_state():
    model = tiny_moco()
    state = numpy_weights(model.non_trainable_weights)
    model(np.random.default_rng(4).random((2, 2, 8, 8, 1)).astype("float32"), training=False)
    for a, b in zip(state, numpy_weights(model.non_trainable_weights), strict=True):
        np.testing.assert_array_equal(a, b)


def test_moco_queue_and_key_encoder_stay_float32_under_mixed_bfloat16():
    """Under mixed precision the encoders compute in bfloat16; the queue, the key encoder and the logits stay float32,
    and the updates are computed in float32: the EMA at m = 0.999 (1.0 in bfloat16, which would freeze the key
    encoder) and the enqueued keys' normalisation (in bfloat16 their norms come out ~1e-3 off 1, and a queue read in
    bfloat16 inside the call rounds every row)."""
    m = 0.999
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = tiny_moco(queue_size=4, momentum=m)
        model.query_backbone.get_layer("conv").kernel.assign(
            np.random.default_rng(2).standard_normal((3, 3, 1, 4)).astype("float32"))  # query != key
        key_before, query = numpy_weights([k for _, k in model._pairs]), numpy_weights([q for q, _ in model._pairs])
        old_queue = numpy_weights([model.queue])[0]
        logits = model(np.random.default_rng(11).random((2, 2, 8, 8, 1)).astype("float32"), training=True)
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.query_backbone.get_layer("conv").compute_dtype == "bfloat16"  # really mixed
    assert model.queue.dtype == "float32" and all(k.dtype == "float32" for _, k in model._pairs)
    assert ops.convert_to_numpy(logits).dtype == np.float32
    for before, q, after in zip(key_before, query, numpy_weights([k for _, k in model._pairs]), strict=True):
        np.testing.assert_allclose(after, m * before + (1 - m) * q, rtol=1e-6, atol=1e-7)
    assert not np.allclose(key_before[0], numpy_weights([model._pairs[0][1]])[0], rtol=0, atol=1e-6)  # it moved
    queue = numpy_weights([model.queue])[0]
    assert int(ops.convert_to_numpy(model.queue_pointer)) == 2
    np.testing.assert_allclose(np.linalg.norm(queue[:2], axis=1), 1.0, rtol=1e-6)  # this call's keys
    assert not np.array_equal(queue[:2], ops.convert_to_numpy(ops.cast(ops.cast(queue[:2], "bfloat16"), "float32")))
    np.testing.assert_array_equal(queue[2:], old_queue[2:])  # the other rows untouched, not rounded


# ------------------------------------------------------------------------------------------ real images


@pytest.fixture(scope="module")
def real_images(fashion_mnist_dir):
    from components.data.sources import read_fashion_mnist

    return read_fashion_mnist(fashion_mnist_dir).test_images[:256].astype("float32") / 255.0


def test_rotation_pretext_loss_decreases_on_real_images(real_images):
    keras.utils.set_random_seed(0)
    model = pretext.RotationPretext(backbones.build_backbone("resnet8", (28, 28, 1)))
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(real_images[:128], batch_size=32, epochs=6, verbose=0).history  # 24 steps
    assert history["loss"][-1] < 0.8 * history["loss"][0], history
    assert history["accuracy"][-1] > 0.5, history  # chance is 0.25


def test_moco_loss_decreases_on_real_images(real_images):
    """With easy views (an image and its mirror image) InfoNCE must fall within a few dozen steps; the full
    MoCo v2 augmentation learns too slowly for a unit test (see bench/results/ssp_rho100.md)."""
    keras.utils.set_random_seed(0)
    images = real_images[:128]
    views = np.stack([images, images[:, :, ::-1]], axis=1)
    model = pretext.MoCo(backbones.build_backbone("resnet8", (28, 28, 1)),
                     backbones.build_backbone("resnet8", (28, 28, 1), model_name="key"),
                     dim=32, queue_size=64, momentum=0.9, temperature=0.2)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    history = model.fit(views, batch_size=32, epochs=6, verbose=0).history  # 24 steps, the queue full after 2
    assert history["loss"][-1] < 0.9 * history["loss"][0], history
    assert history["accuracy"][-1] > 0.5, history  # chance: 1 in 65


# ------------------------------------------------------------------------------------------ warm start


def test_warm_start_loads_every_backbone_variable_and_not_the_head(tmp_path):
    keras.utils.set_random_seed(5)
    pretrained = backbones.build_backbone("resnet8", (28, 28, 1))
    for v in pretrained.weights:  # distinctive values, BN statistics included
        v.assign(np.random.default_rng(len(v.path)).standard_normal(v.shape).astype("float32"))
    names = backbones.save_backbone_weights(pretrained, str(tmp_path))
    assert len(names) == len(pretrained.weights) == 45
    keras.utils.set_random_seed(6)
    model = build_model(TrainConfig(backbone="resnet8"), (28, 28, 1), 10)
    head = numpy_weights(model.get_layer("classifier").weights)
    loaded = backbones.load_backbone_weights(model, str(tmp_path))
    assert loaded == names
    target = backbones.backbone_variables(model)
    for key, v in backbones.backbone_variables(pretrained, head=None).items():
        np.testing.assert_array_equal(ops.convert_to_numpy(target[key]), ops.convert_to_numpy(v))
    for before, after in zip(head, numpy_weights(model.get_layer("classifier").weights), strict=True):
        np.testing.assert_array_equal(before, after)  # the head is left freshly initialised
    x = np.random.default_rng(7).random((2, 28, 28, 1)).astype("float32")
    features = keras.Model(model.input, model.get_layer("classifier").input)
    np.testing.assert_allclose(ops.convert_to_numpy(features(x)), ops.convert_to_numpy(pretrained(x)), rtol=1e-5, atol=1e-6)


def test_warm_start_fails_loudly_on_any_mismatch(tmp_path):
    model = build_model(TrainConfig(backbone="resnet8"), (28, 28, 1), 10)
    deeper = tmp_path / "deeper"
    deeper.mkdir()
    backbones.save_backbone_weights(backbones.build_backbone("resnet20", (28, 28, 1)), str(deeper))
    with pytest.raises(ValueError, match=r"missing from the file 0 .*unexpected in the file 60 "):
        backbones.load_backbone_weights(model, str(deeper))
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    backbones.save_backbone_weights(backbones.build_backbone("resnet8", (28, 28, 3)), str(rgb))
    with pytest.raises(ValueError, match=r"shape mismatches 1 \['stem_conv/kernel \(3, 3, 3, 16\) vs \(3, 3, 1, 16\)'\]"):
        backbones.load_backbone_weights(model, str(rgb))
    with_head = tmp_path / "with_head"
    with_head.mkdir()
    backbones.save_backbone_weights(keras.Model(model.input, model.output, name="whole"), str(with_head))
    with pytest.raises(ValueError, match=r"unexpected in the file 2 \['classifier/bias', 'classifier/kernel'\]"):
        backbones.load_backbone_weights(model, str(with_head))
    partial = tmp_path / "partial"
    partial.mkdir()
    saved = dict(np.load(str(with_head / backbones.WEIGHTS_FILE)))
    np.savez(str(partial / backbones.WEIGHTS_FILE), **{k: v for k, v in saved.items()
                                                        if not k.startswith(("classifier/", "stem_bn/"))})
    with pytest.raises(ValueError, match=r"missing from the file 4 \['stem_bn/beta'"):
        backbones.load_backbone_weights(model, str(partial))
    with pytest.raises(FileNotFoundError, match="no backbone.weights.npz"):
        backbones.load_backbone_weights(model, str(tmp_path))


def test_start_from_a_classifier_loads_every_weight_head_included_and_is_strict(tmp_path):
    """semi.pseudo_label.init=base: the final model starts from the base classifier's every weight (toolkit)."""
    keras.utils.set_random_seed(8)
    base = build_model(TrainConfig(backbone="resnet8"), (28, 28, 1), 10)
    for v in base.weights:
        v.assign(np.random.default_rng(len(v.path) + 1).standard_normal(v.shape).astype("float32"))
    names = backbones.save_backbone_weights(base, str(tmp_path), file=backbones.CLASSIFIER_WEIGHTS_FILE)
    assert len(names) == len(base.weights) == 47 and "classifier/kernel" in names
    keras.utils.set_random_seed(9)
    model = build_model(TrainConfig(backbone="resnet8"), (28, 28, 1), 10)
    assert toolkit.init_from_classifier(model, str(tmp_path)) == 47
    x = np.random.default_rng(10).random((2, 28, 28, 1)).astype("float32")
    np.testing.assert_allclose(ops.convert_to_numpy(model(x, training=False)),
                               ops.convert_to_numpy(base(x, training=False)), rtol=1e-5, atol=1e-5)
    assert toolkit.init_from_classifier(model, None) == 0
    eleven = build_model(TrainConfig(backbone="resnet8"), (28, 28, 1), 11)  # another class count: the head mismatches
    with pytest.raises(ValueError, match=r"shape mismatches 2 \['classifier/bias \(10,\) vs \(11,\)'"):
        toolkit.init_from_classifier(eleven, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no classifier.weights.npz"):
        toolkit.init_from_classifier(model, str(tmp_path / "nothing"))


# ------------------------------------------------------------------------------------------ configuration


def test_config_keys_and_method_defaults():
    from pipeline.configs import load_config

    cfg = load_config("smoke", {"ssp": "moco", "ssp_data": "labeled+unlabeled", "moco_queue_size": "64"})
    assert (cfg.pretrain.method, cfg.pretrain.data, cfg.pretrain.moco.queue_size) == ("moco", "labeled+unlabeled", 64)
    assert load_config("smoke", {"pretrain.moco.queue_size": "64"}).pretrain == load_config(
        "smoke", {"pretrain.moco_queue_size": "64"}).pretrain  # the new path and the old one
    assert cfg.pretrain.resolved() == {"learning_rate": 0.015, "weight_decay": 1e-4, "warmup_fraction": 0.0}
    assert ssp.SSPConfig(method="rotation").resolved()["learning_rate"] == 0.1
    with pytest.raises(ValueError, match="unknown pretrain.method 'simclr'"):
        load_config("smoke", {"ssp": "simclr"})
    with pytest.raises(ValueError, match="unknown pretrain.data"):
        load_config("smoke", {"ssp_data": "unlabeled"})

"""The Trainer's stages on a tiny real dataset: samplers, DRW, LDAM's cosine head, decoupling, export."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import toolkit
from models.config import TrainConfig
from models.heads import LearnableWeightScaling, NormedLinear
from models.training import train

BASE = {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3}


@pytest.mark.parametrize("settings,head_type", [
    ({"loss": "ldam", "drw_epoch": 1}, NormedLinear),
    ({"loss": "focal", "sampler": "progressive", "class_weighting": "effective_number"}, keras.layers.Dense),
    ({"loss": "balanced_softmax", "sampler": "sqrt"}, keras.layers.Dense),
])
def test_stage_one_variants_train(tiny, tmp_path, settings, head_type):
    files, stats = tiny
    model, history = train(TrainConfig(**BASE, **settings), files, stats, [28, 28, 1], str(tmp_path))
    assert [h["epoch"] for h in history] == [1, 2] and all(np.isfinite(h["loss"]) for h in history)
    assert isinstance(model.get_layer("classifier"), head_type)


@pytest.mark.parametrize("decoupling", ["crt", "lws", "tau_norm"])
def test_decoupling_stage(tiny, tmp_path, decoupling):
    from models.export import export_serving_model

    files, stats = tiny
    cfg = TrainConfig(**BASE, decoupling=decoupling, decoupling_epochs=1)
    model, history = train(cfg, files, stats, [28, 28, 1], str(tmp_path))
    stages = [h.get("stage") for h in history]
    assert stages == [None, None] + ([decoupling] if decoupling != "tau_norm" else [])
    if decoupling == "lws":
        assert any(isinstance(layer, LearnableWeightScaling) for layer in model.layers)
    export_serving_model(model, str(tmp_path / "export"), [28, 28, 1])
    loaded = tf.saved_model.load(str(tmp_path / "export"))
    png = tf.io.encode_png(tf.zeros([28, 28, 1], tf.uint8))
    out = loaded.signatures["serving_default"](images=tf.stack([png, png]))
    assert out["probabilities"].shape == (2, 10)
    np.testing.assert_allclose(out["probabilities"].numpy().sum(1), 1.0, rtol=1e-5)


class _Interrupt(keras.callbacks.Callback):
    """Stands in for a killed Trainer: fails after the given epoch has been checkpointed."""

    def __init__(self, after_epoch):
        super().__init__()
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after_epoch:
            raise KeyboardInterrupt("simulated interruption")


def test_interrupted_training_resumes_from_its_last_epoch(tiny, tmp_path):
    files, stats = tiny
    cfg = TrainConfig(epochs=3, batch_size=32, max_steps_per_epoch=2)
    backup = str(tmp_path / "backup")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, files, stats, [28, 28, 1], str(tmp_path / "run1"), backup, extra_callbacks=[_Interrupt(2)])
    assert os.listdir(backup), "no backup written before the interruption"
    _, history = train(cfg, files, stats, [28, 28, 1], str(tmp_path / "run2"), backup)
    assert [h["epoch"] for h in history] == [3]  # epochs 1-2 were not redone
    assert not os.path.exists(backup) or not os.listdir(backup)  # a finished run removes its backup


def test_augmenter_applies_only_the_named_ops():
    from models.inputs import augmenter

    image = tf.constant(np.tile(np.arange(28, dtype=np.uint8)[None, :, None] * 9, (28, 1, 1)))  # a left-right ramp
    mirrored = tf.reverse(image, axis=[1])
    flip = augmenter(("flip",), (28, 28, 1))
    outs = [flip(image) for _ in range(40)]
    assert any(bool(tf.reduce_all(o == mirrored)) for o in outs) and any(bool(tf.reduce_all(o == image)) for o in outs)
    crop = augmenter(("crop",), (28, 28, 1))
    for _ in range(40):  # shifted, never mirrored: the ramp still rises left to right where it is not padding
        row = crop(image).numpy()[14, :, 0].astype(int)
        nonzero = row[row > 0]
        assert np.all(np.diff(nonzero) > 0)
    every = augmenter(("crop", "flip", "rand_augment", "erase"), (28, 28, 1), seed=3)
    out = every(image)
    assert out.shape == image.shape and out.dtype == tf.uint8
    assert augmenter((), (28, 28, 1)) is None


def test_batch_augmenter_crops_and_flips_each_image_on_its_own():
    from models.inputs import batch_augmenter

    rng = np.random.default_rng(0)
    images = rng.integers(1, 255, (64, 28, 28, 1), dtype=np.uint8)  # no zero pixel: padding shows where it is
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    out = batch_augmenter(("crop",), (28, 28, 1))(tf.constant(images)).numpy()
    offsets = []
    for i in range(64):  # each output is one 28 x 28 window of its own padded image
        hits = [(a, c) for a in range(9) for c in range(9) if np.array_equal(padded[i, a:a + 28, c:c + 28], out[i])]
        assert len(hits) == 1, f"image {i}: not a window of its padded image"
        offsets.append(hits[0])
    assert len(set(offsets)) > 10  # drawn per image, not once for the batch
    flipped = batch_augmenter(("flip",), (28, 28, 1))(tf.constant(images)).numpy()
    same = [np.array_equal(flipped[i], images[i]) for i in range(64)]
    mirror = [np.array_equal(flipped[i], images[i, :, ::-1]) for i in range(64)]
    assert all(a or b for a, b in zip(same, mirror)) and 10 < sum(mirror) < 54
    assert batch_augmenter(("crop", "color"), (28, 28, 3)) is None and batch_augmenter((), (28, 28, 1)) is None


def test_labeled_dataset_batch_augment_gives_the_per_image_path_s_batches(tiny):
    files, stats = tiny
    for on in (False, True):
        cfg = TrainConfig(batch_size=16, augment="crop,flip", batch_augment=on)
        ds, steps = toolkit.labeled_dataset(cfg, files, stats, [28, 28, 1], "instance", 1)
        x, y = next(iter(ds))
        assert x.shape == (16, 28, 28, 1) and x.dtype == tf.float32 and y.shape == (16,)
        assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 1.0


def test_colour_jitter_keeps_shape_and_turns_gray_or_jitters_as_asked():
    from models.inputs import colour_jitter

    rgb = tf.constant(np.random.default_rng(0).integers(30, 220, (12, 10, 3), dtype=np.uint8))
    gray = colour_jitter(rgb, p_jitter=0.0, p_gray=1.0).numpy()
    assert gray.shape == (12, 10, 3) and (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert np.array_equal(colour_jitter(rgb, p_jitter=0.0, p_gray=0.0).numpy(), rgb.numpy())
    changed = [not np.array_equal(colour_jitter(rgb, p_jitter=1.0, p_gray=0.0).numpy(), rgb.numpy()) for _ in range(5)]
    assert all(changed)
    one = colour_jitter(tf.constant(rgb.numpy()[..., :1]), p_jitter=1.0)  # a gray image: brightness and contrast
    assert one.shape == (12, 10, 1) and one.dtype == tf.uint8

"""models.layers.batch_norm.BatchNormalization: TF's fused kernel, the same numbers as Keras's layer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models.layers.batch_norm import BatchNormalization


def pair(momentum=0.9, seed=0):
    """Keras's layer and ours, built on the same shape with the same random gamma and beta."""
    rng = np.random.default_rng(seed)
    ours, theirs = BatchNormalization(momentum=momentum), keras.layers.BatchNormalization(momentum=momentum)
    for layer in (ours, theirs):
        layer.build((None, 6, 6, 5))
    gamma, beta = rng.normal(1, 0.2, 5).astype("float32"), rng.normal(0, 0.2, 5).astype("float32")
    for layer in (ours, theirs):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    return ours, theirs


def test_training_output_gradients_and_moving_statistics_equal_keras():
    ours, theirs = pair()
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, (8, 6, 6, 5)).astype("float32"))
    results = []
    for layer in (ours, theirs):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.sin(y))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append((y.numpy(), [g.numpy() for g in grads], layer.moving_mean.numpy(), layer.moving_variance.numpy()))
    (y1, g1, m1, v1), (y2, g2, m2, v2) = results
    np.testing.assert_allclose(y1, y2, atol=1e-4)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(m1, m2, atol=1e-5)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)  # the biased batch variance, as Keras's


def test_inference_uses_the_moving_statistics_and_the_other_paths_are_keras():
    ours, theirs = pair()
    for layer in (ours, theirs):
        layer.moving_mean.assign(np.linspace(-1, 1, 5).astype("float32"))
        layer.moving_variance.assign(np.linspace(0.5, 2, 5).astype("float32"))
    x = np.random.default_rng(2).normal(0, 1, (4, 6, 6, 5)).astype("float32")
    np.testing.assert_allclose(ours(x, training=False).numpy(), theirs(x, training=False).numpy(), atol=1e-5)
    flat = BatchNormalization()  # 2-D input: not the fused kernel's, Keras's path
    assert not flat._fusable(tf.zeros((3, 4)), None) and flat(np.ones((3, 4), "float32"), training=True).shape == (3, 4)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_computes_in_float32_and_returns_the_compute_dtype(policy):
    layer = BatchNormalization(dtype=policy)
    y = layer(np.random.default_rng(3).normal(0, 1, (4, 6, 6, 5)).astype("float32"), training=True)
    assert y.dtype == layer.compute_dtype and layer.moving_mean.dtype == "float32"


def test_a_model_with_it_saves_and_loads(tmp_path):
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, BatchNormalization(name="bn")(keras.layers.Conv2D(3, 3)(inputs)))
    model(np.ones((2, 6, 6, 2), "float32"), training=True)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(4).normal(0, 1, (2, 6, 6, 2)).astype("float32")
    assert isinstance(loaded.get_layer("bn"), BatchNormalization)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)

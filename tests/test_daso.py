"""DASO layers against hand-computed values; the queue's FIFO behaviour (runs under TF and JAX)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from models.layers.daso import (
    BalancedFeatureQueue,
    PseudoLabelCountWindow,
    blend_pseudo_labels,
    cosine_similarity_logits,
    distribution_aware_weights,
    semantic_alignment_loss,
)


def _np(x):
    return ops.convert_to_numpy(x)


def test_cosine_similarity_logits_and_zero_prototype():
    features = np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)
    prototypes = np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]], np.float32)  # class 1: nothing queued yet
    out = _np(cosine_similarity_logits(features, prototypes, temperature=0.5))
    r = math.sqrt(0.5) / 0.5
    np.testing.assert_allclose(out, [[2.0, 0.0, 0.0], [r, 0.0, r]], rtol=1e-6, atol=1e-6)
    assert np.isfinite(_np(cosine_similarity_logits(np.zeros((2, 2), np.float32), prototypes))).all()


@pytest.mark.parametrize("temperature,expected", [
    (1.0, [0.5, 1 / 6, 0.0, 1.0]),
    (0.5, [0.25, 1 / 36, 0.0, 1.0]),
    (1.5, [0.5 ** (2 / 3), (1 / 6) ** (2 / 3), 0.0, 1.0]),  # w_k = (p_k / p_max)^(1/T)
])
def test_distribution_aware_weights(temperature, expected):
    out = _np(distribution_aware_weights(np.array([30, 10, 0, 60]), temperature))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_distribution_aware_weights_without_counts_is_zero():
    np.testing.assert_array_equal(_np(distribution_aware_weights(np.zeros(3))), [0.0, 0.0, 0.0])


def test_blend_pseudo_labels():
    linear = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    semantic = np.array([[0.1, 0.1, 0.8], [0.2, 0.2, 0.6]], np.float32)
    # weights at T=1: [1, 0, 0.5]; example 0 predicts class 0 (w=1), example 1 class 2 (w=0.5)
    out = _np(blend_pseudo_labels(linear, semantic, np.array([60.0, 0.0, 30.0]), temperature=1.0))
    np.testing.assert_allclose(out, [[0.1, 0.1, 0.8], [0.15, 0.25, 0.6]], rtol=1e-6)


def test_semantic_alignment_loss():
    weak = np.array([[0.0, 0.0], [math.log(3.0), 0.0]], np.float32)
    strong = np.array([[math.log(3.0), 0.0], [0.0, 0.0]], np.float32)
    row0 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    row1 = math.log(2.0)
    np.testing.assert_allclose(float(_np(semantic_alignment_loss(weak, strong))), (row0 + row1) / 2, rtol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="gradient check written with tf.GradientTape")
def test_semantic_alignment_loss_treats_weak_side_as_constant():
    import tensorflow as tf

    weak, strong = tf.Variable([[1.0, 2.0]]), tf.Variable([[0.5, -0.5]])
    with tf.GradientTape() as tape:
        loss = semantic_alignment_loss(weak, strong)
    g_weak, g_strong = tape.gradient(loss, [weak, strong])
    assert g_weak is None or np.allclose(g_weak.numpy(), 0.0)
    assert np.abs(g_strong.numpy()).sum() > 0


def test_queue_is_fifo_per_class():
    q = BalancedFeatureQueue(num_classes=3, feature_dim=1, size_per_class=2)
    np.testing.assert_array_equal(_np(q.prototypes()), np.zeros((3, 1)))
    q.enqueue(np.array([[1.0], [2.0], [3.0]], np.float32), np.array([0, 0, 0]))  # 3 > size: the oldest is dropped
    np.testing.assert_allclose(_np(q.prototypes())[:, 0], [2.5, 0.0, 0.0])
    q.enqueue(np.array([[10.0]], np.float32), np.array([0]))  # replaces 2, the oldest
    np.testing.assert_allclose(_np(q.prototypes())[:, 0], [6.5, 0.0, 0.0])
    q.enqueue(np.array([[4.0]], np.float32), np.array([1]))
    np.testing.assert_allclose(_np(q.prototypes())[:, 0], [6.5, 4.0, 0.0])
    q.enqueue(np.array([[20.0], [30.0], [5.0]], np.float32), np.array([0, 0, 1]))
    np.testing.assert_allclose(_np(q.prototypes())[:, 0], [25.0, 4.5, 0.0])
    np.testing.assert_array_equal(_np(q.filled), [2, 2, 0])


def test_queue_prototypes_are_means_of_vectors():
    q = BalancedFeatureQueue(2, 3, size_per_class=4)
    out = q(np.eye(3, dtype="float32"), np.array([0, 0, 1]), training=True)
    np.testing.assert_allclose(_np(out), [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    q(np.ones((1, 3), "float32"), np.array([1]), training=False)  # not training: nothing enqueued
    np.testing.assert_allclose(_np(q.prototypes()), [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert all(not v.trainable for v in q.weights)
    restored = BalancedFeatureQueue.from_config(q.get_config())
    assert (restored.num_classes, restored.feature_dim, restored.size_per_class) == (2, 3, 4)


def test_pseudo_label_count_window():
    w = PseudoLabelCountWindow(num_classes=3, window=2)
    w.update(np.array([0, 0, 1]))
    np.testing.assert_allclose(_np(w.counts()), [2, 1, 0])
    w.update(np.array([2]))
    np.testing.assert_allclose(_np(w.counts()), [2, 1, 1])
    w.update(np.array([2, 2]))  # the first step leaves the window
    np.testing.assert_allclose(_np(w.counts()), [0, 0, 3])

"""Decoupling heads: tau-normalisation, LWS, cosine classifier, cRT (keras.ops; TF and JAX)."""

import keras
import numpy as np
import pytest

from models.backbones import build_backbone, build_classifier
from models.heads import (
    LearnableWeightScaling,
    NormedLinear,
    classifier_retraining_model,
    lws_model,
    tau_normalize,
    tau_normalized_model,
)


def test_tau_normalize_by_hand():
    kernel = np.array([[3.0, 0.0], [4.0, 2.0]], np.float32)  # class norms 5 and 2
    for tau, norms in ((0.0, [1, 1]), (1.0, [5, 2]), (0.5, [5**0.5, 2**0.5])):
        out = keras.ops.convert_to_numpy(tau_normalize(keras.ops.convert_to_tensor(kernel), tau))
        np.testing.assert_allclose(out, kernel / np.array(norms), rtol=1e-6)


def test_normed_linear_is_cosine_and_lws_scales():
    layer = NormedLinear(2)
    x = np.array([[3.0, 4.0]], np.float32)
    out = keras.ops.convert_to_numpy(layer(x))
    w = keras.ops.convert_to_numpy(layer.kernel)
    np.testing.assert_allclose(out, (x / 5.0) @ (w / np.linalg.norm(w, axis=0)), rtol=1e-5)
    assert np.abs(out).max() <= 1.0 + 1e-6
    lws = LearnableWeightScaling()
    logits = np.array([[1.0, -2.0, 3.0]], np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lws(logits)), logits)
    lws.scales.assign(np.array([2.0, 0.5, 1.0], np.float32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lws(logits)), [[2.0, -1.0, 3.0]])


@pytest.fixture
def trained_like():
    keras.utils.set_random_seed(0)
    model = build_classifier(build_backbone("resnet8", (12, 12, 1)), 4)
    return model, np.random.default_rng(0).random((3, 12, 12, 1)).astype("float32")


def test_crt_freezes_backbone_and_reinitialises_classifier(trained_like):
    model, x = trained_like
    crt = classifier_retraining_model(model, 4)
    trainable = [w.path for w in crt.trainable_weights]
    assert len(trainable) == 2 and all("classifier" in p for p in trainable)  # kernel and bias only
    old = keras.ops.convert_to_numpy(model.get_layer("classifier").kernel)
    new = keras.ops.convert_to_numpy(crt.get_layer("classifier").kernel)
    assert not np.allclose(old, new)


def test_lws_trains_only_the_scales(trained_like):
    model, x = trained_like
    lws = lws_model(model)
    assert [w.shape for w in lws.trainable_weights] == [(4,)]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lws(x)), keras.ops.convert_to_numpy(model(x)), rtol=1e-5)


def test_tau_norm_model_uses_normalised_kernel_without_bias(trained_like):
    model, x = trained_like
    features = keras.Model(model.input, model.get_layer("classifier").input)
    kernel = keras.ops.convert_to_numpy(model.get_layer("classifier").kernel)
    tau_model = tau_normalized_model(model, 1.0)
    expected = keras.ops.convert_to_numpy(features(x)) @ (kernel / np.linalg.norm(kernel, axis=0))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tau_model(x)), expected, rtol=1e-4, atol=1e-5)

"""Classifier heads and decoupled classifier learning (Kang et al., ICLR 2020; Cao et al., 2019).

* :class:`NormedLinear`: cosine classifier, logits = <x/|x|, w_c/|w_c|> (the LDAM official code's
  head; LDAM's scale s=30 assumes logits in [-1, 1]).
* :func:`tau_normalize`: w_c / |w_c|^tau, the tau-normalised classifier (no training).
* :class:`LearnableWeightScaling`: logits_c * f_c with f learned on a class-balanced sample (LWS).
* :func:`classifier_retraining_model`: cRT, the backbone frozen and a re-initialised classifier.
"""

from __future__ import annotations

import keras
from keras import layers, ops, saving


@saving.register_keras_serializable(package="longtail")
class NormedLinear(layers.Layer):
    """Cosine-similarity classifier: normalize(x) @ normalize(W, axis=0)."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel")

    def call(self, x):
        x = x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)
        w = self.kernel / ops.maximum(ops.norm(self.kernel, axis=0, keepdims=True), 1e-12)
        return ops.matmul(x, w)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def tau_normalize(kernel, tau: float = 1.0):
    """w_c / ||w_c||^tau for a Dense kernel of shape (features, classes): one column per class."""
    norms = ops.norm(kernel, axis=0, keepdims=True)
    return kernel / ops.power(ops.maximum(norms, 1e-12), tau)


@saving.register_keras_serializable(package="longtail")
class LearnableWeightScaling(layers.Layer):
    """LWS: logits * f, one learnable scale f_c per class (initialised to 1)."""

    def build(self, input_shape):
        self.scales = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scales")

    def call(self, logits):
        return logits * self.scales


def split_backbone(model: keras.Model) -> tuple[keras.Model, layers.Layer]:
    """(feature extractor, classifier layer) of a model built by models.backbones.build_classifier."""
    head = model.get_layer("classifier")
    features = keras.Model(model.input, head.input, name="features")
    return features, head


def classifier_retraining_model(model: keras.Model, num_classes: int) -> keras.Model:
    """cRT: the trained feature extractor frozen (BatchNorm in inference mode), a fresh classifier."""
    features, head = split_backbone(model)
    features.trainable = False
    new_head = (NormedLinear(num_classes, name="classifier") if isinstance(head, NormedLinear)
                else layers.Dense(num_classes, name="classifier"))
    return keras.Model(model.input, new_head(features(model.input)), name="crt")


def lws_model(model: keras.Model) -> keras.Model:
    """LWS: the whole trained model frozen, a per-class scale on its logits learned."""
    model.trainable = False
    return keras.Model(model.input, LearnableWeightScaling(name="lws")(model(model.input)), name="lws")


def tau_normalized_model(model: keras.Model, tau: float) -> keras.Model:
    """tau-norm: the classifier kernel replaced by tau_normalize(kernel, tau), its bias dropped
    (Kang et al. normalise the weight vectors; a per-class bias would reintroduce the head bias)."""
    features, head = split_backbone(model)
    if not isinstance(head, layers.Dense):
        raise ValueError("tau-normalisation applies to a linear (Dense) classifier")
    kernel = ops.convert_to_numpy(tau_normalize(head.kernel, tau))
    new_head = layers.Dense(kernel.shape[1], use_bias=False, name="classifier")
    out = new_head(features(model.input))
    new_head.kernel.assign(kernel)
    return keras.Model(model.input, out, name="tau_norm")

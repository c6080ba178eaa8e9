"""CIFAR-style ResNets (He et al., 2016, Sec. 4.2) for small images (28x28, 32x32), Keras 3.

``resnet32``: 3 stages of 5 basic blocks, 16/32/64 channels, as in the long-tail papers (LDAM,
"Rethinking the Value of Labels", DASO). ``resnet8``: 1 block a stage, the fast default and the
net of ../shared/reference. Chosen by name through :data:`BACKBONES` (a registry, not an if-chain).
"""

from __future__ import annotations

import io

import keras
import numpy as np
from keras import layers

from models.heads import NormedLinear
from models.layers.batch_norm import BatchNormalization  # Keras's, with TF's fused kernel on the TF backend


def _conv_bn(x, filters, stride, name, relu=True):
    x = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name=f"{name}_conv")(x)
    x = BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def basic_block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = _conv_bn(x, filters, stride, f"{name}_a")
    y = _conv_bn(y, filters, 1, f"{name}_b", relu=False)
    if stride != 1 or shortcut.shape[-1] != filters:  # projection shortcut (option B)
        shortcut = layers.Conv2D(filters, 1, stride, use_bias=False, kernel_initializer="he_normal",
                                 name=f"{name}_proj_conv")(shortcut)
        shortcut = BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def cifar_resnet(input_shape, blocks_per_stage: int, widths=(16, 32, 64), name="resnet") -> keras.Model:
    """The feature extractor: image -> pooled feature vector of size widths[-1]."""
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, widths[0], 1, "stem")
    for s, width in enumerate(widths):
        for b in range(blocks_per_stage):
            x = basic_block(x, width, 2 if (b == 0 and s > 0) else 1, f"stage{s + 1}_block{b + 1}")
    features = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, features, name=name)


BACKBONES = {  # name -> blocks per stage
    "resnet8": 1,
    "resnet20": 3,
    "resnet32": 5,
}


def build_backbone(name: str, input_shape, model_name: str | None = None) -> keras.Model:
    """The backbone ``name``; its layers are named the same whatever ``model_name`` is (the warm start
    matches weights by layer name)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return cifar_resnet(tuple(input_shape), BACKBONES[name], name=model_name or name)


def build_classifier(backbone: keras.Model, num_classes: int, cosine: bool = False) -> keras.Model:
    """Backbone + a linear (or cosine, :class:`models.heads.NormedLinear`) head producing raw logits."""
    head = NormedLinear(num_classes, name="classifier") if cosine else layers.Dense(num_classes, name="classifier")
    logits = head(backbone.output)
    return keras.Model(backbone.input, logits, name=f"{backbone.name}_classifier")


WEIGHTS_FILE = "backbone.weights.npz"
# the whole classifier, head included: the pseudo-label base model the final Trainer starts from (semi.pseudo_label.init)
CLASSIFIER_WEIGHTS_FILE = "classifier.weights.npz"


def backbone_variables(model: keras.Model, head: str | None = "classifier") -> dict:
    """{"<layer name>/<variable name>": variable} for every layer of ``model`` except ``head``: the
    backbone's weights and BatchNorm statistics, keyed the same in a bare backbone and in a classifier."""
    out = {}
    for layer in model.layers:
        if layer.name == head:
            continue
        for v in layer.weights:
            key = f"{layer.name}/{v.name}"
            if key in out:
                raise ValueError(f"two variables named {key!r} in {model.name}")
            out[key] = v
    return out


def save_backbone_weights(backbone: keras.Model, directory: str, file: str = WEIGHTS_FILE) -> list[str]:
    """Write every variable of ``backbone`` (a classifier's head too) to ``directory``/``file``; return their names."""
    import tensorflow as tf

    variables = backbone_variables(backbone, head=None)
    buffer = io.BytesIO()  # np.savez seeks; a GFile opened for writing cannot
    np.savez(buffer, **{k: keras.ops.convert_to_numpy(v) for k, v in variables.items()})
    with tf.io.gfile.GFile(f"{directory.rstrip('/')}/{file}", "wb") as f:
        f.write(buffer.getvalue())
    return sorted(variables)


def _read_weights(directory: str, file: str = WEIGHTS_FILE) -> dict:
    import tensorflow as tf

    path = f"{directory.rstrip('/')}/{file}"
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"warm start: no {file} in the base model {directory}")
    with tf.io.gfile.GFile(path, "rb") as f:
        with np.load(io.BytesIO(f.read())) as data:
            return {k: data[k] for k in data.files}


def saved_backbone_names(directory: str, file: str = WEIGHTS_FILE) -> list[str]:
    return sorted(_read_weights(directory, file))


def load_backbone_weights(model: keras.Model, directory: str, head: str | None = "classifier",
                          file: str = WEIGHTS_FILE) -> list[str]:
    """Warm start: assign ``model``'s every non-head variable from ``directory``/``file`` (head=None: every
    variable, the head's too, as from a classifier's CLASSIFIER_WEIGHTS_FILE).

    Strict on purpose (a silent partial load is a classic reason for "pre-training did not help"): any
    variable of the model missing from the file, any unexpected one in the file, or any shape mismatch
    raises, naming them; the head is left as initialised. Returns the names loaded."""
    path = f"{directory.rstrip('/')}/{file}"
    saved = _read_weights(directory, file)
    target = backbone_variables(model, head)
    if head is not None and head not in [layer.name for layer in model.layers]:
        raise ValueError(f"warm start: {model.name} has no head layer {head!r}")
    missing, unexpected = sorted(set(target) - set(saved)), sorted(set(saved) - set(target))
    mismatched = [f"{k} {saved[k].shape} vs {tuple(target[k].shape)}" for k in sorted(set(saved) & set(target))
                  if saved[k].shape != tuple(target[k].shape)]
    if missing or unexpected or mismatched:
        def show(items):
            return f"{len(items)} {items[:6]}{' ...' if len(items) > 6 else ''}"
        raise ValueError(f"warm start from {path} does not match {model.name}: missing from the file {show(missing)}; "
                         f"unexpected in the file {show(unexpected)}; shape mismatches {show(mismatched)}")
    for k, v in target.items():
        v.assign(saved[k])
    return sorted(target)

"""CIFAR-style ResNets (He et al., 2016, Sec. 4.2) for small images (28x28, 32x32), Keras 3.

``resnet32``: 3 stages of 5 basic blocks, 16/32/64 channels, as in the long-tail papers (LDAM,
"Rethinking the Value of Labels", DASO). ``resnet8``: 1 block a stage, the fast default and the
net of ../shared/reference. Chosen by name through :data:`BACKBONES` (a registry, not an if-chain).
"""

from __future__ import annotations

import keras
from keras import layers


def _conv_bn(x, filters, stride, name, relu=True):
    x = layers.Conv2D(filters, 3, stride, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x) if relu else x


def basic_block(x, filters: int, stride: int, name: str):
    shortcut = x
    y = _conv_bn(x, filters, stride, f"{name}_a")
    y = _conv_bn(y, filters, 1, f"{name}_b", relu=False)
    if stride != 1 or shortcut.shape[-1] != filters:  # projection shortcut (option B)
        shortcut = layers.Conv2D(filters, 1, stride, use_bias=False, kernel_initializer="he_normal",
                                 name=f"{name}_proj_conv")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
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


BACKBONES = {
    "resnet8": lambda shape: cifar_resnet(shape, 1, name="resnet8"),
    "resnet20": lambda shape: cifar_resnet(shape, 3, name="resnet20"),
    "resnet32": lambda shape: cifar_resnet(shape, 5, name="resnet32"),
}


def build_backbone(name: str, input_shape) -> keras.Model:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](tuple(input_shape))


def build_classifier(backbone: keras.Model, num_classes: int, cosine: bool = False) -> keras.Model:
    """Backbone + a linear (or cosine, :class:`models.heads.NormedLinear`) head producing raw logits."""
    from models.heads import NormedLinear

    head = NormedLinear(num_classes, name="classifier") if cosine else layers.Dense(num_classes, name="classifier")
    logits = head(backbone.output)
    return keras.Model(backbone.input, logits, name=f"{backbone.name}_classifier")

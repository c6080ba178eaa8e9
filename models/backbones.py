"""Backbones, image -> pooled feature vector, chosen by name through registries (not an if-chain).

* CIFAR-style ResNets (He et al., 2016, Sec. 4.2) for small images (28x28, 32x32), :data:`BACKBONES`:
  ``resnet32``: 3 stages of 5 basic blocks, 16/32/64 channels, as in the long-tail papers (LDAM, "Rethinking the
  Value of Labels", DASO). ``resnet8``: 1 block a stage, the fast default and the net of ../shared/reference.
  ``<resnet>/s2`` and ``<resnet>/s4``: the same net with a downsampling stem (:data:`STEM_STRIDES`) for larger
  images, its layers named as the plain net's, so a warm start by layer name works across.
* ``keras:<Name>``: the ``keras.applications`` net of that attribute name (:data:`KERAS_APPLICATIONS`), without its
  top, average pooled, with random weights or those of a local weights file (``weights=PATH``, loaded strictly).
* :func:`auto_backbone`: the CIFAR net whose stem keeps the last feature map about 8x8 for an image size.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import tempfile

import h5py
import keras
import numpy as np
from keras import layers, ops, saving

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


STEM_STRIDES = (1, 2, 4)


def cifar_resnet(input_shape, blocks_per_stage: int, widths=(16, 32, 64), name="resnet",
                 stem_stride: int = 1) -> keras.Model:
    """The feature extractor: image -> pooled feature vector of size widths[-1].

    ``stem_stride``: 1, the CIFAR stem (a 3x3 conv, stride 1); 2, that conv with stride 2; 4, stride 2 and a 3x3
    max pool of stride 2 after it (the ImageNet ResNet stem's downsampling, He et al., 2016, Sec. 3.4). The last
    feature map is side / (4 * stem_stride) a side; the layers holding weights and their names are the same for
    every stem_stride."""
    if stem_stride not in STEM_STRIDES:
        raise ValueError(f"stem_stride must be one of {STEM_STRIDES} (got {stem_stride})")
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn(inputs, widths[0], min(stem_stride, 2), "stem")
    if stem_stride == 4:
        x = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
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


# ------------------------------------------------------------------------------------------ keras.applications


@saving.register_keras_serializable(package="longtail")
class ImageNetPreprocessing(layers.Layer):
    """Images in [0, 1] to the input a ``keras.applications`` net expects: the modes of
    ``keras.applications.imagenet_utils.preprocess_input``, written for [0, 1] rather than [0, 255] pixels.

    * ``tf``: 2x - 1, in [-1, 1] (MobileNet, ResNetV2, Xception, Inception);
    * ``torch``: (x - mean) / std with ImageNet's RGB mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225)
      (DenseNet);
    * ``caffe``: 255 x in BGR order less ImageNet's BGR mean (103.939, 116.779, 123.68) (ResNet);
    * ``raw``: 255 x, for a net that normalises [0, 255] pixels itself (``include_preprocessing=True``).

    Example: ``ImageNetPreprocessing("tf")(np.array([[0.0, 0.5, 1.0]]))`` is ``[[-1.0, 0.0, 1.0]]``.
    """

    MODES = ("tf", "torch", "caffe", "raw")
    TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of {list(self.MODES)}")
        self.mode = mode

    def call(self, x):
        if self.mode == "tf":
            return x * 2.0 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(self.TORCH_MEAN, dtype=x.dtype)
            return (x - mean) / ops.convert_to_tensor(self.TORCH_STD, dtype=x.dtype)
        if self.mode == "caffe":
            return ops.flip(x, axis=-1) * 255.0 - ops.convert_to_tensor(self.CAFFE_BGR_MEAN, dtype=x.dtype)
        return x * 255.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@dataclasses.dataclass(frozen=True)
class KerasApplication:
    """How to build one ``keras.applications`` net: its input preprocessing (an :class:`ImageNetPreprocessing`
    mode), the smallest image side Keras accepts, and the constructor's extra keywords."""

    preprocessing: str
    min_size: int = 32
    options: tuple = ()  # ((keyword, value), ...)


_OWN_PREPROCESSING = (("include_preprocessing", True),)  # the net rescales [0, 255] itself
KERAS_APPLICATIONS = {  # keras.applications attribute name -> how it is built; all take 32x32 images and more
    "MobileNetV2": KerasApplication("tf"),
    "MobileNetV3Small": KerasApplication("tf", options=(("include_preprocessing", False),)),
    "MobileNetV3Large": KerasApplication("tf", options=(("include_preprocessing", False),)),
    "EfficientNetV2B0": KerasApplication("raw", options=_OWN_PREPROCESSING),
    "EfficientNetV2B1": KerasApplication("raw", options=_OWN_PREPROCESSING),
    "EfficientNetV2B2": KerasApplication("raw", options=_OWN_PREPROCESSING),
    "EfficientNetV2B3": KerasApplication("raw", options=_OWN_PREPROCESSING),
    "EfficientNetV2S": KerasApplication("raw", options=_OWN_PREPROCESSING),
    "ResNet50": KerasApplication("caffe"),
    "ResNet101": KerasApplication("caffe"),
    "ResNet152": KerasApplication("caffe"),
    "ResNet50V2": KerasApplication("tf"),
    "ResNet101V2": KerasApplication("tf"),
    "ResNet152V2": KerasApplication("tf"),
    "DenseNet121": KerasApplication("torch"),
    "DenseNet169": KerasApplication("torch"),
    "DenseNet201": KerasApplication("torch"),
}
# Left out: nets with auto-named weights (ConvNeXt's layer scales, Xception's and InceptionV3's unnamed layers), named
# by a per-process counter, so their backbone_variables keys would differ between the process that saves a warm start
# and the one that loads it.
KERAS_PREFIX = "keras:"
AUTO = "auto"  # train.backbone=auto: resolved by auto_backbone before a backbone is built


def backbone_names() -> list[str]:
    """Every name :func:`build_backbone` accepts."""
    cifar = [f"{n}/s{s}" if s != 1 else n for n in BACKBONES for s in STEM_STRIDES]
    return cifar + [KERAS_PREFIX + n for n in KERAS_APPLICATIONS]


def _cifar_spec(name: str) -> tuple[int, int] | None:
    """(blocks per stage, stem stride) of a CIFAR ResNet name ("resnet8", "resnet8/s2"), or None."""
    base, _, suffix = name.partition("/")
    if base not in BACKBONES:
        return None
    if not suffix:
        return BACKBONES[base], 1
    if suffix.startswith("s") and suffix[1:].isdigit() and int(suffix[1:]) in STEM_STRIDES[1:]:
        return BACKBONES[base], int(suffix[1:])
    return None


def _unknown(name: str) -> ValueError:
    hint = " (resolve it with auto_backbone first)" if name == AUTO else ""
    return ValueError(f"unknown backbone {name!r}{hint}; choose one of {backbone_names()}")


def keras_application(name: str, input_shape, weights: str | None = None) -> keras.Model:
    """``keras:<Name>``: image (H, W, C), float32 in [0, 1] -> the net's average-pooled features.

    The net sees 3 channels (a 1-channel image repeated, as ImageNet weights need) scaled as it expects
    (:class:`ImageNetPreprocessing`); it is one nested layer named ``<Name>`` whatever the image size (Keras's own
    name for MobileNetV2 holds the size), and its own ``save_weights`` file loads into it. ``weights``: a local
    weights file, loaded by :func:`load_weights_strictly`."""
    app_name = name[len(KERAS_PREFIX):]
    spec = KERAS_APPLICATIONS.get(app_name)
    if spec is None:
        raise _unknown(name)
    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise ValueError(f"backbone {name!r} takes 1- or 3-channel images, not {channels}")
    if min(height, width) < spec.min_size:
        raise ValueError(f"backbone {name!r} needs images of at least {spec.min_size}x{spec.min_size} pixels; "
                         f"got {height}x{width} (a smaller image: a CIFAR ResNet, e.g. resnet8)")
    try:
        app = getattr(keras.applications, app_name)(include_top=False, weights=None, input_shape=(height, width, 3),
                                                    pooling="avg", **dict(spec.options))
    except ValueError as e:
        raise ValueError(f"backbone {name!r} cannot be built for {height}x{width}x{channels} images: {e}") from e
    app.name = app_name
    if weights is not None:
        load_weights_strictly(app, weights)
    inputs = keras.Input((height, width, channels), name="image")
    x = inputs if channels == 3 else layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    x = ImageNetPreprocessing(spec.preprocessing, name="preprocessing")(x)
    return keras.Model(inputs, app(x), name=f"keras_{app_name}")


def build_backbone(name: str, input_shape, model_name: str | None = None, weights: str | None = None) -> keras.Model:
    """The backbone ``name`` (one of :func:`backbone_names`); its layers are named the same whatever ``model_name``
    is (the warm start matches weights by layer name). ``weights``: a local Keras weights file (``.weights.h5``, as
    ``save_weights`` writes it, or a legacy ``.h5``) of the same net, loaded strictly (:func:`load_weights_strictly`):
    for ``keras:<Name>``, of that application built with ``include_top=False``."""
    if name.startswith(KERAS_PREFIX):
        backbone = keras_application(name, input_shape, weights)
        if model_name:
            backbone.name = model_name
        return backbone
    spec = _cifar_spec(name)
    if spec is None:
        raise _unknown(name)
    backbone = cifar_resnet(tuple(input_shape), spec[0], name=model_name or name.replace("/", "_"), stem_stride=spec[1])
    if weights is not None:
        load_weights_strictly(backbone, weights)
    return backbone


AUTO_MAX_SIDE = 40  # up to this side the CIFAR stem (stride 1) leaves a last feature map of 7-10 px
AUTO_S2_MAX_SIDE = 100  # up to this side a stride-2 stem (last map 6-13 px), above it stride 4


def auto_backbone(image_shape, default: str) -> tuple[str, str]:
    """(backbone name, a one-line reason) for images of ``image_shape`` (H, W, C), ``default`` the preset's.

    Up to :data:`AUTO_MAX_SIDE` px on the longer side: ``default``. Larger: ``default``'s CIFAR ResNet with the
    downsampling stem that keeps the last feature map, side / (4 * stride) a side, about 8x8 as at 32 px: ``/s2`` up
    to :data:`AUTO_S2_MAX_SIDE` px (6x6 to 13x13), ``/s4`` above (more than 13x13 above 200 px). A ``keras:``
    default is kept at any size (those nets downsample 32x themselves)."""
    side = max(int(image_shape[0]), int(image_shape[1]))
    base = default.partition("/")[0]
    if default.startswith(KERAS_PREFIX) or base not in BACKBONES:
        return default, f"{default}: the preset's backbone, kept at {side} px (not a CIFAR ResNet, no stem to choose)"
    if side <= AUTO_MAX_SIDE:
        return default, f"{default}: the preset's backbone, {side} px images are at most {AUTO_MAX_SIDE} px a side"
    stride = 2 if side <= AUTO_S2_MAX_SIDE else 4
    last = math.ceil(side / (4 * stride))
    return f"{base}/s{stride}", (f"{base}/s{stride}: {side} px images > {AUTO_MAX_SIDE} px, a stride-{stride} stem leaves "
                                 f"a last feature map of {last}x{last} (the plain net: 8x8 at 32 px)")


def build_classifier(backbone: keras.Model, num_classes: int, cosine: bool = False) -> keras.Model:
    """Backbone + a linear (or cosine, :class:`models.heads.NormedLinear`) head producing raw logits."""
    head = NormedLinear(num_classes, name="classifier") if cosine else layers.Dense(num_classes, name="classifier")
    logits = head(backbone.output)
    return keras.Model(backbone.input, logits, name=f"{backbone.name}_classifier")


# ------------------------------------------------------------------------------------------ weights files


def _show(items) -> str:
    return f"{len(items)} {items[:6]}{' ...' if len(items) > 6 else ''}"


def _mismatch_error(what: str, model_name: str, expected: dict, found: dict) -> ValueError | None:
    """A ValueError naming the entries of ``expected`` missing from ``found``, the unexpected ones and the shape
    mismatches ({name: shape} both), or None when they agree."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    mismatched = [f"{k} {tuple(found[k])} vs {tuple(expected[k])}" for k in sorted(set(found) & set(expected))
                  if tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or mismatched):
        return None
    return ValueError(f"{what} does not match {model_name}: missing from the file {_show(missing)}; "
                      f"unexpected in the file {_show(unexpected)}; shape mismatches {_show(mismatched)}")


def _h5_datasets(path: str) -> dict:
    """{path: shape} of every array of a ``.weights.h5`` file but an optimizer's (a compiled model writes its
    optimizer's state too; the net's weights are the rest)."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj.shape) if isinstance(obj, h5py.Dataset) else None)
    return {k: v for k, v in out.items() if not k.startswith("optimizer/")}


def _text(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _legacy_h5_error(model: keras.Model, path: str) -> ValueError | None:
    """Where a legacy Keras .h5 weights file (``layer_names``, as the ImageNet files) differs from ``model``, as a
    ValueError, or None. Keras reads such a file by layer order (layer names changed in Keras 3, e.g. MobileNetV3's),
    so the check is by order too: the same number of weighted layers, each with the same weight shapes."""
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        if "layer_names" not in group.attrs:
            return ValueError(f"weights file {path}: not a Keras weights file (no layer_names)")
        in_file = [(name, [tuple(group[name][_text(w)].shape) for w in group[name].attrs.get("weight_names", [])])
                   for name in map(_text, group.attrs["layer_names"])]
    in_file = [(name, shapes) for name, shapes in in_file if shapes]
    in_model = [(layer.name, [tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights])
                for layer in model.layers]
    in_model = [(name, shapes) for name, shapes in in_model if shapes]
    problems = [f"layer #{k} {m_name} (the file's {f_name}): file {f_shapes} vs model {m_shapes}"
                for k, ((m_name, m_shapes), (f_name, f_shapes)) in enumerate(zip(in_model, in_file))
                if f_shapes != m_shapes]
    if len(in_file) != len(in_model):
        problems.insert(0, f"{len(in_file)} weighted layers in the file vs {len(in_model)} in the model")
    if not problems:
        return None
    return ValueError(f"weights file {path} does not match {model.name} (a legacy .h5 file is read by layer "
                      f"order): {_show(problems)}")


def load_weights_strictly(model: keras.Model, path: str) -> int:
    """Load a local Keras weights file into ``model`` with Keras's own ``load_weights``, after checking that the
    file holds exactly the model's weights; the number of arrays loaded.

    Keras 3's ``load_weights`` of a ``.weights.h5`` file raises when a layer's variable count differs or a shape
    differs, but addresses layers by class and position (``layers/conv2d_3/vars/0``), not by name, and says
    nothing of entries the model never reads: a file of another net can half load. So the file's arrays are first
    compared with those ``model.save_weights`` writes (the same paths, so the same check for any net), and any
    missing, unexpected or mis-shaped one raises a ValueError naming them (the state of an optimizer, which a
    compiled model writes too, is left out of the comparison). A legacy ``.h5`` file (``layer_names``,
    as the ImageNet files of keras.applications) is compared layer by layer in order, as Keras reads it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file {path} for {model.name}")
    if path.endswith(".weights.h5"):
        with tempfile.TemporaryDirectory() as tmp:
            reference = os.path.join(tmp, "expected.weights.h5")
            model.save_weights(reference)
            expected = _h5_datasets(reference)
        error = _mismatch_error(f"weights file {path}", model.name, expected, _h5_datasets(path))
    elif path.endswith((".h5", ".hdf5")):
        error = _legacy_h5_error(model, path)
    else:
        raise ValueError(f"weights file {path}: expected a Keras .weights.h5 (or legacy .h5) file")
    if error is not None:
        raise error
    model.load_weights(path)
    return len(model.weights)


WEIGHTS_FILE = "backbone.weights.npz"
# the whole classifier, head included: the pseudo-label base model the final Trainer starts from (semi.pseudo_label.init)
CLASSIFIER_WEIGHTS_FILE = "classifier.weights.npz"


def backbone_variables(model: keras.Model, head: str | None = "classifier") -> dict:
    """{"<layer name>/<variable name>": variable} for every layer of ``model`` except ``head``: the
    backbone's weights and BatchNorm statistics, keyed the same in a bare backbone and in a classifier.

    A nested model (a ``keras:`` application) is one layer whose variables share names ("kernel", ...): its
    variables are keyed "<layer name>/<variable path>" instead, the path naming the inner layer."""
    out = {}
    for layer in model.layers:
        if layer.name == head:
            continue
        nested = isinstance(layer, keras.Model)
        for v in layer.weights:
            key = f"{layer.name}/{v.path if nested else v.name}"
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
    error = _mismatch_error(f"warm start from {path}", model.name, {k: tuple(v.shape) for k, v in target.items()},
                            {k: v.shape for k, v in saved.items()})
    if error is not None:
        raise error
    for k, v in target.items():
        v.assign(saved[k])
    return sorted(target)

"""tf.data input from TFRecords of tf.train.Example (``image``: PNG/JPEG bytes, ``label``: int64).

Images are decoded once and cached in memory as uint8 (the labeled set of a long-tailed task is
small); augmentation (pad-and-random-crop, horizontal flip, as in the CIFAR ResNet papers) runs
after the cache so every epoch sees new crops: per image by default (:func:`augmenter`), or on whole batches with
``train.batch_augment`` (:func:`batch_augmenter`: crop and flip only).
"""

from __future__ import annotations

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def untuned(ds: tf.data.Dataset) -> tf.data.Dataset:
    """``ds`` without tf.data's autotuning model (AUTOTUNE sizes stay). Its thread sleeps out its back-off (10 ms,
    doubling) when the iterator is deleted: on TF 2.21, 2 cores, about 2 fits in 5 returned idle for ~0.7x their own
    time after the last epoch (a 6-epoch fit 17.5 s); with it off, 0 of 6, each epoch as fast (speed_vs_reference.md).
    Set on a pipeline's sources, it reaches every dataset built from them."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def records(files) -> tf.data.Dataset:
    """The serialized records of TFRecord ``files`` in file order (GZIP by name), :func:`untuned`."""
    return untuned(tf.data.TFRecordDataset(files, compression_type=compression_type(files)))


def tfrecord_files(file_pattern) -> list[str]:
    """The sorted files matching a pattern (or a list of patterns); a named error when none does."""
    patterns = file_pattern if isinstance(file_pattern, (list, tuple)) else [file_pattern]
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return files


def compression_type(files) -> str:
    """TFRecord compression by file name: GZIP for ``.gz`` (TFX writes those), none otherwise."""
    return "GZIP" if files[0].endswith(".gz") else ""


def decode_image(encoded, image_shape):
    image = tf.io.decode_image(encoded, channels=image_shape[-1], expand_animations=False)
    return tf.ensure_shape(image, image_shape)


def read_examples(file_pattern, image_shape, with_labels: bool = True) -> tf.data.Dataset:
    """Decoded (uint8 image, label) or (uint8 image,) pairs, in file order."""
    files = tfrecord_files(file_pattern)
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    if with_labels:
        spec["label"] = tf.io.FixedLenFeature([], tf.int64)

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        image = decode_image(ex["image"], image_shape)
        return (image, ex["label"]) if with_labels else (image,)

    ds = untuned(tf.data.TFRecordDataset(files, compression_type=compression_type(files), num_parallel_reads=AUTOTUNE))
    return ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)


def augment(image, pad: int = 4, flip: bool = True):
    """Zero-pad by ``pad`` pixels, crop back at a random offset, random horizontal flip."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.random_crop(padded, shape)
    return tf.image.random_flip_left_right(image) if flip else image


def crop_pad(image_shape) -> int:
    """The random crop's padding for an image height: 4 for 28 and 32 pixels, as in the CIFAR ResNet papers."""
    return max(1, (int(image_shape[0]) + 4) // 8)


def augmenter(ops, image_shape, seed: int = 0):
    """uint8 (H, W, C) image -> the same, augmented by ``ops`` (models.config.AUGMENT_OPS) in order; None when no op."""
    if not ops:
        return None
    import keras  # local: only augmentations with Keras layers need it

    pad = crop_pad(image_shape)
    layers = {}
    if "rand_augment" in ops:
        layers["rand_augment"] = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.5, seed=seed)
    if "erase" in ops:
        layers["erase"] = keras.layers.RandomErasing(factor=1.0, scale=(0.02, 0.25), fill_value=127.0,
                                                     value_range=(0, 255), seed=seed + 1)

    def apply(image):
        dtype = image.dtype
        for op in ops:
            if op == "crop":
                image = augment(image, pad=pad, flip=False)
            elif op == "flip":
                image = tf.image.random_flip_left_right(image)
            elif op == "color":
                image = colour_jitter(image)
            else:
                image = tf.cast(tf.clip_by_value(layers[op](tf.cast(image, tf.float32)), 0.0, 255.0), dtype)
        return image

    return apply


BATCH_OPS = ("crop", "flip")  # the ops :func:`batch_augmenter` applies to a whole batch at once


def batch_augmenter(ops, image_shape):
    """uint8 (B, H, W, C) batch -> the same, each image augmented by ``ops`` in order with its own random draws, as
    :func:`augmenter` does image by image; None when an op is not in BATCH_OPS (the caller augments per image then).
    A few ops on the whole batch instead of a dataset map call per image: a resnet8 epoch on Fashion-MNIST-LT 1.04x
    as fast (bench/results/lever_ab.md)."""
    if not ops or any(op not in BATCH_OPS for op in ops):
        return None
    pad = crop_pad(image_shape)

    def apply(images):
        for op in ops:
            images = batch_crop(images, pad) if op == "crop" else batch_flip(images)
        return images

    return apply


def batch_crop(images, pad: int):
    """Zero-pad each image of a (B, H, W, C) batch by ``pad`` pixels and crop it back at its own random offset
    (uniform over the 2 * pad + 1 offsets a side, as tf.image.random_crop of the padded image)."""
    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    rows = tf.random.uniform([b, 1], 0, 2 * pad + 1, tf.int32) + tf.range(h)[tf.newaxis]
    cols = tf.random.uniform([b, 1], 0, 2 * pad + 1, tf.int32) + tf.range(w)[tf.newaxis]
    return tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)


def batch_flip(images):
    """Mirror each image of a (B, H, W, C) batch left-right with probability 1/2."""
    flip = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.5
    return tf.where(flip, tf.reverse(images, [2]), images)


def colour_jitter(image, strength: float = 0.4, p_jitter: float = 0.8, p_gray: float = 0.2):
    """SimCLR's colour distortion (Chen et al. 2020, appendix A) of a uint8 (H, W, C) image: with probability
    ``p_jitter`` brightness, contrast, saturation (factors in 1 +- ``strength``) and hue (+- ``strength`` / 4), with
    probability ``p_gray`` gray; a gray image (C = 1) gets brightness and contrast only."""
    x = tf.cast(image, tf.float32) / 255.0
    colour = image.shape[-1] == 3

    def jittered(x):
        x = tf.clip_by_value(x * tf.random.uniform([], 1 - strength, 1 + strength), 0.0, 1.0)
        x = tf.clip_by_value(tf.image.random_contrast(x, 1 - strength, 1 + strength), 0.0, 1.0)
        if colour:
            x = tf.image.random_saturation(x, 1 - strength, 1 + strength)
            x = tf.clip_by_value(tf.image.random_hue(x, strength / 4), 0.0, 1.0)
        return x

    x = tf.cond(tf.random.uniform([]) < p_jitter, lambda: jittered(x), lambda: x)
    if colour:
        x = tf.cond(tf.random.uniform([]) < p_gray, lambda: tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)),
                    lambda: x)
    return tf.cast(tf.round(x * 255.0), image.dtype)


def to_float(image):
    return tf.cast(image, tf.float32) / 255.0


def eval_dataset(file_pattern, image_shape, batch_size: int = 512) -> tf.data.Dataset:
    return read_examples(file_pattern, image_shape).map(lambda x, y: (to_float(x), y)).batch(batch_size).prefetch(AUTOTUNE)


def contrastive_view(image, min_area: float = 0.2, jitter: float = 0.4, jitter_p: float = 0.8, blur_p: float = 0.5,
                     blur_sigma=(0.1, 2.0), flip: bool = True):
    """One MoCo v2 view of a uint8 (H, W, C) image, as float32 in [0, 1]: random resized crop (area
    min_area-1 of the image, aspect 3/4-4/3, resized back to H x W), brightness and contrast jitter
    (factors in [1-jitter, 1+jitter], with probability jitter_p), Gaussian blur (sigma uniform in
    blur_sigma, kernel about a tenth of the image side, with probability blur_p), horizontal flip.
    Colour jitter is brightness/contrast only and there is no random grayscale: grayscale images."""
    shape = tf.shape(image)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(min_area, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    crop = tf.slice(to_float(image), begin, size)
    x = tf.image.resize(crop[tf.newaxis], shape[:2], method="bilinear")[0]
    if flip:
        x = tf.image.random_flip_left_right(x)

    def jittered(x):
        x = x * tf.random.uniform([], 1 - jitter, 1 + jitter)  # brightness as a factor, like torchvision's
        return tf.clip_by_value(tf.image.random_contrast(x, 1 - jitter, 1 + jitter), 0.0, 1.0)

    x = tf.cond(tf.random.uniform([]) < jitter_p, lambda: jittered(x), lambda: x)
    return tf.cond(tf.random.uniform([]) < blur_p, lambda: gaussian_blur(x, tf.random.uniform([], *blur_sigma)), lambda: x)


def gaussian_blur(image, sigma, kernel_size: int | None = None):
    """Separable Gaussian blur of a float (H, W, C) image with reflected borders. Hand-written: tf.image
    has no Gaussian blur, and Keras's RandomGaussianBlur draws sigma per batch, not per image."""
    if kernel_size is None:
        kernel_size = max(3, (int(image.shape[0] or 32) // 10) | 1)  # odd, about a tenth of the side
    half = kernel_size // 2
    offsets = tf.range(-half, half + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(offsets / sigma))
    kernel /= tf.reduce_sum(kernel)
    channels = tf.shape(image)[-1]
    x = tf.pad(image[tf.newaxis], [[0, 0], [half, half], [half, half], [0, 0]], mode="REFLECT")
    along_h = tf.tile(tf.reshape(kernel, [kernel_size, 1, 1, 1]), [1, 1, channels, 1])
    along_w = tf.tile(tf.reshape(kernel, [1, kernel_size, 1, 1]), [1, 1, channels, 1])
    x = tf.nn.depthwise_conv2d(x, along_h, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(x, along_w, [1, 1, 1, 1], "VALID")[0]

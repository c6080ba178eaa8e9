"""One image size and channel count a run: any encoded image -> uint8 (H, W, C), in TensorFlow ops.

The pipeline's ingestion (components/own_data_example_gen.py) and the served model's signatures
(models/export.py) both call :func:`fit_image`, so a file a client sends is decoded, turned upright, converted and
resized exactly as the same file was when the model trained on it.

Steps, in order:

1. decode (``tf.io.decode_image``: JPEG, PNG, GIF's first frame, BMP; WebP where this TensorFlow decodes it);
2. EXIF orientation of a JPEG (tags 1-8, as a camera writes them) applied, as Pillow's ``ImageOps.exif_transpose``;
3. channels: gray -> RGB by repetition, RGB -> gray (ITU-R 601 luma, ``tf.image.rgb_to_grayscale``), an alpha
   channel dropped (gray+alpha, RGBA), as Keras's ``image_dataset_from_directory`` does;
4. size, by ``method``:

   * ``resize``: bilinear (anti-aliased) to H x W, the aspect ratio not kept (Keras's default);
   * ``crop``: the largest centred box of the target's aspect ratio, then resized (Keras's ``crop_to_aspect_ratio``);
   * ``pad``: resized to fit inside H x W keeping its aspect ratio, zero-padded (Keras's ``pad_to_aspect_ratio``);

   an image already H x W is left as it is (bit for bit), and the result is rounded back to uint8, which is what
   the training examples store.

Example::

    fit = ImageFit(48, 48, 3)
    image, native, orientation = fit_image(tf.io.read_file("cat.jpg"), fit)  # uint8 (48, 48, 3); [h, w, c]; 1-8
"""

from __future__ import annotations

import tensorflow as tf

from models.config import FIT_METHODS, ImageFit  # noqa: F401 (re-exported: the fit and its code in one place)

ORIENTATION_TAG_SCAN = 65536  # bytes of a JPEG searched for its EXIF orientation (APP1 lies at the start, <= 64 KiB)


def _matches(b, pattern, n):
    """Positions 0..n-1 where the uint8 vector ``b`` holds ``pattern`` (shifted comparisons, no framing copies)."""
    hit = tf.ones([n], tf.bool)
    for k, byte in enumerate(pattern):
        hit = tf.logical_and(hit, tf.equal(b[k:k + n], byte))
    return hit


def exif_orientation(encoded) -> tf.Tensor:
    """The EXIF orientation (int32, 1-8) of a JPEG's bytes; 1 when there is none or the bytes are not a JPEG.

    Written by hand because TensorFlow has no EXIF reader and the served graph cannot call Pillow: the first
    orientation entry (tag 0x0112, type SHORT, count 1) after the ``Exif\\0\\0`` header, in either byte order, within
    the first ORIENTATION_TAG_SCAN bytes."""
    head = tf.io.decode_raw(tf.strings.substr(encoded, 0, ORIENTATION_TAG_SCAN), tf.uint8)
    b = tf.concat([head, tf.zeros([16], tf.uint8)], 0)  # room for a pattern at the very end
    n = tf.shape(head)[0]
    is_jpeg = tf.logical_and(tf.equal(b[0], 0xFF), tf.equal(b[1], 0xD8))
    exif_at = tf.where(_matches(b, [0x45, 0x78, 0x69, 0x66, 0x00, 0x00], n))[:, 0]  # "Exif\\0\\0"
    start = tf.cond(tf.size(exif_at) > 0, lambda: tf.cast(exif_at[0], tf.int32), lambda: n)
    after = tf.range(n) >= start
    le = tf.logical_and(_matches(b, [0x12, 0x01, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00], n), after)
    be = tf.logical_and(_matches(b, [0x01, 0x12, 0x00, 0x03, 0x00, 0x00, 0x00, 0x01], n), after)
    hits = tf.where(tf.logical_or(le, be))[:, 0]

    def value():
        i = tf.cast(hits[0], tf.int32)
        lo, hi = tf.cast(b[i + 8], tf.int32), tf.cast(b[i + 9], tf.int32)
        v = tf.where(le[i], lo + 256 * hi, hi + 256 * lo)
        return tf.where(tf.logical_and(v >= 1, v <= 8), v, 1)

    return tf.cond(tf.logical_and(is_jpeg, tf.size(hits) > 0), value, lambda: tf.constant(1, tf.int32))


def orient(image, orientation) -> tf.Tensor:
    """``image`` (H, W, C) turned upright for an EXIF ``orientation`` (1-8), as Pillow's ``exif_transpose``."""
    transposed = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    branches = [
        lambda: image,                                       # 1: upright
        lambda: tf.image.flip_left_right(image),             # 2: mirrored
        lambda: tf.image.rot90(image, 2),                    # 3: upside down
        lambda: tf.image.flip_up_down(image),                # 4: mirrored, upside down
        transposed,                                          # 5: transpose
        lambda: tf.image.rot90(image, 3),                    # 6: rotated 90 clockwise to upright
        lambda: tf.image.rot90(transposed(), 2),             # 7: transverse
        lambda: tf.image.rot90(image, 1),                    # 8: rotated 90 counter-clockwise to upright
    ]
    return tf.switch_case(tf.clip_by_value(orientation, 1, 8) - 1, branches)


def to_channels(image, channels: int) -> tf.Tensor:
    """uint8 (H, W, 1-4) -> (H, W, ``channels``): alpha dropped, gray repeated to RGB or RGB weighted to gray."""
    native = tf.shape(image)[-1]
    color = tf.cond(native >= 3, lambda: image[..., :3], lambda: tf.repeat(image[..., :1], 3, axis=-1))
    if channels == 3:
        return tf.ensure_shape(color, [None, None, 3])
    gray = tf.cond(native >= 3, lambda: tf.image.rgb_to_grayscale(color), lambda: image[..., :1])
    return tf.ensure_shape(gray, [None, None, 1])


def _sized(image, fit: ImageFit) -> tf.Tensor:
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    size = [fit.height, fit.width]
    if fit.method == "crop":
        hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
        target = fit.width / fit.height
        crop_h = tf.cast(tf.minimum(hf, tf.round(wf / target)), tf.int32)
        crop_w = tf.cast(tf.minimum(wf, tf.round(hf * target)), tf.int32)
        image = tf.image.crop_to_bounding_box(image, (h - crop_h) // 2, (w - crop_w) // 2,
                                              tf.maximum(crop_h, 1), tf.maximum(crop_w, 1))
        resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    elif fit.method == "pad":
        resized = tf.image.resize_with_pad(tf.cast(image, tf.float32), fit.height, fit.width, antialias=True)
    else:
        resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def fit_image(encoded, fit: ImageFit):
    """(uint8 image of ``fit.shape``, int32 [h, w, c] of the image as decoded, its EXIF orientation 1-8).

    Raises ``tf.errors.InvalidArgumentError`` for bytes that do not decode (unknown format, truncated file)."""
    image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8, expand_animations=False)
    native = tf.shape(image)
    orientation = exif_orientation(encoded)
    image = orient(image, orientation)
    image = to_channels(image, fit.channels)
    same = tf.logical_and(tf.equal(tf.shape(image)[0], fit.height), tf.equal(tf.shape(image)[1], fit.width))
    image = tf.cond(same, lambda: image, lambda: _sized(image, fit))
    return tf.ensure_shape(image, fit.shape), native, orientation


def fitter(fit: ImageFit):
    """A compiled ``fit_image`` for one encoded image at a time (ingestion calls it once a file)."""
    return tf.function(lambda encoded: fit_image(encoded, fit),
                       input_signature=[tf.TensorSpec([], tf.string)], reduce_retracing=True)

"""tf.data input from TFRecords of tf.train.Example (``image``: PNG/JPEG bytes, ``label``: int64).

Images are decoded once and cached in memory as uint8 (the labeled set of a long-tailed task is
small); augmentation (pad-and-random-crop, horizontal flip, as in the CIFAR ResNet papers) runs
after the cache so every epoch sees new crops.
"""

from __future__ import annotations

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def _files(file_pattern) -> list[str]:
    patterns = file_pattern if isinstance(file_pattern, (list, tuple)) else [file_pattern]
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"no TFRecord files match {patterns}")
    return files


def _compression(files) -> str:
    return "GZIP" if files[0].endswith(".gz") else ""


def decode_image(encoded, image_shape):
    image = tf.io.decode_image(encoded, channels=image_shape[-1], expand_animations=False)
    return tf.ensure_shape(image, image_shape)


def read_examples(file_pattern, image_shape, with_labels: bool = True) -> tf.data.Dataset:
    """Decoded (uint8 image, label) or (uint8 image,) pairs, in file order."""
    files = _files(file_pattern)
    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    if with_labels:
        spec["label"] = tf.io.FixedLenFeature([], tf.int64)

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        image = decode_image(ex["image"], image_shape)
        return (image, ex["label"]) if with_labels else (image,)

    ds = tf.data.TFRecordDataset(files, compression_type=_compression(files), num_parallel_reads=AUTOTUNE)
    return ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)


def augment(image, pad: int = 4, flip: bool = True):
    """Zero-pad by ``pad`` pixels, crop back at a random offset, random horizontal flip."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.random_crop(padded, shape)
    return tf.image.random_flip_left_right(image) if flip else image


def to_float(image):
    return tf.cast(image, tf.float32) / 255.0


def eval_dataset(file_pattern, image_shape, batch_size: int = 512) -> tf.data.Dataset:
    return read_examples(file_pattern, image_shape).map(lambda x, y: (to_float(x), y)).batch(batch_size).prefetch(AUTOTUNE)

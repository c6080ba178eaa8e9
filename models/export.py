"""SavedModel export with explicit serving signatures (TF Serving layout is the Pusher's job).

Signatures:
  serving_default     images: encoded JPEG/PNG/GIF/BMP/WebP bytes of any size and channel count, shape (batch,),
                      each fitted to the model's image shape as in training (models/image_fit.py) ->
                      probabilities (batch, C) float32, class_id (batch,) int64, logits (batch, C) float32
                      (after the test-time flip's mean and the logit offset; the PseudoLabeler's energy OOD score
                      needs them)
  serving_tf_example  examples: serialized tf.train.Example with an ``image`` bytes feature -> same

Beside the graph, ``assets.extra/longtail_serving.json`` (TF Serving's folder for extra files, which loaders
ignore) says what a model server needs to validate a request and name its answer: the task, the class
names, the image shape, or the regression target and its feature types (:func:`serving_metadata`).
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from models.image_fit import ImageFit, fit_image

SERVING_DEFAULT = "serving_default"  # what TF Serving answers when a request names no signature
SERVING_TF_EXAMPLE = "serving_tf_example"
SERVING_METADATA = os.path.join("assets.extra", "longtail_serving.json")


def write_serving_metadata(export_dir: str, metadata: dict) -> None:
    tf.io.gfile.makedirs(os.path.dirname(os.path.join(export_dir, SERVING_METADATA)))
    with tf.io.gfile.GFile(os.path.join(export_dir, SERVING_METADATA), "w") as f:
        json.dump(metadata, f, indent=2)


def serving_metadata(export_dir: str) -> dict | None:
    """The metadata a pushed SavedModel carries, or None for a model exported before it existed."""
    path = os.path.join(export_dir, SERVING_METADATA)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def model_logits(model: keras.Model, images, test_time_flip: bool = False):
    """float32 logits of a batch of float images; with ``test_time_flip`` the mean of the images' and their mirror
    images' (horizontal flip) logits. The served model and the calibration fit both score through it."""
    logits = tf.cast(model(images, training=False), tf.float32)
    if test_time_flip:
        logits = 0.5 * (logits + tf.cast(model(tf.image.flip_left_right(images), training=False), tf.float32))
    return logits


def export_serving_model(model: keras.Model, export_dir: str, image_shape, logit_offset=None,
                         class_names=None, calibration_offsets=None, test_time_flip: bool = False,
                         fit_method: str | None = None, training: dict | None = None) -> None:
    """Write ``model`` (logits out) as a SavedModel. ``logit_offset`` (C,) is added to the logits
    before the softmax (post-hoc logit adjustment, fitted offsets); None serves the raw logits. ``class_names``
    go into the serving metadata (class_0.. when not given), and so do the offsets: ``logit_offset`` and
    ``calibration_offsets``, the part of it fitted on validation data (models/calibration.py), which the
    Evaluator subtracts to report the uncalibrated model beside the served one. ``test_time_flip`` serves the mean
    of each image's and its mirror image's logits (:func:`model_logits`), at twice the compute. Every image a client
    sends, of any size, format and channel count, is fitted to ``image_shape`` as the pipeline's ingestion fitted the
    training images (:func:`models.image_fit.fit_image`, ``fit_method``: resize, crop or pad; None: resize).
    ``training``: what the model was trained on (backbone, labeled class counts, warm or scratch start), for a later
    run's warm start and shift report."""
    image_shape = [int(d) for d in image_shape]
    fit = ImageFit.of(image_shape, fit_method)
    offset = None if logit_offset is None else tf.constant(logit_offset, tf.float32)

    def decode(encoded):
        return tf.cast(fit_image(encoded, fit)[0], tf.float32) / 255.0

    def predict(encoded_images):
        images = tf.map_fn(decode, encoded_images, fn_output_signature=tf.TensorSpec(image_shape, tf.float32))
        logits = model_logits(model, images, test_time_flip)
        if offset is not None:
            logits = logits + offset
        probabilities = tf.nn.softmax(logits, axis=-1)
        return {"probabilities": probabilities, "class_id": tf.argmax(probabilities, axis=-1), "logits": logits}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        SERVING_DEFAULT, lambda images: predict(images),
        input_signature=[tf.TensorSpec([None], tf.string, name="images")])

    def from_examples(examples):
        parsed = tf.io.parse_example(examples, {"image": tf.io.FixedLenFeature([], tf.string)})
        return predict(parsed["image"])

    archive.add_endpoint(
        SERVING_TF_EXAMPLE, from_examples,
        input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    archive.write_out(export_dir, verbose=False)
    num_classes = int(model.output_shape[-1])
    write_serving_metadata(export_dir, {
        "task": "classification", "input": "images", "image_shape": image_shape, "image_fit": fit.to_dict(),
        "class_names": list(class_names) if class_names else [f"class_{c}" for c in range(num_classes)],
        "logit_offset": None if logit_offset is None else [float(v) for v in logit_offset],
        "calibration_offsets": None if calibration_offsets is None else [float(v) for v in calibration_offsets],
        "test_time_flip": bool(test_time_flip), **({"training": training} if training else {})})

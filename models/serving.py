"""What a model server does with a pushed model, without the server: find the newest version in a push
folder, load it, check a request's inputs and answer with named outputs. TensorFlow only (no tfx, no
kserve); pipeline/serve.py puts this behind KServe's HTTP endpoints.

A push folder is TF Serving's layout, ``<model>/<version>/saved_model.pb``, versions being integers
(TFX's Pusher names them by time). Each version carries ``assets.extra/longtail_serving.json``
(models/export.py): the task, the class names and image shape, or the regression target and its
features; a version exported before that file existed is served with ``class_<i>`` names and no size
check ahead of the graph.
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf

from models.export import SERVING_DEFAULT, serving_metadata


class RequestError(ValueError):
    """A request the model cannot answer (the server's 400): the message names the input, the problem, the count."""


def versions(model_dir: str) -> list[int]:
    """The version numbers under a push folder that hold a SavedModel, ascending (other entries are not versions:
    a temporary copy, a stray file)."""
    if not tf.io.gfile.isdir(model_dir):
        return []
    found = []
    for name in tf.io.gfile.listdir(model_dir):
        name = name.rstrip("/")
        if name.isdigit() and tf.io.gfile.exists(os.path.join(model_dir, name, "saved_model.pb")):
            found.append(int(name))
    return sorted(found)


def newest_version(model_dir: str) -> int | None:
    found = versions(model_dir)
    return found[-1] if found else None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from an encoded image's header (no decode), or None when the bytes are not an image."""
    from PIL import Image, UnidentifiedImageError  # local: only image models need Pillow

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _count(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:5]) + (", ..." if len(indices) > 5 else "")
    return f"{len(indices)} of them (instances {shown})"


class ServedVersion:
    """One loaded version of a pushed model and its ``serving_default`` signature."""

    def __init__(self, model_dir: str, version: int):
        self.model_dir = model_dir
        self.version = version
        self.path = os.path.join(model_dir, str(version))
        self._loaded = tf.saved_model.load(self.path)  # kept referenced: the signature needs it alive
        self._serve = self._loaded.signatures[SERVING_DEFAULT]
        inputs = self._serve.structured_input_signature[1]
        meta = serving_metadata(self.path)
        if meta is None:  # an older export: what the signature itself says
            if set(inputs) == {"images"}:
                num_classes = int(self._serve.structured_outputs["probabilities"].shape[-1])
                meta = {"task": "classification", "input": "images", "image_shape": None,
                        "class_names": [f"class_{c}" for c in range(num_classes)]}
            else:
                meta = {"task": "regression", "target": "prediction",
                        "features": {k: v.dtype.name for k, v in inputs.items()}}
        self.metadata = meta
        self.task = meta["task"]
        self.input_specs = dict(inputs)

    # --- requests ---

    def image_batch(self, images: list) -> np.ndarray:
        """Encoded images (bytes) -> the signature's string batch, after checking every one: a non-image is refused
        with how many and which instances (so is an image of another size, for a model exported before its signature
        fitted every image to its size: models/image_fit.py)."""
        if not images:
            raise RequestError("the request holds no instances")
        not_bytes = [i for i, b in enumerate(images) if not isinstance(b, (bytes, bytearray))]
        if not_bytes:
            raise RequestError(f"images must be encoded image bytes (base64 in JSON): {_count(not_bytes)} are not")
        sizes = [image_size(b) for b in images]
        not_images = [i for i, s in enumerate(sizes) if s is None]
        if not_images:
            raise RequestError(f"bytes that are not an image (JPEG, PNG, GIF, BMP or WebP): {_count(not_images)}")
        shape = self.metadata.get("image_shape")
        if shape and not self.metadata.get("image_fit"):  # an export from before the signature fitted any size
            wrong = [i for i, s in enumerate(sizes) if s != (shape[0], shape[1])]
            if wrong:
                first = sizes[wrong[0]]
                raise RequestError(f"image size {first[0]}x{first[1]} where the model takes {shape[0]}x{shape[1]}: "
                                   f"{_count(wrong)}")
        return np.asarray([bytes(b) for b in images], dtype=object)

    def feature_batch(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """Rows of named features -> one column per signature input, typed as the signature wants; a missing or
        unreadable feature is refused naming it and how many rows lack it."""
        if not rows:
            raise RequestError("the request holds no instances")
        if not all(isinstance(r, dict) for r in rows):
            raise RequestError("each instance must be an object of named features, e.g. {\"trip_miles\": 1.2, ...}")
        columns = {}
        for name, spec in self.input_specs.items():
            missing = [i for i, r in enumerate(rows) if name not in r]
            if missing:
                raise RequestError(f"feature {name!r} ({spec.dtype.name}) is missing: {_count(missing)}")
            columns[name] = self.column(name, [r[name] for r in rows])
        unknown = sorted({k for r in rows for k in r} - set(self.input_specs))
        if unknown:
            raise RequestError(f"unknown features {unknown}; the model reads {sorted(self.input_specs)}")
        return columns

    def column(self, name: str, values) -> np.ndarray:
        dtype = self.input_specs[name].dtype
        if dtype.is_floating:  # a missing number (JSON null or NaN) is NaN, as the training reader gives it
            values = [np.nan if v is None else v for v in values]
        nulls = [i for i, v in enumerate(values) if v is None]
        if nulls:
            raise RequestError(f"feature {name!r} ({dtype.name}) is null: {_count(nulls)}")
        try:
            if dtype == tf.string:
                return np.asarray([v if isinstance(v, bytes) else str(v).encode() for v in values], dtype=object)
            return np.asarray(values, dtype=dtype.as_numpy_dtype).reshape(-1)
        except (TypeError, ValueError) as e:
            raise RequestError(f"feature {name!r} must be {dtype.name}: {e}") from None

    # --- answers ---

    def predict_images(self, images: list) -> dict[str, np.ndarray]:
        outputs = self._run(images=tf.constant(self.image_batch(images), tf.string))
        names = np.asarray(self.metadata["class_names"], dtype=object)
        return {"probabilities": outputs["probabilities"], "class_id": outputs["class_id"],
                "class_name": names[outputs["class_id"]]}

    def predict_features(self, rows: list[dict] | None = None, columns: dict | None = None) -> dict[str, np.ndarray]:
        if columns is None:
            columns = self.feature_batch(rows)
        else:
            absent = sorted(set(self.input_specs) - set(columns))
            if absent:
                raise RequestError(f"inputs {absent} are missing; the model reads {sorted(self.input_specs)}")
            lengths = {len(v) for v in columns.values()}
            if len(lengths) != 1:
                raise RequestError(f"inputs have different lengths {sorted(lengths)}")
            columns = {k: self.column(k, columns[k]) for k in self.input_specs}
        outputs = self._run(**{k: tf.constant(v, self.input_specs[k].dtype) for k, v in columns.items()})
        return {self.metadata["target"]: outputs["prediction"]}

    def _run(self, **inputs) -> dict[str, np.ndarray]:
        try:
            return {k: v.numpy() for k, v in self._serve(**inputs).items()}
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as e:  # e.g. a truncated image
            message = getattr(e, "message", str(e)).strip().splitlines()[0]
            raise RequestError(f"the model refused the inputs: {message}") from None

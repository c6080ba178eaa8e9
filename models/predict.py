"""One SavedModel batch predictor for everything that scores a pushed or candidate model: both evaluators
and the PseudoLabeler (components/). TensorFlow only (a SavedModel and TFRecords), no tfx.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.export import SERVING_TF_EXAMPLE
from models.inputs import records, tfrecord_files


class SavedModelPredictor:
    """A SavedModel loaded once, serving batches of serialized tf.Examples through one signature
    (``serving_tf_example`` by default: input ``examples``, outputs as models/export.py writes them)."""

    def __init__(self, saved_model_dir: str, signature: str = SERVING_TF_EXAMPLE):
        self.saved_model_dir = saved_model_dir
        self._model = tf.saved_model.load(saved_model_dir)  # kept referenced: the signature needs it alive
        if signature not in self._model.signatures:
            raise KeyError(f"{saved_model_dir} has no signature {signature!r} (it has {sorted(self._model.signatures)})")
        self._serve = self._model.signatures[signature]

    def __call__(self, serialized) -> dict[str, np.ndarray]:
        """Outputs (name -> array) for a batch of serialized examples (a list of bytes or a string tensor)."""
        return {k: v.numpy() for k, v in self._serve(examples=tf.convert_to_tensor(serialized)).items()}

    def predict_files(self, file_pattern, parse=None, batch_size: int = 512) -> tuple[dict, dict]:
        """(parsed, outputs) over every record of the files matching ``file_pattern`` (a pattern or a list), in
        file order, each a dict of concatenated arrays; ``parse`` maps a batch of serialized records to a dict of
        tensors (the labels, say)."""
        files = tfrecord_files(file_pattern)
        parsed, outputs = {}, {}
        for batch in records(files).batch(batch_size):
            for k, v in (parse(batch) if parse else {}).items():
                parsed.setdefault(k, []).append(np.asarray(v))
            for k, v in self(batch).items():
                outputs.setdefault(k, []).append(v)
        return ({k: np.concatenate(v) for k, v in parsed.items()}, {k: np.concatenate(v) for k, v in outputs.items()})


def parse_labels(batch) -> dict:
    """The int64 ``label`` feature of a batch of labeled image examples."""
    return {"label": tf.io.parse_example(batch, {"label": tf.io.FixedLenFeature([], tf.int64)})["label"]}

"""The taxi trips' columns as the regression Trainer reads them (models/regression.py): their types as CsvExampleGen
infers them, the features by how the model reads them, the bad-row policy of the target (counted by LabelStatsGen
before training, dropped by the Trainer) and the parsing of the serialized tf.Examples into columns.

models/ never imports tfx.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models.config import RegressionConfig
from models.inputs import records, tfrecord_files

# Column types of the CSV as CsvExampleGen infers them (mirrors schemas/chicago_taxi.pbtxt; a test checks).
COLUMN_TYPES = {
    "fare": "float", "tips": "float", "trip_miles": "float", "pickup_latitude": "float", "pickup_longitude": "float",
    "dropoff_latitude": "float", "dropoff_longitude": "float", "trip_seconds": "int", "trip_start_month": "int",
    "trip_start_hour": "int", "trip_start_day": "int", "trip_start_timestamp": "int", "pickup_community_area": "int",
    "dropoff_community_area": "int", "pickup_census_tract": "int", "dropoff_census_tract": "int",
    "payment_type": "bytes", "company": "bytes",
}


TARGETS = ("fare", "trip_seconds")


# Features by how the model reads them. Not used: tips (paid on the fare: a leak), the census tracts
# (pickup's is empty in all but 1 of 15,002 rows; the community areas carry the location) and the raw
# timestamp (month, day and hour carry it). Of the two targets, the one not predicted is a feature.
NUMERIC = ("trip_miles", "fare", "trip_seconds", "pickup_latitude", "pickup_longitude", "dropoff_latitude",
           "dropoff_longitude")


LOG_SCALED = ("trip_miles", "fare", "trip_seconds")  # long right tails: log1p before normalising


INTEGER = ("trip_start_hour", "trip_start_day", "trip_start_month", "pickup_community_area", "dropoff_community_area")


STRING = ("payment_type", "company")


def feature_columns(cfg: RegressionConfig) -> dict[str, tuple[str, ...]]:
    """The model's input columns by kind; of the two targets, the one not predicted is a feature."""
    if cfg.target not in TARGETS:
        raise ValueError(f"unknown regression target regression.target={cfg.target!r}; choose one of {TARGETS}")
    return {"numeric": tuple(f for f in NUMERIC if f != cfg.target), "integer": INTEGER, "string": STRING}


PROBLEMS = ("missing target", "non-finite target", "negative target", "target above max_target")


def target_problem(value: float | None, max_target: float) -> str | None:
    """Why a row's target makes it a bad row (None: a good row)."""
    if value is None:
        return PROBLEMS[0]
    if not np.isfinite(value):
        return PROBLEMS[1]
    if value < 0:
        return PROBLEMS[2]
    if value > max_target:
        return PROBLEMS[3]
    return None


def valid_rows(target, present, max_target: float) -> np.ndarray:
    """Vectorised :func:`target_problem` is None."""
    target = np.asarray(target, np.float64)
    with np.errstate(invalid="ignore"):
        return np.asarray(present, bool) & np.isfinite(target) & (target >= 0) & (target <= max_target)


def _tf_dtype(column: str):
    return {"float": tf.float32, "int": tf.int64, "bytes": tf.string}[COLUMN_TYPES[column]]


def _default(column: str):
    return {"float": float("nan"), "int": -1, "bytes": b""}[COLUMN_TYPES[column]]


def parse_examples(serialized, columns) -> tuple[dict, dict]:
    """(values, present) of ``columns`` from a batch of serialized tf.Example: a missing or empty
    value is NaN (float, and int-stored numeric columns, read as float), -1 (int) or b'' (string) in
    ``values`` and False in ``present``."""
    spec = {c: tf.io.RaggedFeature(_tf_dtype(c)) for c in columns}
    parsed = tf.io.parse_example(serialized, spec)
    values, present = {}, {}
    for c in columns:
        values[c] = parsed[c].to_tensor(default_value=_default(c), shape=[None, 1])[:, 0]
        present[c] = parsed[c].row_lengths() > 0
        if c in NUMERIC and COLUMN_TYPES[c] == "int":  # an int-stored number (trip_seconds): float, NaN where missing
            values[c] = tf.where(present[c], tf.cast(values[c], tf.float32), float("nan"))
    return values, present


def read_split(file_pattern, columns, batch_size: int = 4096) -> tuple[dict, dict]:
    """Every row of a split in memory as NumPy (the taxi splits are thousands of rows)."""
    files = tfrecord_files(file_pattern)
    ds = records(files)
    chunks = [parse_examples(batch, columns) for batch in ds.batch(batch_size)]
    values = {c: np.concatenate([v[c].numpy() for v, _ in chunks]) for c in columns}
    present = {c: np.concatenate([p[c].numpy() for _, p in chunks]) for c in columns}
    return values, present


def model_columns(cfg: RegressionConfig) -> list[str]:
    return [c for kind in feature_columns(cfg).values() for c in kind]


def to_model_inputs(values: dict, cfg: RegressionConfig) -> dict:
    """Feature dict for the model: (n, 1) float32 numerics (NaN where missing), int64, strings."""
    out = {}
    for kind, cols in feature_columns(cfg).items():
        for c in cols:
            v = np.asarray(values[c])
            if kind == "numeric":
                v = v.astype(np.float32)
            elif kind == "integer":
                v = v.astype(np.int64)
            else:
                v = v.astype(object)
            out[c] = v.reshape(-1, 1)
    return out

"""RegressionEvaluator: MAE / MSE / geometric-mean error overall and per bin group, the gate, a ModelBlessing.

The regression task of the evaluator skeleton (components/evaluation.py): its metric function and its gate
(components.gate.RegressionGate). The candidate and the last blessed model are scored on the same split through
their ``serving_tf_example`` signature; rows the bad-row policy drops (counted by RegressionLabelStatsGen) are left
out.
"""

from __future__ import annotations

import os

import tensorflow as tf
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components.evaluation import EvaluatorExecutor, GateEvaluator
from components.gate import RegressionGate
from models.predict import SavedModelPredictor
from models.regression import regression_metrics
from models.tabular import parse_examples, valid_rows


def predict_split(saved_model_dir: str, file_pattern: str, target: str, batch_size: int = 2048):
    """(targets, target present, predictions) of every row of the split, through serving_tf_example."""

    def parse(batch):
        values, has = parse_examples(batch, [target])
        return {"target": tf.cast(values[target], tf.float64), "present": has[target]}

    parsed, out = SavedModelPredictor(saved_model_dir).predict_files(file_pattern, parse, batch_size)
    return parsed["target"], parsed["present"], out["prediction"]


def evaluate_model(model_uri: str, examples, split: str, stats: dict) -> dict:
    pattern = os.path.join(artifact_utils.get_split_uri(examples, split), "*")
    y, present, pred = predict_split(path_utils.serving_model_path(model_uri), pattern, stats["target"])
    keep = valid_rows(y, present, stats["max_target"])
    return regression_metrics(y[keep], pred[keep], stats)


class Executor(EvaluatorExecutor):
    task = "regression"
    gate_type = RegressionGate

    def score(self, model_uri, examples, split, stats, holdout):
        return evaluate_model(model_uri, examples, split, stats), None


class RegressionEvaluator(GateEvaluator):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

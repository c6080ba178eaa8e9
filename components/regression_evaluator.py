"""RegressionEvaluator: MAE / MSE / geometric-mean error overall and per bin group, the gate, a ModelBlessing.

The regression counterpart of PerClassEvaluator (same reasons for not using TFMA; same blessing
properties, so the standard Pusher and LatestBlessedModelStrategy honour it). The candidate and
the last blessed model are scored on the same split through their ``serving_tf_example``
signature; rows the bad-row policy drops (counted by RegressionLabelStatsGen) are left out.
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import path_utils

from components.artifacts import LABEL_STATS_FILE
from components.evaluator import PerClassEvaluatorSpec, write_evaluation_and_blessing
from components.gate import RegressionGateThresholds, decide_regression
from models.predict import SavedModelPredictor
from models.regression import parse_examples, regression_metrics, valid_rows


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


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        thresholds = RegressionGateThresholds(**json.loads(exec_properties["thresholds"]))
        examples = input_dict["examples"]
        model = artifact_utils.get_single_instance(input_dict["model"])
        with open(os.path.join(artifact_utils.get_single_uri(input_dict["label_stats"]), LABEL_STATS_FILE)) as f:
            stats = json.load(f)
        eval_split, report_split = exec_properties["eval_split"], exec_properties.get("report_split")
        candidate = evaluate_model(model.uri, examples, eval_split, stats)
        baselines = input_dict.get("baseline_model") or []
        baseline = evaluate_model(baselines[0].uri, examples, eval_split, stats) if baselines else None
        blessed, checks = decide_regression(candidate, baseline, thresholds)
        result = {"task": "regression", "eval_split": eval_split, "candidate": candidate, "baseline": baseline,
                  "baseline_model_uri": baselines[0].uri if baselines else None,
                  "thresholds": dataclasses.asdict(thresholds), "checks": checks, "blessed": blessed}
        if report_split:
            result["report_split"] = report_split
            result["report"] = evaluate_model(model.uri, examples, report_split, stats)
        write_evaluation_and_blessing(output_dict, result, model, baselines)


class RegressionEvaluator(base_component.BaseComponent):
    SPEC_CLASS = PerClassEvaluatorSpec  # same inputs, outputs and parameters
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples, model, label_stats, thresholds: RegressionGateThresholds, baseline_model=None,
                 eval_split: str = "eval", report_split: str | None = "test"):
        spec = PerClassEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, label_stats=label_stats,
            thresholds=json.dumps(dataclasses.asdict(thresholds)), eval_split=eval_split, report_split=report_split,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing))
        super().__init__(spec=spec)

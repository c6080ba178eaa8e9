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

import numpy as np
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, path_utils

from components.artifacts import EVALUATION_FILE, LABEL_STATS_FILE, LabelStatistics
from components.gate import RegressionGateThresholds, decide_regression
from models.regression import parse_examples, regression_metrics, valid_rows


def predict_split(saved_model_dir: str, file_pattern: str, target: str, batch_size: int = 2048):
    """(targets, target present, predictions) of every row of the split, through serving_tf_example."""
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_tf_example"]
    files = sorted(tf.io.gfile.glob(file_pattern))
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP" if files[0].endswith(".gz") else "")
    ys, present, preds = [], [], []
    for batch in ds.batch(batch_size):
        values, has = parse_examples(batch, [target])
        ys.append(tf.cast(values[target], tf.float64).numpy())
        present.append(has[target].numpy())
        preds.append(serve(examples=batch)["prediction"].numpy())
    return np.concatenate(ys), np.concatenate(present), np.concatenate(preds)


def evaluate_model(model_uri: str, examples, split: str, stats: dict) -> dict:
    pattern = os.path.join(artifact_utils.get_split_uri(examples, split), "*")
    y, present, pred = predict_split(path_utils.serving_model_path(model_uri), pattern, stats["target"])
    keep = valid_rows(y, present, stats["max_target"])
    return regression_metrics(y[keep], pred[keep], stats)


class RegressionEvaluatorSpec(types.ComponentSpec):
    PARAMETERS = {
        "thresholds": ExecutionParameter(type=str),  # JSON of RegressionGateThresholds
        "eval_split": ExecutionParameter(type=str),
        "report_split": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model": ChannelParameter(type=standard_artifacts.Model),
        "baseline_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
        "label_stats": ChannelParameter(type=LabelStatistics),
    }
    OUTPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


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
        io_utils.write_string_file(os.path.join(artifact_utils.get_single_uri(output_dict["evaluation"]), EVALUATION_FILE),
                                   json.dumps(result, indent=2))
        blessing = artifact_utils.get_single_instance(output_dict["blessing"])
        io_utils.write_string_file(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "")
        blessing.set_int_custom_property("blessed", 1 if blessed else 0)
        blessing.set_int_custom_property("current_model_id", model.id)
        blessing.set_string_custom_property("current_model", model.uri)
        if baselines:
            blessing.set_int_custom_property("baseline_model_id", baselines[0].id)
            blessing.set_string_custom_property("baseline_model", baselines[0].uri)
        failed = [c["check"] for c in checks if not c["passed"]]
        blessing.set_string_custom_property("blessing_message", "blessed" if blessed else "failed: " + "; ".join(failed))


class RegressionEvaluator(base_component.BaseComponent):
    SPEC_CLASS = RegressionEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples, model, label_stats, thresholds: RegressionGateThresholds, baseline_model=None,
                 eval_split: str = "eval", report_split: str | None = "test"):
        spec = RegressionEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, label_stats=label_stats,
            thresholds=json.dumps(dataclasses.asdict(thresholds)), eval_split=eval_split, report_split=report_split,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing))
        super().__init__(spec=spec)

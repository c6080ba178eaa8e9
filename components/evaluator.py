"""PerClassEvaluator: per-class metrics on the balanced validation split, the gate, a ModelBlessing.

Why not TFMA's Evaluator: the gate needs the many/medium/few-shot group accuracies, whose classes
come from the LabelStatsGen artifact at run time, and TFMA 0.52 treats a Keras 3 SavedModel only as
tf_generic; a small custom component computes every number from one pass per split, writes a
ModelBlessing with the same custom properties TFMA would (``blessed``, ``current_model_id``), so the
standard Pusher and LatestBlessedModelStrategy honour it. Inference runs in-process (tf.data over
the split's TFRecords, batches of 512): validation and test splits are thousands of images.

The candidate and the last blessed model (from the Resolver) are both scored on the same split, so
"no worse than the last blessed model" compares like with like.
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
from components.gate import GateThresholds, decide
from models import calibration, uncertainty
from models.export import serving_metadata
from models.metrics import per_class_metrics
from models.predict import SavedModelPredictor, parse_labels


def _labels_and_bucket(batch) -> dict:
    """The labels and the calibration hash bucket (models/calibration.py) of a batch of labeled image examples."""
    images = tf.io.parse_example(batch, {"image": tf.io.FixedLenFeature([], tf.string)})["image"]
    return {**parse_labels(batch), "bucket": calibration.holdout_bucket(images)}


def predict_split(saved_model_dir: str, file_pattern: str, batch_size: int = 512, holdout: bool = False):
    """(labels, predicted class ids, logits) of the split's examples, through serving_tf_example; ``holdout``: only
    those outside the calibration's fit half."""
    parsed, out = SavedModelPredictor(saved_model_dir).predict_files(file_pattern, _labels_and_bucket, batch_size)
    keep = parsed["bucket"] != calibration.FIT_BUCKET if holdout else np.ones(len(parsed["label"]), bool)
    return parsed["label"][keep], out["class_id"][keep], out["logits"][keep]


def evaluate_model(model_artifact_uri: str, examples, split: str, stats: dict, holdout: bool = False,
                   with_predictions: bool = False):
    """Per-class metrics of the model on the split (``holdout``: its gate half only), with their support and intervals
    (``uncertainty``, models/uncertainty.py). A model served with fitted logit offsets (calibration) also gets
    ``uncalibrated``: the same metrics of argmax(logits - offsets). ``with_predictions``: (metrics, labels, predicted)."""
    serving_dir = path_utils.serving_model_path(model_artifact_uri)
    pattern = os.path.join(artifact_utils.get_split_uri(examples, split), "*")
    labels, preds, logits = predict_split(serving_dir, pattern, holdout=holdout)
    result = per_class_metrics(labels, preds, stats["num_classes"], stats["shot_groups"])
    result["uncertainty"] = uncertainty.recall_intervals(labels, preds, stats["num_classes"])
    offsets = (serving_metadata(serving_dir) or {}).get("calibration_offsets")
    if offsets is not None:
        raw = (logits - np.asarray(offsets, np.float32)).argmax(1)
        result["uncalibrated"] = per_class_metrics(labels, raw, stats["num_classes"], stats["shot_groups"])
    return (result, labels, preds) if with_predictions else result


def label_space(model_artifact_uri: str) -> list[str] | None:
    """The class names a model serves (its export's serving metadata), None where it records none."""
    meta = serving_metadata(path_utils.serving_model_path(model_artifact_uri)) or {}
    return list(meta["class_names"]) if meta.get("class_names") else None


def incomparable_baseline(baseline_uri: str, class_names: list[str]) -> str | None:
    """Why the last blessed model cannot be the gate's baseline (it serves other classes), or None when it can."""
    theirs = label_space(baseline_uri)
    if theirs == list(class_names):
        return None
    return (f"no comparable blessed model: the last blessed model ({baseline_uri}) serves "
            f"{'no recorded classes' if theirs is None else theirs}, this one {list(class_names)}; "
            "the candidate is judged on floors only")


def write_evaluation_and_blessing(output_dict, result: dict, model, baselines) -> None:
    """The ModelEvaluation JSON and a ModelBlessing with TFMA's custom properties (``blessed``,
    ``current_model_id``), which the Pusher and LatestBlessedModelStrategy read. Shared by the
    classification and the regression evaluators; ``result`` holds ``blessed`` and ``checks``."""
    blessed, checks = result["blessed"], result["checks"]
    io_utils.write_string_file(os.path.join(artifact_utils.get_single_uri(output_dict["evaluation"]), EVALUATION_FILE),
                               json.dumps(result, indent=2))
    blessing = artifact_utils.get_single_instance(output_dict["blessing"])
    io_utils.write_string_file(os.path.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), "")
    blessing.set_int_custom_property("blessed", 1 if blessed else 0)
    blessing.set_int_custom_property("current_model_id", model.id)
    blessing.set_string_custom_property("current_model", model.uri)
    refused = (result.get("baseline_refused") or {}).get("reason")
    if baselines and not refused:
        blessing.set_int_custom_property("baseline_model_id", baselines[0].id)
        blessing.set_string_custom_property("baseline_model", baselines[0].uri)
    failed = [c["check"] for c in checks if not c["passed"]]
    message = "blessed" if blessed else "failed: " + "; ".join(failed)
    blessing.set_string_custom_property("blessing_message", f"{message} ({refused})" if refused else message)


class PerClassEvaluatorSpec(types.ComponentSpec):
    PARAMETERS = {
        "thresholds": ExecutionParameter(type=str),  # JSON of GateThresholds (RegressionGateThresholds for regression)
        "eval_split": ExecutionParameter(type=str),
        "report_split": ExecutionParameter(type=str, optional=True),
        "holdout": ExecutionParameter(type=int, optional=True),  # 1: judge only the half calibration did not fit on
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
        thresholds = GateThresholds(**json.loads(exec_properties["thresholds"]))
        examples = input_dict["examples"]
        model = artifact_utils.get_single_instance(input_dict["model"])
        with open(os.path.join(artifact_utils.get_single_uri(input_dict["label_stats"]), LABEL_STATS_FILE)) as f:
            stats = json.load(f)
        eval_split, report_split = exec_properties["eval_split"], exec_properties.get("report_split")
        holdout = bool(exec_properties.get("holdout"))
        candidate, labels, preds = evaluate_model(model.uri, examples, eval_split, stats, holdout, with_predictions=True)
        baselines = input_dict.get("baseline_model") or []
        refused = incomparable_baseline(baselines[0].uri, stats["class_names"]) if baselines else None
        baseline = comparison = None
        if baselines and not refused:  # the last blessed model on the same examples: like with like, image by image
            baseline, base_labels, base_preds = evaluate_model(baselines[0].uri, examples, eval_split, stats, holdout,
                                                               with_predictions=True)
            if not np.array_equal(base_labels, labels):
                raise RuntimeError(f"the candidate and the last blessed model were scored on different {eval_split} "
                                   f"examples ({labels.size} and {base_labels.size})")
            few = stats["shot_groups"].get("few") or []
            comparison = {"balanced_accuracy": uncertainty.paired_drop(labels, base_preds, preds, stats["num_classes"]),
                          "few_shot": uncertainty.paired_drop(labels, base_preds, preds, stats["num_classes"], few)
                          if few else None}
        blessed, checks = decide(candidate, baseline, thresholds, stats["class_names"], comparison, refused)
        result = {
            "eval_split": eval_split,
            "eval_examples": (f"the gate half of {eval_split} ({calibration.HALVES_TEXT})" if holdout
                              else f"all of {eval_split}"),
            "candidate": candidate,
            "baseline": baseline,
            "baseline_model_uri": baselines[0].uri if baselines and not refused else None,
            "baseline_refused": ({"model_uri": baselines[0].uri, "reason": refused} if refused else None),
            "comparison": comparison,
            "thresholds": json.loads(exec_properties["thresholds"]),
            "checks": checks,
            "blessed": blessed,
        }
        if report_split:
            result["report_split"] = report_split
            result["report"] = evaluate_model(model.uri, examples, report_split, stats)
        write_evaluation_and_blessing(output_dict, result, model, baselines)


class PerClassEvaluator(base_component.BaseComponent):
    SPEC_CLASS = PerClassEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples, model, label_stats, thresholds: GateThresholds, baseline_model=None,
                 eval_split: str = "eval", report_split: str | None = "test", holdout: bool = False):
        spec = PerClassEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, label_stats=label_stats,
            thresholds=json.dumps(dataclasses.asdict(thresholds)), eval_split=eval_split, report_split=report_split,
            holdout=int(holdout), evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing))
        super().__init__(spec=spec)

"""PerClassEvaluator: per-class metrics on the balanced validation split, the gate, a ModelBlessing.

The classification task of the evaluator skeleton (components/evaluation.py): its metric function (per-class recall,
precision, the many/medium/few-shot group accuracies, whose classes come from the LabelStatsGen artifact at run time,
with their intervals), its gate (components.gate.PerClassGate), a last blessed model that serves other classes refused
as the baseline, and the paired comparison of the two models on the same images. Inference runs in-process (tf.data
over the split's TFRecords, batches of 512): validation and test splits are thousands of images.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import tensorflow as tf
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components.artifacts import UNLABELED_EXAMPLES_KEY
from components.evaluation import EvaluatorExecutor, GateEvaluator
from components.gate import PerClassGate
from components.own_data_example_gen import REPORT_FILE as INGEST_REPORT_FILE
from models import calibration, uncertainty
from models.class_prior import estimate_prior_em_bcts
from models.export import serving_metadata
from models.metrics import per_class_metrics
from models.predict import SavedModelPredictor, parse_labels
from models.shift import class_shift


def ingest_report(examples) -> dict:
    """OwnDataExampleGen's account of the Examples artifact (its spans), {} for other ExampleGens."""
    path = os.path.join(artifact_utils.get_single_uri(examples), INGEST_REPORT_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _labels_and_bucket(batch) -> dict:
    """The labels and the calibration hash bucket (models/calibration.py) of a batch of labeled image examples."""
    images = tf.io.parse_example(batch, {"image": tf.io.FixedLenFeature([], tf.string)})["image"]
    return {**parse_labels(batch), "bucket": calibration.holdout_bucket(images)}


def predict_split(saved_model_dir: str, file_pattern: str, batch_size: int = 512, holdout: bool = False,
                  predict=None):
    """(labels, predicted class ids, logits) of the split's examples, through serving_tf_example; ``holdout``: only
    those outside the calibration's fit half. ``predict(saved_model_dir, file_pattern)``: the (parsed, outputs) of
    every example (the Executor's, which loads each model once and scores each split once)."""
    parsed, out = (predict(saved_model_dir, file_pattern) if predict else
                   SavedModelPredictor(saved_model_dir).predict_files(file_pattern, _labels_and_bucket, batch_size))
    keep = parsed["bucket"] != calibration.FIT_BUCKET if holdout else np.ones(len(parsed["label"]), bool)
    return parsed["label"][keep], out["class_id"][keep], out["logits"][keep]


def evaluate_model(model_artifact_uri: str, examples, split: str, stats: dict, holdout: bool = False,
                   with_predictions: bool = False, predict=None):
    """Per-class metrics of the model on the split (``holdout``: its gate half only), with their support and intervals
    (``uncertainty``, models/uncertainty.py). A model served with fitted logit offsets (calibration) also gets
    ``uncalibrated``: the same metrics of argmax(logits - offsets). ``with_predictions``: (metrics, labels, predicted)."""
    serving_dir = path_utils.serving_model_path(model_artifact_uri)
    pattern = os.path.join(artifact_utils.get_split_uri(examples, split), "*")
    labels, preds, logits = predict_split(serving_dir, pattern, holdout=holdout, predict=predict)
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


class Executor(EvaluatorExecutor):
    task = "classification"
    gate_type = PerClassGate

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._predictors, self._predictions = {}, {}

    def predictions(self, saved_model_dir: str, file_pattern: str, labeled: bool = True) -> tuple[dict, dict]:
        """(parsed, outputs) of every example of the files, each model loaded once and each split scored once per
        execution: the gate, the report split and the shift report read the same logits (``labeled``: parse the
        labels and calibration buckets too)."""
        key = (saved_model_dir, file_pattern, labeled)
        if key not in self._predictions:
            if saved_model_dir not in self._predictors:
                self._predictors[saved_model_dir] = SavedModelPredictor(saved_model_dir)
            self._predictions[key] = self._predictors[saved_model_dir].predict_files(
                file_pattern, _labels_and_bucket if labeled else None)
        return self._predictions[key]

    def score(self, model_uri, examples, split, stats, holdout):
        metrics, labels, preds = evaluate_model(model_uri, examples, split, stats, holdout, with_predictions=True,
                                                predict=self.predictions)
        return metrics, (labels, preds)

    def refuse_baseline(self, baseline_uri, stats):
        return incomparable_baseline(baseline_uri, stats["class_names"])

    def compare(self, split, candidate, baseline, stats):
        """The paired drops of balanced accuracy and of the few-shot accuracy, image by image (models/uncertainty.py)."""
        (labels, preds), (base_labels, base_preds) = candidate, baseline
        if not np.array_equal(base_labels, labels):
            raise RuntimeError(f"the candidate and the last blessed model were scored on different {split} "
                               f"examples ({labels.size} and {base_labels.size})")
        few = stats["shot_groups"].get("few") or []
        return {"balanced_accuracy": uncertainty.paired_drop(labels, base_preds, preds, stats["num_classes"]),
                "few_shot": uncertainty.paired_drop(labels, base_preds, preds, stats["num_classes"], few) if few else None}

    def gate(self, stats, comparison):
        return PerClassGate(stats["class_names"], comparison)

    def shift_report(self, input_dict, model, baseline_uri, stats, thresholds, eval_split, holdout):
        """models/shift.py's report: the reference shares (the last blessed model's training set, else this run's),
        the newest labeled shares (the newest span's training images, else the labeled set) and the pool's, by
        EM-BCTS on the candidate's logits (BCTS fitted on every validation image)."""
        names = stats["class_names"]
        trained = (serving_metadata(path_utils.serving_model_path(baseline_uri)) or {}).get("training") \
            if baseline_uri else None
        if trained and trained.get("class_counts") and len(trained["class_counts"]) == len(names):
            reference, reference_source = trained["class_counts"], "last blessed model's training set"
        else:
            reference = stats["class_counts"]
            reference_source = ("this run's training set (the last blessed model records no training counts)"
                                if baseline_uri else "this run's training set (no comparable blessed model)")
        newest, newest_source = stats["class_counts"], "labeled training set"
        per_span = (ingest_report(input_dict["examples"]).get("spans") or {}).get("per_span") or []
        if per_span and per_span[-1].get("labeled_per_class"):
            newest, newest_source = per_span[-1]["labeled_per_class"], f"span-{per_span[-1]['span']}'s labeled images"
        estimate, reason = None, None
        pool = input_dict.get(UNLABELED_EXAMPLES_KEY) or []
        if not pool:
            reason = "no unlabeled pool"
        else:
            serving_dir = path_utils.serving_model_path(model.uri)
            # BCTS on every validation image (both calibration halves): a user's validation split may hold 5 images a
            # class, and the fit half's offsets are only a bias BCTS refits (stream bench, bench/retrain_stream.py).
            # The gate's own scoring of the split, not a second pass.
            parsed, out = self.predictions(
                serving_dir, os.path.join(artifact_utils.get_split_uri(input_dict["examples"], eval_split), "*"))
            val_labels, val_logits = parsed["label"], out["logits"]
            pool_files = os.path.join(artifact_utils.get_split_uri(pool, "unlabeled"), "*")
            pool_logits = self.predictions(serving_dir, pool_files, labeled=False)[1]["logits"]
            try:
                estimate = estimate_prior_em_bcts(val_logits, val_labels, pool_logits, len(names))
            except ValueError as e:  # a class without validation images, an empty pool: said, not raised
                reason = f"no pool estimate: {e}"
        report = class_shift(names, reference, reference_source, newest, newest_source, estimate,
                             thresholds.max_class_shift_l1, reason)
        for message in report["messages"]:
            print(f"[evaluator] {message}", file=sys.stderr, flush=True)
        return report

    def examples_note(self, split, holdout):
        return f"the gate half of {split} ({calibration.HALVES_TEXT})" if holdout else f"all of {split}"


class PerClassEvaluator(GateEvaluator):
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, *args, holdout: bool = False, **kwargs):
        super().__init__(*args, holdout=int(holdout), **kwargs)

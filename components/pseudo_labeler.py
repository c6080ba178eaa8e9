"""PseudoLabeler: the base model labels the unlabeled pool (Beam), and the pool is estimated.

Why a custom Beam component rather than TFX's BulkInferrer: BulkInferrer writes PredictionLogs (or
Examples with the prediction appended to the input's features), and we need (a) new Examples that
carry only the image plus the pseudo-label, so nothing of the pool's input features (a stray true
label included) can reach training, (b) the confidence threshold and class-balanced top-k selection,
(c) per-class counts, a confidence histogram and OOD-score counts for the pool estimates. One Beam
pipeline does all three.

Inference: the Trainer's SavedModel, signature ``serving_tf_example`` (models/export.py), loaded
once per worker in ``DoFn.setup``; records go through it in batches (``beam.BatchElements``).
Each output tf.Example holds exactly:

    image       bytes   the pool image, copied unchanged
    label       int64   the predicted class (argmax of the served probabilities)
    confidence  float   the served probability of that class
    origin      bytes   b"pseudo"

Prior adjustment (``prior_adjustment="em_bcts"``, issue #44): a first Beam pass collects the pool's logits, the
driver estimates the pool's class prior q by EM-BCTS (models/class_prior.py: BCTS fitted on the labeled ``eval``
split, Saerens's EM on the pool, a bootstrap interval), and the labelling pass takes each image's label and
confidence from its posterior adjusted toward q (log p(y|x) + s (log q_y - log p_val(y)), s = ``prior_strength``),
so a consistent or reversed pool is not labeled as if it were the validation's mix. The pool estimates below still
read the served outputs.

Selection: confidence >= ``confidence_threshold`` (default 0, i.e. every image, as in Yang & Xu
2020), then, if ``top_k_per_class`` > 0, the k most confident images of each predicted class
(ties broken by the image's hash, so the result is deterministic) so the pseudo-labeled set is not
as skewed as the base model's predictions.

Pool estimates (models/pool_estimates.py), when the labeled Examples are given: the model predicts
the ``eval`` split in-process (thousands of images; like PerClassEvaluator), which gives the
(soft and hard) confusion matrices for black-box shift estimation, fits the Mahalanobis score on the
logits, and calibrates each score (Mahalanobis, energy, max-softmax): global thresholds at ``ood_tpr``
and at the best-bin grid of TPRs, and per predicted class the bin edges of the class-conditional
estimate (its distinct validation scores); Beam sums the pool's probabilities, counts the pool images
at or above each global threshold and in each (predicted-class group, bin). Only these sums and
counts leave the workers; the class-conditional estimate is reweighted by the estimated class
distribution afterwards.

Outputs: ``pseudo_labeled_examples`` (split ``train``, GZIP TFRecords) and ``statistics``
(``pseudo_label_stats.json``).
"""

from __future__ import annotations

import hashlib
import json
import os

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils, path_utils

from components.artifacts import (
    PSEUDO_LABEL_STATS_FILE,
    PSEUDO_LABELED_EXAMPLES_KEY,
    PSEUDO_LABELER_STATISTICS_KEY,
    UNLABELED_EXAMPLES_KEY,
    PseudoLabelStatistics,
)
from components.errors import PipelineDataError
from models.class_prior import bcts_log_probabilities, estimate_prior_em_bcts, prior_adjusted_log_probabilities
from models.config import PSEUDO_LABEL_PRIORS
from models.pool_estimates import (
    DEFAULT_TPR_GRID,
    ClassConditionalCalibration,
    LogitGaussian,
    energy_score,
    in_domain_threshold,
    relevance_best_bin,
    relevance_from_fraction,
    summarise_pool,
)
from models.predict import SavedModelPredictor, parse_labels

ORIGIN = b"pseudo"
OUTPUT_SPLIT = "train"
_PREDICTED, _ACCEPTED, _HISTOGRAM, _ABOVE, _BINNED = "predicted", "accepted", "histogram", "above", "binned"
_LABELED = "labeled"  # the pseudo-labels before the threshold: the served argmax, or the prior-adjusted one
_PROBABILITY_SUMS = "probability_sums"


def _split_files(examples, split: str) -> list[str]:
    files = sorted(tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri(examples, split), "*")))
    if not files:
        raise PipelineDataError(f"Split-{split}", "no TFRecord file found")
    return files


def predict_labeled_split(saved_model_dir: str, files: list[str], batch_size: int = 512):
    """(labels, probabilities, logits or None) of a labeled split, through serving_tf_example."""
    parsed, out = SavedModelPredictor(saved_model_dir).predict_files(files, parse_labels, batch_size)
    return parsed["label"], out["probabilities"], out.get("logits")


class _PseudoLabel(beam.DoFn):
    """A batch of serialized pool Examples -> one dict per image: image, label, confidence, OOD scores."""

    def __init__(self, saved_model_dir: str, energy_temperature: float, logit_gaussian: LogitGaussian | None = None,
                 adjustment: dict | None = None):
        self._dir, self._temperature, self._gaussian = saved_model_dir, energy_temperature, logit_gaussian
        self._adjustment = adjustment  # EM-BCTS's temperature, bias, source and pool prior; None: the served argmax
        self._predict = None

    def setup(self):
        self._predict = SavedModelPredictor(self._dir)  # loaded once per worker

    def process(self, batch):
        records = tf.constant(batch)
        images = tf.io.parse_example(records, {"image": tf.io.FixedLenFeature([], tf.string)})["image"].numpy()
        out = self._predict(records)
        probs, labels = out["probabilities"], out["class_id"]
        energy = energy_score(out["logits"], self._temperature) if "logits" in out else None
        mahalanobis = self._gaussian(out["logits"]) if "logits" in out and self._gaussian is not None else None
        chosen = probs
        if self._adjustment is not None:
            a = self._adjustment
            chosen = np.exp(prior_adjusted_log_probabilities(
                bcts_log_probabilities(out["logits"], a["temperature"], a["bias"]), a["source_prior"], a["prior"],
                a["strength"]))
        for i, image in enumerate(images):
            label = int(chosen[i].argmax()) if self._adjustment is not None else int(labels[i])
            yield {"image": image, "label": label, "confidence": float(chosen[i, label]), "probabilities": probs[i],
                   "served_label": int(labels[i]),
                   "max_softmax": float(probs[i].max()), "energy": None if energy is None else float(energy[i]),
                   "mahalanobis": None if mahalanobis is None else float(mahalanobis[i]),
                   "digest": hashlib.sha1(image).hexdigest()}


def to_example(item: dict) -> bytes:
    """The pseudo-labeled tf.Example: built from scratch, so no input feature but the image is carried over."""
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[item["image"]])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[item["label"]])),
        "confidence": tf.train.Feature(float_list=tf.train.FloatList(value=[item["confidence"]])),
        "origin": tf.train.Feature(bytes_list=tf.train.BytesList(value=[ORIGIN])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _histogram_bin(confidence: float, bins: int) -> int:
    return min(int(confidence * bins), bins - 1)


def _above(item: dict, thresholds: dict):
    """((score, tpr), 0 or 1) for every calibrated threshold: is the image at or above it?"""
    for name, by_tpr in thresholds.items():
        for tpr, t in by_tpr.items():
            yield (name, tpr), int(item[name] is not None and item[name] >= t)


def _binned(item: dict, calibrations: dict):
    """((score, predicted-class group, bin), 1) for every class-conditional calibration (models/pool_estimates.py)."""
    for name, calibration in calibrations.items():
        if item[name] is not None:
            yield (name, *calibration.bin_of(item["served_label"], item[name])), 1


class _VectorSum(beam.CombineFn):
    """Element-wise sum of the probability vectors (the pool's mu for BBSE-soft)."""

    def create_accumulator(self):
        return None

    def add_input(self, acc, vector):
        return np.array(vector, np.float64) if acc is None else acc + vector

    def merge_accumulators(self, accs):
        accs = [a for a in accs if a is not None]
        return np.sum(accs, axis=0) if accs else None

    def extract_output(self, acc):
        return None if acc is None else acc.tolist()


class PseudoLabelerSpec(types.ComponentSpec):
    PARAMETERS = {
        "num_classes": ExecutionParameter(type=int),
        "confidence_threshold": ExecutionParameter(type=float, optional=True),
        "top_k_per_class": ExecutionParameter(type=int, optional=True),
        "eval_split": ExecutionParameter(type=str, optional=True),
        "ood_tpr": ExecutionParameter(type=float, optional=True),
        "energy_temperature": ExecutionParameter(type=float, optional=True),
        "histogram_bins": ExecutionParameter(type=int, optional=True),
        "prior_adjustment": ExecutionParameter(type=str, optional=True),
        "prior_strength": ExecutionParameter(type=float, optional=True),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        UNLABELED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        "examples": ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        PSEUDO_LABELED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        PSEUDO_LABELER_STATISTICS_KEY: ChannelParameter(type=PseudoLabelStatistics),
    }


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        num_classes = int(exec_properties["num_classes"])
        threshold = float(exec_properties.get("confidence_threshold") or 0.0)
        top_k = int(exec_properties.get("top_k_per_class") or 0)
        eval_split = exec_properties.get("eval_split") or "eval"
        tpr = float(exec_properties.get("ood_tpr") or 0.95)
        temperature = float(exec_properties.get("energy_temperature") or 1.0)
        bins = int(exec_properties.get("histogram_bins") or 20)
        model = artifact_utils.get_single_instance(input_dict["model"])
        serving_dir = path_utils.serving_model_path(model.uri)
        _split_files(input_dict[UNLABELED_EXAMPLES_KEY], "unlabeled")  # fails early, naming the split, when it is empty
        pool_pattern = os.path.join(artifact_utils.get_split_uri(input_dict[UNLABELED_EXAMPLES_KEY], "unlabeled"), "*")

        # Validation (in-domain, labeled): the confusion matrix and the OOD thresholds.
        val_labels = val_preds = val_probs = val_logits = None
        val_scores, ood_thresholds, calibrations, gaussian = {}, {}, {}, None
        if input_dict.get("examples"):
            val_labels, val_probs, val_logits = predict_labeled_split(serving_dir, _split_files(input_dict["examples"],
                                                                                                  eval_split))
            val_preds = val_probs.argmax(axis=1)
            val_scores["max_softmax"] = val_probs.max(axis=1)
            if val_logits is not None:
                val_scores["energy"] = energy_score(val_logits, temperature)
                gaussian = LogitGaussian(val_labels, val_logits, num_classes)
                # out of fold: each validation image scored by Gaussians fitted without it, as the pool's images are
                val_scores["mahalanobis"] = gaussian.out_of_fold(val_labels, val_logits)
            tprs = sorted(set(DEFAULT_TPR_GRID) | {tpr}, reverse=True)
            ood_thresholds = {name: {t: in_domain_threshold(s, t) for t in tprs} for name, s in val_scores.items()}
            calibrations = {name: ClassConditionalCalibration(val_labels, val_preds, s, num_classes)
                            for name, s in val_scores.items()}

        out_examples = artifact_utils.get_single_instance(output_dict[PSEUDO_LABELED_EXAMPLES_KEY])
        out_examples.split_names = artifact_utils.encode_split_names([OUTPUT_SPLIT])
        split_dir = artifact_utils.get_split_uri([out_examples], OUTPUT_SPLIT)
        stats_uri = artifact_utils.get_single_uri(output_dict[PSEUDO_LABELER_STATISTICS_KEY])
        beam_dir = os.path.join(stats_uri, "beam")

        prior_setting = exec_properties.get("prior_adjustment") or "none"
        strength = exec_properties.get("prior_strength")
        strength = 1.0 if strength is None else float(strength)
        if prior_setting not in PSEUDO_LABEL_PRIORS:
            raise ValueError(f"prior_adjustment={prior_setting!r}: use one of {PSEUDO_LABEL_PRIORS}")
        adjustment, prior_block = None, {"setting": prior_setting, "method": "none"}
        if prior_setting == "em_bcts" and val_logits is None:
            prior_block["reason"] = ("no validation logits (no labeled examples given, or the model exports no "
                                     "logits): the served argmax labels the pool")
        elif prior_setting == "em_bcts":
            pool_logits = self._pool_logits(serving_dir, pool_pattern, os.path.join(beam_dir, "pool_logits"))
            estimate = estimate_prior_em_bcts(val_logits, val_labels, pool_logits, num_classes)
            adjustment = {**{k: estimate[k] for k in ("temperature", "bias", "source_prior", "prior")}, "strength": strength}
            prior_block.update(estimate, setting=prior_setting, strength=strength)

        with self._make_beam_pipeline() as p:
            items = (p | "ReadPool" >> beam.io.ReadFromTFRecord(pool_pattern, coder=beam.coders.BytesCoder())
                     | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=256)
                     | "Predict" >> beam.ParDo(_PseudoLabel(serving_dir, temperature, gaussian, adjustment)))
            accepted = items | "Threshold" >> beam.Filter(lambda it: it["confidence"] >= threshold)
            if top_k > 0:
                accepted = (accepted | "ByClass" >> beam.Map(lambda it: (it["label"], it))
                            | "TopKPerClass" >> beam.combiners.Top.PerKey(
                                top_k, key=lambda it: (it["confidence"], it["digest"]))
                            | "Flatten" >> beam.FlatMap(lambda kv: kv[1]))
            (accepted | "ToExample" >> beam.Map(to_example)
             | "WriteExamples" >> beam.io.WriteToTFRecord(os.path.join(split_dir, "pseudo_labeled"),
                                                          file_name_suffix=".gz"))
            counts = {
                _PREDICTED: items | "PredictedKey" >> beam.Map(lambda it: (it["served_label"], 1)),
                _LABELED: items | "LabeledKey" >> beam.Map(lambda it: (it["label"], 1)),
                _ACCEPTED: accepted | "AcceptedKey" >> beam.Map(lambda it: (it["label"], 1)),
                _HISTOGRAM: items | "BinKey" >> beam.Map(lambda it: (_histogram_bin(it["confidence"], bins), 1)),
                _ABOVE: items | "AboveKey" >> beam.FlatMap(_above, ood_thresholds),
                _BINNED: items | "BinnedKey" >> beam.FlatMap(_binned, calibrations),
            }
            for name, keyed in counts.items():
                (keyed | f"Count{name}" >> beam.CombinePerKey(sum) | f"Json{name}" >> beam.Map(json.dumps)
                 | f"Write{name}" >> beam.io.WriteToText(os.path.join(beam_dir, name), shard_name_template=""))
            (items | "Probabilities" >> beam.Map(lambda it: it["probabilities"])
             | "SumProbabilities" >> beam.CombineGlobally(_VectorSum()) | "JsonSums" >> beam.Map(json.dumps)
             | "WriteSums" >> beam.io.WriteToText(os.path.join(beam_dir, _PROBABILITY_SUMS), shard_name_template=""))

        def read_counts(name, size=None):
            path = os.path.join(beam_dir, name)
            pairs = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
            if size is None:
                return {tuple(k) if isinstance(k, list) else k: n for k, n in pairs}
            out = [0] * size
            for key, n in pairs:
                out[int(key)] = int(n)
            return out

        predicted = read_counts(_PREDICTED, num_classes)
        num_pool = sum(predicted)
        above = read_counts(_ABOVE)
        relevance = {}
        for name, by_tpr in ood_thresholds.items():
            if not num_pool:
                relevance[name] = {"relevance": None}
                continue
            fractions = {t: above.get((name, t), 0) / num_pool for t in by_tpr}
            best = relevance_best_bin({t: fractions[t] for t in DEFAULT_TPR_GRID})
            relevance[name] = {
                "relevance": best["relevance"],  # the global best bin over the TPR grid (class-conditional: summarise_pool)
                "best_bin": best,
                "thresholds": {f"{t:g}": v for t, v in by_tpr.items()},
                "at_tpr": {"tpr": tpr, "threshold": by_tpr[tpr], "fraction_above": fractions[tpr], "fpr": 0.0,
                           "relevance": relevance_from_fraction(fractions[tpr], tpr)},
            }
        binned = read_counts(_BINNED)
        class_conditional = {}
        for name, calibration in calibrations.items():
            by_group = {g: [0] * (len(edges) + 1) for g, edges in calibration.edges.items()}
            for (score, g, b), n in binned.items():
                if score == name:
                    by_group[g][b] = n
            class_conditional[name] = (calibration, by_group)
        sums_path = os.path.join(beam_dir, _PROBABILITY_SUMS)
        sums_lines = open(sums_path).read().splitlines() if os.path.exists(sums_path) else []
        probability_sums = json.loads(sums_lines[0]) if sums_lines else None
        stats = {
            "confidence_threshold": threshold,
            "top_k_per_class": top_k,
            "per_class_predicted": predicted,
            "per_class_accepted": read_counts(_ACCEPTED, num_classes),
            "confidence_histogram": {"bin_edges": np.linspace(0.0, 1.0, bins + 1).round(6).tolist(),
                                     "counts": read_counts(_HISTOGRAM, bins)},
            "validation_examples": 0 if val_labels is None else int(len(val_labels)),
            "validation_split": eval_split if val_labels is not None else None,
        }
        stats["num_accepted"] = sum(stats["per_class_accepted"])
        stats["prior_adjustment"] = {**prior_block, "per_class_labeled": read_counts(_LABELED, num_classes)}
        stats.update(summarise_pool(num_classes, predicted, val_labels, val_preds, relevance,
                                    validation_probabilities=val_probs if val_labels is not None else None,
                                    pool_probability_sums=probability_sums,
                                    class_conditional=class_conditional if num_pool else None))
        io_utils.write_string_file(os.path.join(stats_uri, PSEUDO_LABEL_STATS_FILE), json.dumps(stats, indent=2))


    def _pool_logits(self, serving_dir: str, pool_pattern: str, path: str) -> np.ndarray:
        """The pool's logits (N, C), by a Beam pass of their own (EM needs every image's, not their sums)."""
        with self._make_beam_pipeline() as p:
            (p | "ReadPool" >> beam.io.ReadFromTFRecord(pool_pattern, coder=beam.coders.BytesCoder())
             | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=256)
             | "Logits" >> beam.ParDo(_Logits(serving_dir)) | "Json" >> beam.Map(json.dumps)
             | "Write" >> beam.io.WriteToText(path, shard_name_template=""))
        with tf.io.gfile.GFile(path) as f:
            return np.asarray([json.loads(line) for line in f if line.strip()], np.float64)


class _Logits(beam.DoFn):
    """A batch of serialized pool Examples -> each image's logits (a list), through serving_tf_example."""

    def __init__(self, saved_model_dir: str):
        self._dir, self._predict = saved_model_dir, None

    def setup(self):
        self._predict = SavedModelPredictor(self._dir)

    def process(self, batch):
        yield from self._predict(tf.constant(batch))["logits"].tolist()


class PseudoLabeler(base_beam_component.BaseBeamComponent):
    """Pseudo-labels the unlabeled pool with the base model (Beam) and estimates the pool."""

    SPEC_CLASS = PseudoLabelerSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, model, unlabeled_examples, num_classes: int, examples=None, confidence_threshold: float = 0.0,
                 top_k_per_class: int = 0, eval_split: str = "eval", ood_tpr: float = 0.95,
                 energy_temperature: float = 1.0, histogram_bins: int = 20, prior_adjustment: str = "none",
                 prior_strength: float = 1.0):
        spec = PseudoLabelerSpec(
            model=model, unlabeled_examples=unlabeled_examples, examples=examples, num_classes=num_classes,
            confidence_threshold=confidence_threshold, top_k_per_class=top_k_per_class, eval_split=eval_split,
            ood_tpr=ood_tpr, energy_temperature=energy_temperature, histogram_bins=histogram_bins,
            prior_adjustment=prior_adjustment, prior_strength=prior_strength,
            pseudo_labeled_examples=types.Channel(type=standard_artifacts.Examples),
            statistics=types.Channel(type=PseudoLabelStatistics))
        super().__init__(spec=spec)

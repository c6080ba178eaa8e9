"""LabelStatsGen: per-class counts of the labeled examples with Apache Beam, and what follows.

The classification task of the label-statistics skeleton (components/label_statistics.py). Beam counts per
class with ``CombinePerKey`` and counts undecodable images / missing or out-of-range labels per problem with
``CombinePerKey`` too; only C numbers and a handful of example locators ever leave the workers.
The derived statistics (priors, imbalance ratio, shot groups, effective-number weights) are
computed by models/label_stats.py and written to ``label_stats.json``.

Bad data stops the run with a :class:`PipelineDataError` naming the split, the problem and the
count: an image that does not decode, a label outside [0, C), a labeled example without a label,
a class with no training example.
"""

from __future__ import annotations

import json
import os

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.artifacts import LABEL_STATS_KEY, UNLABELED_EXAMPLES_KEY, LabelStatistics
from components.errors import PipelineDataError
from components.label_statistics import CountAndSample, LabelStatsComponent, LabelStatsExecutor
from models.label_stats import derive_label_stats

_OK, _NO_LABEL, _BAD_LABEL, _BAD_IMAGE = "ok", "missing label", "label outside range", "image does not decode"


class _CheckExample(beam.DoFn):
    """Parses one serialized tf.Example; emits ('ok', label) or (problem, locator)."""

    def __init__(self, num_classes: int | None, image_shape, with_labels: bool):
        self._num_classes, self._image_shape, self._with_labels = num_classes, list(image_shape), with_labels

    def process(self, element):
        index, record = element
        feats = tf.train.Example.FromString(record).features.feature
        image = feats["image"].bytes_list.value[0] if "image" in feats and feats["image"].bytes_list.value else b""
        try:
            decoded = tf.io.decode_image(image, channels=self._image_shape[-1], expand_animations=False)
            if list(decoded.shape) != self._image_shape:
                raise ValueError(f"shape {list(decoded.shape)}")
        except (tf.errors.InvalidArgumentError, ValueError):
            yield _BAD_IMAGE, index
            return
        if not self._with_labels:
            yield _OK, -1
            return
        if "label" not in feats or not feats["label"].int64_list.value:
            yield _NO_LABEL, index
            return
        label = int(feats["label"].int64_list.value[0])
        if not 0 <= label < self._num_classes:
            yield _BAD_LABEL, f"{index} (label {label})"
            return
        yield _OK, label


def count_split(pipeline, file_pattern: str, num_classes, image_shape, with_labels: bool, tag: str):
    """Beam sub-graph of one split: PCollections of (label, n) and (problem, (n, samples))."""
    records = pipeline | f"Read{tag}" >> beam.io.ReadFromTFRecord(file_pattern, coder=beam.coders.BytesCoder())
    # A record's position is not known inside Beam; its content hash locates it for the message.
    keyed = records | f"Locate{tag}" >> beam.Map(lambda r: (f"record sha1 {_sha1(r)}", r))
    checked = keyed | f"Check{tag}" >> beam.ParDo(_CheckExample(num_classes, image_shape, with_labels))
    ok = checked | f"Ok{tag}" >> beam.Filter(lambda kv: kv[0] == _OK)
    counts = (ok | f"Label{tag}" >> beam.Map(lambda kv: (kv[1], 1))
              | f"CountPerClass{tag}" >> beam.CombinePerKey(sum))
    problems = (checked | f"Bad{tag}" >> beam.Filter(lambda kv: kv[0] != _OK)
                | f"CountProblems{tag}" >> beam.CombinePerKey(CountAndSample()))
    return {"counts": counts, "problems": problems}


def _sha1(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(data).hexdigest()[:12]


class LabelStatsGenSpec(types.ComponentSpec):
    PARAMETERS = {
        "num_classes": ExecutionParameter(type=int),
        "class_names": ExecutionParameter(type=str),  # JSON list
        "image_shape": ExecutionParameter(type=str),  # JSON [H, W, C]
        "split": ExecutionParameter(type=str),
        "many_shot_threshold": ExecutionParameter(type=float, optional=True),
        "few_shot_threshold": ExecutionParameter(type=float, optional=True),
        "effective_number_beta": ExecutionParameter(type=float, optional=True),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        UNLABELED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {LABEL_STATS_KEY: ChannelParameter(type=LabelStatistics)}


class Executor(LabelStatsExecutor):
    def tables(self, pipeline, input_dict, exec_properties):
        image_shape = json.loads(exec_properties["image_shape"])
        pattern = os.path.join(artifact_utils.get_split_uri(input_dict["examples"], exec_properties["split"]), "*")
        splits = {"labeled": count_split(pipeline, pattern, int(exec_properties["num_classes"]), image_shape, True,
                                         "Labeled")}
        if input_dict.get(UNLABELED_EXAMPLES_KEY):
            pattern = os.path.join(artifact_utils.get_split_uri(input_dict[UNLABELED_EXAMPLES_KEY], "unlabeled"), "*")
            splits["unlabeled"] = count_split(pipeline, pattern, None, image_shape, False, "Unlabeled")
        return {f"{name}_{table}": rows for name, tables in splits.items() for table, rows in tables.items()}

    def derive(self, read, input_dict, exec_properties):
        num_classes, split = int(exec_properties["num_classes"]), exec_properties["split"]
        class_names = json.loads(exec_properties["class_names"])
        unlabeled = bool(input_dict.get(UNLABELED_EXAMPLES_KEY))
        for name in ("labeled", "unlabeled") if unlabeled else ("labeled",):
            for problem, (count, samples) in read(f"{name}_problems"):
                split_name = f"{name} examples ({'Split-' + split if name == 'labeled' else 'Split-unlabeled'})"
                raise PipelineDataError(split_name, f"{problem}, e.g. {samples}", count)
        counts = [0] * num_classes
        for label, n in read("labeled_counts"):
            counts[int(label)] = int(n)
        absent = [class_names[c] for c, n in enumerate(counts) if n == 0]
        if absent:
            raise PipelineDataError(f"labeled examples (Split-{split})",
                                    f"classes with no training example: {absent}; every class needs at least one")
        stats = derive_label_stats(counts, class_names,
                                   exec_properties.get("many_shot_threshold"),
                                   exec_properties.get("few_shot_threshold"),
                                   exec_properties.get("effective_number_beta") or 0.9999)
        stats["unlabeled_examples"] = sum(n for _, n in read("unlabeled_counts")) if unlabeled else 0
        return stats


class LabelStatsGen(LabelStatsComponent):
    """Beam per-class label statistics of the labeled examples (and the unlabeled count)."""

    SPEC_CLASS = LabelStatsGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples, num_classes: int, class_names, image_shape, unlabeled_examples=None,
                 split: str = "train", many_shot_threshold=None, few_shot_threshold=None, effective_number_beta=0.9999):
        super().__init__(examples, unlabeled_examples=unlabeled_examples, num_classes=num_classes,
                         class_names=json.dumps(list(class_names)), image_shape=json.dumps(list(image_shape)), split=split,
                         many_shot_threshold=many_shot_threshold, few_shot_threshold=few_shot_threshold,
                         effective_number_beta=effective_number_beta)

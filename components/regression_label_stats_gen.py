"""RegressionLabelStatsGen: LabelStatsGen for a continuous target, with Apache Beam.

The regression task of the label-statistics skeleton (components/label_statistics.py). Per split
(train, eval, test) Beam parses each tf.Example's target, applies the bad-row policy
(models.tabular.target_problem: missing, non-finite, negative, above ``max_target``) and
combines per key: the training histogram {floor(y / bin_width): count} (``CombinePerKey(sum)``),
the bad rows per reason (count and a few example locators) and, for the training split, the
missing or non-finite values per feature column (the model imputes them: mean plus a flag, or the
out-of-vocabulary token). Only these small tables leave the workers. models/density.py turns the
histogram into bins (the last open-ended), the LDS-smoothed density, per-bin weights and the
many/medium/few bin groups; they go to ``label_stats.json`` in the same LabelStatistics artifact
the classification LabelStatsGen writes, which the Trainer and the gate read.

Policy: bad rows are dropped from every split and counted by reason in the artifact (hence in
metrics.json and report.md); if a split's bad fraction exceeds ``max_bad_fraction`` the run stops
with a PipelineDataError naming the split, the reasons and the count.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components.artifacts import LABEL_STATS_KEY, LabelStatistics
from components.errors import PipelineDataError
from components.label_statistics import CountAndSample, LabelStatsComponent, LabelStatsExecutor
from models.config import RegressionConfig
from models.density import derive_regression_stats
from models.dotted import from_dict
from models.tabular import COLUMN_TYPES, model_columns, target_problem

_TOTAL = "rows"


def _scalar(feature, kind: str):
    """The single value of a tf.train.Feature, or None when the list is empty (an empty CSV cell)."""
    values = {"float": feature.float_list.value, "int": feature.int64_list.value, "bytes": feature.bytes_list.value}[kind]
    return values[0] if len(values) else None


class _CheckRow(beam.DoFn):
    """Emits ('bin', k) for a good row, ('problem', (reason, locator)) for a bad one, ('rows', 1) for
    every row, and ('missing', column) per missing or non-finite feature value."""

    def __init__(self, target: str, feature_columns, bin_width: float, max_target: float, with_features: bool):
        self._target, self._columns, self._width, self._max = target, list(feature_columns), bin_width, max_target
        self._with_features = with_features

    def process(self, record):
        feats = tf.train.Example.FromString(record).features.feature
        yield _TOTAL, 1
        value = _scalar(feats[self._target], COLUMN_TYPES[self._target]) if self._target in feats else None
        problem = target_problem(None if value is None else float(value), self._max)
        if problem:
            ts = _scalar(feats["trip_start_timestamp"], "int") if "trip_start_timestamp" in feats else None
            yield "problem", (problem, f"trip_start_timestamp {ts}, {self._target} {value}")
        else:
            yield "bin", int(math.floor(float(value) / self._width))
        if self._with_features:
            for c in self._columns:
                v = _scalar(feats[c], COLUMN_TYPES[c]) if c in feats else None
                if v is None or v == b"" or (isinstance(v, float) and not math.isfinite(v)):
                    yield "missing", c


def check_split(pipeline, file_pattern: str, cfg: RegressionConfig, tag: str, with_features: bool):
    """Beam sub-graph of one split: PCollections of (bin, n), (reason, (n, samples)), (column, n), (rows, n)."""
    records = pipeline | f"Read{tag}" >> beam.io.ReadFromTFRecord(file_pattern, coder=beam.coders.BytesCoder())
    rows = records | f"Check{tag}" >> beam.ParDo(
        _CheckRow(cfg.target, model_columns(cfg), cfg.bin_width, cfg.max_target, with_features))
    by_kind = rows | f"Split{tag}" >> beam.Partition(lambda kv, _: ("bin", "problem", "missing", _TOTAL).index(kv[0]), 4)
    histogram = (by_kind[0] | f"Bin{tag}" >> beam.Map(lambda kv: (kv[1], 1))
                 | f"Histogram{tag}" >> beam.CombinePerKey(sum))
    problems = (by_kind[1] | f"Reason{tag}" >> beam.Map(lambda kv: kv[1])
                | f"CountProblems{tag}" >> beam.CombinePerKey(CountAndSample()))
    missing = (by_kind[2] | f"Column{tag}" >> beam.Map(lambda kv: (kv[1], 1))
               | f"CountMissing{tag}" >> beam.CombinePerKey(sum))
    total = by_kind[3] | f"CountRows{tag}" >> beam.CombinePerKey(sum)
    return {"histogram": histogram, "problems": problems, "missing": missing, "rows": total}


class RegressionLabelStatsGenSpec(types.ComponentSpec):
    PARAMETERS = {
        "regression": ExecutionParameter(type=str),  # JSON of RegressionConfig
        "splits": ExecutionParameter(type=str),  # JSON list; the first is the training split
    }
    INPUTS = {"examples": ChannelParameter(type=standard_artifacts.Examples)}
    OUTPUTS = {LABEL_STATS_KEY: ChannelParameter(type=LabelStatistics)}


class Executor(LabelStatsExecutor):
    def tables(self, pipeline, input_dict, exec_properties):
        cfg = from_dict(RegressionConfig, json.loads(exec_properties["regression"]), "regression.")
        tables = {}
        for i, split in enumerate(json.loads(exec_properties["splits"])):
            pattern = os.path.join(artifact_utils.get_split_uri(input_dict["examples"], split), "*")
            tables.update({f"{split}_{name}": rows for name, rows in check_split(pipeline, pattern, cfg, split,
                                                                                  with_features=i == 0).items()})
        return tables

    def derive(self, read_table, input_dict, exec_properties):
        cfg = from_dict(RegressionConfig, json.loads(exec_properties["regression"]), "regression.")
        splits = json.loads(exec_properties["splits"])

        def read(split, name):
            return read_table(f"{split}_{name}")

        bad_rows, rows = {}, {}
        for split in splits:
            rows[split] = sum(n for _, n in read(split, "rows"))
            bad_rows[split] = {reason: {"count": n, "samples": samples} for reason, (n, samples) in read(split, "problems")}
            bad = sum(v["count"] for v in bad_rows[split].values())
            if rows[split] == 0:
                raise PipelineDataError(f"examples (Split-{split})", "the split is empty")
            if bad / rows[split] > cfg.max_bad_fraction:
                detail = "; ".join(f"{r}: {v['count']} (e.g. {v['samples'][0]})" for r, v in sorted(bad_rows[split].items()))
                raise PipelineDataError(
                    f"examples (Split-{split})",
                    f"{bad} of {rows[split]} rows have a bad target ({detail}), more than "
                    f"regression.max_bad_fraction={cfg.max_bad_fraction}", bad)
        train = splits[0]
        stats = derive_regression_stats(dict(read(train, "histogram")), cfg.bin_width, cfg.num_bins, cfg.reweight, cfg.lds,
                                        cfg.lds_kernel, cfg.lds_ks, cfg.lds_sigma, cfg.many_shot_above, cfg.few_shot_below)
        stats.update({
            "target": cfg.target,
            "max_target": cfg.max_target,
            "rows": rows,
            "bad_rows": bad_rows,
            "dropped_rows": {s: sum(v["count"] for v in bad_rows[s].values()) for s in splits},
            "bad_row_policy": (f"rows whose target is missing, non-finite, negative or above {cfg.max_target:g} are dropped "
                               f"from every split and counted; more than {cfg.max_bad_fraction:.1%} of a split stops the run"),
            "missing_feature_values": {c: n for c, n in sorted(read(train, "missing"))},
            "missing_feature_policy": ("a missing or non-finite numeric value is imputed by the training mean and flagged "
                                       "by an indicator input; a missing category maps to the out-of-vocabulary index"),
        })
        return stats


class RegressionLabelStatsGen(LabelStatsComponent):
    """Beam label-density statistics of a continuous target (histogram, LDS weights, bin groups)."""

    SPEC_CLASS = RegressionLabelStatsGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples, regression: RegressionConfig, splits=("train", "eval", "test")):
        super().__init__(examples, regression=json.dumps(dataclasses.asdict(regression)), splits=json.dumps(list(splits)))

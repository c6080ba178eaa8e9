"""The LabelStatistics generator every task shares: Beam tables per split, read back, derived, ``label_stats.json``.

A spec + BaseBeamExecutor component, so pipeline-level beam_pipeline_args (runner, direct running mode) reach its
pipeline through ``_make_beam_pipeline()``. :class:`LabelStatsExecutor` is the skeleton: the task's ``tables`` (its
Beam sub-graphs, each a small PCollection of combined counts: only these leave the workers) are written as JSON lines
under the artifact's ``beam/`` folder, read back, and the task's ``derive`` turns them into the statistics (or stops
the run with a PipelineDataError on bad data) that go to ``label_stats.json``. A task's Executor supplies the two;
its component is a :class:`LabelStatsComponent` with its own spec.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import apache_beam as beam
from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor
from tfx.types import artifact_utils

from components.artifacts import LABEL_STATS_FILE, LABEL_STATS_KEY, LabelStatistics

SAMPLES = 3  # example locators kept per problem, for the message


class CountAndSample(beam.CombineFn):
    """(count, up to 3 sample locators): how many examples have a problem and which, for the message."""

    def create_accumulator(self):
        return 0, []

    def add_input(self, acc, locator):
        return acc[0] + 1, (acc[1] + [str(locator)])[:SAMPLES]

    def merge_accumulators(self, accs):
        n, samples = 0, []
        for a_n, a_s in accs:
            n, samples = n + a_n, (samples + a_s)[:SAMPLES]
        return n, samples

    def extract_output(self, acc):
        return acc


class LabelStatsExecutor(base_beam_executor.BaseBeamExecutor):
    """The skeleton; a task's Executor defines ``tables`` and ``derive``."""

    def tables(self, pipeline, input_dict, exec_properties) -> dict:
        """{table name: PCollection of JSON-serialisable rows}: the task's Beam sub-graphs on ``pipeline``."""
        raise NotImplementedError

    def derive(self, read: Callable[[str], list], input_dict, exec_properties) -> dict:
        """The statistics from the tables (``read(name)``: a table's rows, [] when it has none)."""
        raise NotImplementedError

    def Do(self, input_dict, output_dict, exec_properties):
        uri = artifact_utils.get_single_uri(output_dict[LABEL_STATS_KEY])
        out_dir = os.path.join(uri, "beam")
        with self._make_beam_pipeline() as p:
            for name, rows in self.tables(p, input_dict, exec_properties).items():
                (rows | f"Json{name}" >> beam.Map(json.dumps)
                 | f"Write{name}" >> beam.io.WriteToText(os.path.join(out_dir, name), shard_name_template=""))

        def read(name):
            path = os.path.join(out_dir, name)
            return [json.loads(line) for line in open(path)] if os.path.exists(path) else []

        stats = self.derive(read, input_dict, exec_properties)
        with open(os.path.join(uri, LABEL_STATS_FILE), "w") as f:
            json.dump(stats, f, indent=2)


class LabelStatsComponent(base_beam_component.BaseBeamComponent):
    """The component every task's label statistics are: its ``SPEC_CLASS`` (``examples`` in, ``label_stats`` out, the
    task's parameters) and ``EXECUTOR_SPEC``; the parameters are passed as keywords, already serialised."""

    def __init__(self, examples, **parameters):
        super().__init__(spec=self.SPEC_CLASS(examples=examples, label_stats=types.Channel(type=LabelStatistics),
                                              **parameters))

"""The evaluator every task shares: score the candidate and the last blessed model, gate, write a ModelBlessing.

Why not TFMA's Evaluator: the gate reads groups (the many/medium/few-shot classes or target bins) that come from the
LabelStatistics artifact at run time, and TFMA 0.52 treats a Keras 3 SavedModel only as tf_generic. Like TFX's
Evaluator, it is one component whose metrics differ by task: :class:`EvaluatorExecutor` is the skeleton (read the
label statistics, score the candidate on the gate's split, score the last blessed model from the Resolver on the
same split so "no worse than the last blessed model" compares like with like, :func:`components.gate.decide`, score
the report split, write the evaluation JSON and the blessing); a task's Executor supplies its metric function
(``score``), its gate (``gate_type``, components/gate.py) and, where it has them, a refusal of an incomparable
baseline and a paired comparison. The ModelBlessing carries TFMA's custom properties (``blessed``,
``current_model_id``), so the standard Pusher and LatestBlessedModelStrategy honour it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from tfx import types
from tfx.dsl.components.base import base_component, base_executor
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import io_utils

from components.artifacts import EVALUATION_FILE, LABEL_STATS_FILE, LABEL_STATS_KEY, UNLABELED_EXAMPLES_KEY, LabelStatistics
from components.gate import Gate, decide


class EvaluatorSpec(types.ComponentSpec):
    PARAMETERS = {
        "thresholds": ExecutionParameter(type=str),  # JSON of the task's thresholds (components/gate.py)
        "eval_split": ExecutionParameter(type=str),
        "report_split": ExecutionParameter(type=str, optional=True),
        "holdout": ExecutionParameter(type=int, optional=True),  # 1: judge only the half calibration did not fit on
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "model": ChannelParameter(type=standard_artifacts.Model),
        "baseline_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
        LABEL_STATS_KEY: ChannelParameter(type=LabelStatistics),
        # the pool (its ``unlabeled`` split), for the classification shift report's pool estimate
        UNLABELED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


def write_evaluation_and_blessing(output_dict, result: dict, model, baselines) -> None:
    """The ModelEvaluation JSON and a ModelBlessing with TFMA's custom properties (``blessed``,
    ``current_model_id``), which the Pusher and LatestBlessedModelStrategy read; ``result`` holds ``blessed`` and
    ``checks``."""
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


class EvaluatorExecutor(base_executor.BaseExecutor):
    """The skeleton; a task's Executor sets ``task`` and ``gate_type`` and defines ``score``."""

    task: str  # written into the evaluation JSON
    gate_type: type[Gate]

    def score(self, model_uri: str, examples, split: str, stats: dict, holdout: bool) -> tuple[dict, object]:
        """(metrics, predictions) of the model on the split; ``predictions``: what :meth:`compare` pairs."""
        raise NotImplementedError

    def refuse_baseline(self, baseline_uri: str, stats: dict) -> str | None:
        """Why the last blessed model cannot be the baseline, or None when it can."""
        return None

    def compare(self, split: str, candidate, baseline, stats: dict) -> dict | None:
        """The candidate against the last blessed model example by example (their ``score`` predictions), or None."""
        return None

    def gate(self, stats: dict, comparison: dict | None) -> Gate:
        return self.gate_type()

    def shift_report(self, input_dict, model, baseline_uri: str | None, stats: dict, thresholds, eval_split: str,
                     holdout: bool) -> dict | None:
        """How far the newest data moved from what the last blessed model (``baseline_uri``, None: none comparable)
        was trained on, or None where the task has no such report."""
        return None

    def examples_note(self, split: str, holdout: bool) -> str:
        """Which examples of ``split`` the gate judged."""
        return f"all of {split}"

    def Do(self, input_dict, output_dict, exec_properties):
        thresholds = self.gate_type.thresholds(**json.loads(exec_properties["thresholds"]))
        examples = input_dict["examples"]
        model = artifact_utils.get_single_instance(input_dict["model"])
        with open(os.path.join(artifact_utils.get_single_uri(input_dict[LABEL_STATS_KEY]), LABEL_STATS_FILE)) as f:
            stats = json.load(f)
        eval_split, report_split = exec_properties["eval_split"], exec_properties.get("report_split")
        holdout = bool(exec_properties.get("holdout"))
        candidate, predictions = self.score(model.uri, examples, eval_split, stats, holdout)
        baselines = input_dict.get("baseline_model") or []
        refused = self.refuse_baseline(baselines[0].uri, stats) if baselines else None
        baseline = comparison = None
        if baselines and not refused:  # the last blessed model on the same examples: like with like
            baseline, base_predictions = self.score(baselines[0].uri, examples, eval_split, stats, holdout)
            comparison = self.compare(eval_split, predictions, base_predictions, stats)
        blessed, checks = decide(self.gate(stats, comparison), candidate, baseline, thresholds, refused)
        result = {
            "task": self.task,
            "eval_split": eval_split,
            "eval_examples": self.examples_note(eval_split, holdout),
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
            result["report"] = self.score(model.uri, examples, report_split, stats, False)[0]
        result["shift"] = self.shift_report(input_dict, model, result["baseline_model_uri"], stats, thresholds,
                                            eval_split, holdout)
        write_evaluation_and_blessing(output_dict, result, model, baselines)


class GateEvaluator(base_component.BaseComponent):
    """The component every task's evaluator is; a task's sets ``EXECUTOR_SPEC`` and passes its own parameters of
    :class:`EvaluatorSpec` (e.g. ``holdout``) as keywords."""

    SPEC_CLASS = EvaluatorSpec

    def __init__(self, examples, model, label_stats, thresholds, baseline_model=None, eval_split: str = "eval",
                 report_split: str | None = "test", unlabeled_examples=None, **parameters):
        spec = EvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model, label_stats=label_stats,
            unlabeled_examples=unlabeled_examples,
            thresholds=json.dumps(dataclasses.asdict(thresholds)), eval_split=eval_split, report_split=report_split,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing), **parameters)
        super().__init__(spec=spec)

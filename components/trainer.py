"""LongTailTrainer: TFX's Trainer (GenericExecutor, run_fn by dotted path) plus one input, the
LabelStatsGen artifact. The component takes a models.job.TrainerJob (serialized into ``custom_config``); the
executor adds the input artifacts' paths to it (``TrainerJob.with_inputs``) before run_fn reads it:

- ``label_stats``: the JSON path (``label_stats_path``), so the Trainer reads class counts and priors from the
  data, never from a hard-coded list;
- optional ``unlabeled_examples`` (the validated pool, for semi-supervised training): its ``unlabeled`` split's
  file pattern (``unlabeled_files``);
- optional ``pseudo_labeled_examples`` and ``pseudo_label_stats`` (the PseudoLabeler's outputs, for
  semi=pseudo_label|auto): their ``train`` split's file pattern and the statistics JSON (``pseudo_labeled_files``,
  ``pseudo_label_stats_path``);
- optional ``init_model`` (semi.pseudo_label.init=base: the PseudoLabelBaseTrainer's Model): its serving model
  dir, which holds the base classifier's every weight (``init_model``);
- optional ``warm_start_model`` (train.warm_start=auto on data read as spans: the latest blessed Model, from the same
  resolver the gate's baseline comes from): its serving model dir (``warm_start_model``; models/retrain.py decides).

PseudoLabelBaseTrainer: the same Trainer, as its own class so MLMD records the base model's executions
apart from the final Trainer's (the base model labels the pool).

SSPPretrainer: the self-supervised pre-training Trainer whose Model artifact is LongTailTrainer's base_model.

Both build on JobTrainer (the spec from a TrainerJob) and JobExecutor (the job plus ``input_paths``); a Trainer for
another stage is its spec's extra inputs and the paths its executor adds."""

from __future__ import annotations

import os

from tfx import types
from tfx.components.trainer import component as trainer_component
from tfx.components.trainer import executor as trainer_executor
from tfx.dsl.components.base import executor_spec
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils, path_utils

from components.artifacts import (
    INIT_MODEL_KEY,
    LABEL_STATS_FILE,
    LABEL_STATS_KEY,
    PSEUDO_LABEL_STATS_FILE,
    PSEUDO_LABEL_STATS_KEY,
    PSEUDO_LABELED_EXAMPLES_KEY,
    UNLABELED_EXAMPLES_KEY,
    WARM_START_MODEL_KEY,
    LabelStatistics,
    PseudoLabelStatistics,
)
from components.pseudo_labeler import OUTPUT_SPLIT as PSEUDO_LABEL_SPLIT
from models import job as trainer_job
from models.job import TrainerJob


class LongTailTrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {**standard_component_specs.TrainerSpec.INPUTS,
              LABEL_STATS_KEY: ChannelParameter(type=LabelStatistics),
              UNLABELED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
              PSEUDO_LABELED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
              PSEUDO_LABEL_STATS_KEY: ChannelParameter(type=PseudoLabelStatistics, optional=True),
              INIT_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
              WARM_START_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True)}


class JobExecutor(trainer_executor.GenericExecutor):
    """TFX's GenericExecutor that adds the paths of its input artifacts (``input_paths``) to the job run_fn reads."""

    def input_paths(self, input_dict) -> dict:
        """{models.job key: path or file patterns} of the wired input artifacts."""
        raise NotImplementedError

    def _GetFnArgs(self, input_dict, output_dict, exec_properties):
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        fn_args.custom_config = TrainerJob.from_custom_config(fn_args.custom_config).with_inputs(
            **self.input_paths(input_dict)).to_custom_config()
        return fn_args


class JobTrainer(trainer_component.Trainer):
    """TFX's Trainer on ``SPEC_CLASS`` (TrainerSpec plus the extra inputs, given as keywords) with a TrainerJob."""

    def __init__(self, examples, run_fn: str, job: TrainerJob, train_split: str = "train", eval_split: str = "eval",
                 **inputs):
        spec = self.SPEC_CLASS(
            examples=examples, train_args=trainer_pb2.TrainArgs(splits=[train_split]),
            eval_args=trainer_pb2.EvalArgs(splits=[eval_split]), run_fn=run_fn,
            custom_config=json_utils.dumps(job.to_custom_config()), model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun), **inputs)
        # Skip Trainer.__init__ (it builds its own spec); BaseComponent takes ours.
        super(trainer_component.Trainer, self).__init__(spec=spec)


class Executor(JobExecutor):
    def input_paths(self, input_dict):
        stats_uri = artifact_utils.get_single_uri(input_dict[LABEL_STATS_KEY])
        paths = {trainer_job.LABEL_STATS_PATH_KEY: os.path.join(stats_uri, LABEL_STATS_FILE)}
        if input_dict.get(UNLABELED_EXAMPLES_KEY):
            pool_uri = artifact_utils.get_split_uri(input_dict[UNLABELED_EXAMPLES_KEY], "unlabeled")
            paths[trainer_job.UNLABELED_FILES_KEY] = [os.path.join(pool_uri, "*")]
        if input_dict.get(PSEUDO_LABELED_EXAMPLES_KEY):
            uri = artifact_utils.get_split_uri(input_dict[PSEUDO_LABELED_EXAMPLES_KEY], PSEUDO_LABEL_SPLIT)
            paths[trainer_job.PSEUDO_LABELED_FILES_KEY] = [os.path.join(uri, "*")]
        if input_dict.get(PSEUDO_LABEL_STATS_KEY):
            uri = artifact_utils.get_single_uri(input_dict[PSEUDO_LABEL_STATS_KEY])
            paths[trainer_job.PSEUDO_LABEL_STATS_PATH_KEY] = os.path.join(uri, PSEUDO_LABEL_STATS_FILE)
        for key in (INIT_MODEL_KEY, WARM_START_MODEL_KEY):  # the channel fills the job's path of the same key
            if input_dict.get(key):
                model = input_dict[key][0]
                paths[key] = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        return paths


class LongTailTrainer(JobTrainer):
    SPEC_CLASS = LongTailTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples, label_stats, run_fn: str, job: TrainerJob, schema=None, base_model=None,
                 train_split: str = "train", eval_split: str = "eval", unlabeled_examples=None,
                 pseudo_labeled_examples=None, pseudo_label_stats=None, init_model=None, warm_start_model=None):
        super().__init__(examples, run_fn, job, train_split, eval_split, label_stats=label_stats, schema=schema,
                         base_model=base_model, unlabeled_examples=unlabeled_examples,
                         pseudo_labeled_examples=pseudo_labeled_examples, pseudo_label_stats=pseudo_label_stats,
                         init_model=init_model, warm_start_model=warm_start_model)


class PseudoLabelBaseTrainer(LongTailTrainer):
    """The base model of pseudo-label training (supervised, on the labeled set); the PseudoLabeler reads its model."""


class SSPPretrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {**standard_component_specs.TrainerSpec.INPUTS,
              UNLABELED_EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True)}


class PretrainExecutor(JobExecutor):
    """Adds the unlabeled split's files (``unlabeled_files``, when wired) to the job run_fn reads."""

    def input_paths(self, input_dict):
        unlabeled = input_dict.get(UNLABELED_EXAMPLES_KEY) or []
        return {trainer_job.UNLABELED_FILES_KEY:
                [os.path.join(artifact_utils.get_split_uri(unlabeled, "unlabeled"), "*")] if unlabeled else []}


class SSPPretrainer(JobTrainer):
    """The self-supervised pre-training Trainer (run_fn models.ssp.run_fn): reads the labeled examples'
    images (never their labels, except the eval split's for the linear probe) and, when wired, the
    unlabeled ones; its Model artifact holds the backbone weights that LongTailTrainer takes as
    base_model. Its own class, so MLMD records its executions apart from the supervised Trainer's."""

    SPEC_CLASS = SSPPretrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(PretrainExecutor)

    def __init__(self, examples, run_fn: str, job: TrainerJob, unlabeled_examples=None, train_split: str = "train",
                 eval_split: str = "eval"):
        super().__init__(examples, run_fn, job, train_split, eval_split, unlabeled_examples=unlabeled_examples)

"""The tasks: the one registry every runner (local, Kubeflow) and command resolves ``cfg.task`` through.

A Task owns what differs between image classification and imbalanced regression: which settings apply
(a setting that does not is an error naming it), where the data is, the pipeline wiring, the gate
thresholds, the pipeline and served-model names, and the metrics.json / report.md / console writer.
Runners call the same methods and never test the task's name.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import sys

from components.data import storage
from components.data.cache import ensure_prepared, spec_from_data_config
from components.data.longtail import SplitSpec
from components.data.own_data import describe, image_fit_of, is_own_data, plan_own_data
from components.data.prepare import Manifest, load_manifest
from components.errors import PipelineDataError
from models.backbones import AUTO_MAX_SIDE, auto_backbone
from models.dotted import replace_path
from pipeline import regression_report, report
from pipeline.configs import PipelineConfig, changed_paths
from pipeline.outputs import BASE_TRAINER, PRETRAINER, TRAINER
from pipeline.pipeline import create_pipeline, create_regression_pipeline, default_csv_dir

# Settings every task reads: naming, where outputs go, the Beam settings, caching, the Kubeflow package's requests.
COMMON = ("name", "preset", "task", "model_name", "runs_root", "serving_root", "beam", "enable_cache", "kubeflow")


@dataclasses.dataclass(frozen=True)
class TaskInputs:
    """Where a run's data is (as the runner sees it) and, for a prepared image folder, its manifest."""

    location: str
    manifest: dict | None = None

    def examples(self) -> int | None:
        """How many examples the run ingests (every split of the manifest), None without a manifest."""
        if not self.manifest:
            return None
        return sum(int(s.get("num_examples") or 0) for s in (self.manifest.get("splits") or {}).values())


def resolve_beam(cfg: PipelineConfig, inputs: TaskInputs) -> tuple[PipelineConfig, str | None]:
    """The config with beam.direct_running_mode=auto settled for the run's input (configs.BeamConfig.resolved_for),
    and the reason (None: nothing settled)."""
    beam, reason = cfg.beam.resolved_for(inputs.examples())
    return dataclasses.replace(cfg, beam=beam), reason


class Task(abc.ABC):
    name: str

    # ---- settings
    @abc.abstractmethod
    def reads(self, cfg: PipelineConfig) -> tuple[str, ...]:
        """The settings (dotted paths or section prefixes) this task, with cfg's training mode, reads."""

    def check_settings(self, cfg: PipelineConfig) -> None:
        """Every setting the user changed from the preset must be one the run reads: nothing is silently ignored."""
        reads = self.reads(cfg)
        unused = [p for p in changed_paths(cfg) if not any(p == r or p.startswith(r + ".") for r in reads)]
        if unused:
            raise ValueError(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to task={self.name}"
                             f"{self.mode_note(cfg)}: this run reads {', '.join(sorted(reads))}")

    def mode_note(self, cfg: PipelineConfig) -> str:
        return ""

    # ---- data and names
    @abc.abstractmethod
    def inputs(self, cfg: PipelineConfig, location: str | None = None, manifest: dict | None = None) -> TaskInputs:
        """The run's data: ``location`` as given (the cluster's path for Kubeflow), else the configured one;
        ``manifest``: a prepared folder's manifest read elsewhere (compile-kfp --manifest, for a location this host
        cannot read)."""

    @abc.abstractmethod
    def names(self, cfg: PipelineConfig) -> tuple[str, str]:
        """(pipeline name, served model name)."""

    @abc.abstractmethod
    def gate_thresholds(self, cfg: PipelineConfig):
        """The gate's thresholds section for this task (components/gate.py)."""

    # ---- wiring
    @abc.abstractmethod
    def create_pipeline(self, cfg: PipelineConfig, inputs: TaskInputs, pipeline_root: str, metadata_path: str | None,
                        serving_dir: str, beam_args: list[str]):
        """The TFX pipeline (pipeline/pipeline.py)."""

    # ---- outputs
    @abc.abstractmethod
    def timings(self, results: dict, pipeline_seconds: float) -> dict:
        """Seconds by stage, from the run's MLMD results (cached stages count 0)."""

    @abc.abstractmethod
    def build_metrics(self, cfg: PipelineConfig, inputs: TaskInputs, results: dict, timings: dict) -> dict:
        """metrics.json."""

    @abc.abstractmethod
    def write_report(self, metrics: dict, out_dir: str) -> None:
        """metrics.json, report.md and the plots in ``out_dir``."""

    @abc.abstractmethod
    def console_table(self, metrics: dict) -> str:
        """The summary the CLI prints before the output folder."""


def _seconds_if_run(results: dict, execution: str, block: str, key: str) -> float:
    """A stage's seconds when it ran in this run; 0 when it was cached or absent."""
    if results["executions"].get(execution) != "COMPLETE":
        return 0.0
    return float((results.get(block) or {}).get(key) or 0.0)


class ClassificationTask(Task):
    """Images (a prepared long-tailed folder), per-class gate; the training mode picks the semi-supervised path."""

    name = "classification"

    def reads(self, cfg):
        mode = cfg.semi.mode
        reads = [*COMMON, "data", "stats", "train", "gate", "post_hoc_logit_adjust_tau", "calibration", "semi.method",
                 "pretrain.method", *mode.settings]
        if cfg.pretrain.method != "none" or (mode.inline_ssp and cfg.semi.planner.ssp != "none"):
            reads.append("pretrain")
        return tuple(reads)

    def mode_note(self, cfg):
        mode = cfg.semi.mode
        ssp = "" if cfg.pretrain.method != "none" else ", pretrain.method=none"
        return f" with semi.method={mode.name}{ssp}"

    def inputs(self, cfg, location=None, manifest=None):
        if ingests_own_data(cfg):  # the pipeline ingests the user's source itself (OwnDataExampleGen), every run
            kind, _, root = cfg.data.source.partition(":")
            source = f"{kind}:{location or os.path.abspath(root)}"
            inputs = TaskInputs(source.partition(":")[2], own_data_manifest(source, split_spec(cfg), cfg.data))
        elif location:
            inputs = TaskInputs(location, manifest if manifest is not None else load_manifest(location))
        else:
            data_dir = ensure_data(cfg)
            inputs = TaskInputs(data_dir, load_manifest(data_dir))
        inputs.manifest["backbone"] = backbone_choice(cfg, inputs.manifest["image_shape"])
        return inputs

    def names(self, cfg):
        return cfg.name, cfg.model_name

    def gate_thresholds(self, cfg):
        return cfg.gate

    def create_pipeline(self, cfg, inputs, pipeline_root, metadata_path, serving_dir, beam_args):
        cfg = with_backbone(cfg, inputs.manifest)
        if inputs.manifest["splits"]["unlabeled"]["num_examples"] == 0:
            print("[run] the unlabeled pool is empty: running supervised-only (no unlabeled branch)", file=sys.stderr)
        return create_pipeline(cfg, inputs.location, inputs.manifest, pipeline_root, metadata_path, serving_dir,
                               beam_args, own_data_spec=split_spec(cfg) if ingests_own_data(cfg) else None)

    def timings(self, results, pipeline_seconds):
        trained_now = results["executions"].get(TRAINER) == "COMPLETE"
        pretrained_now = results["executions"].get(PRETRAINER) == "COMPLETE"
        t = {"pipeline_seconds": pipeline_seconds,
             "train_seconds": _seconds_if_run(results, TRAINER, "training", "train_seconds"),
             "train_cached": not trained_now,
             "pretrain_seconds": _seconds_if_run(results, PRETRAINER, "ssp", "pretrain_seconds"),
             "pretrain_cached": PRETRAINER in results["executions"] and not pretrained_now,
             "base_train_seconds": _seconds_if_run(results, BASE_TRAINER, "base_training", "train_seconds")}
        t["other_seconds"] = pipeline_seconds - t["train_seconds"] - t["pretrain_seconds"] - t["base_train_seconds"]
        return t

    def build_metrics(self, cfg, inputs, results, timings):
        return report.build_metrics(dataclasses.asdict(with_backbone(cfg, inputs.manifest)), cfg.semi.mode,
                                    inputs.manifest, inputs.location, results, timings)

    def write_report(self, metrics, out_dir):
        report.write_report(metrics, out_dir)

    def console_table(self, metrics):
        return report.console_table(metrics)


# The schedule settings the regression Trainer takes from train.*; its optimizer is Adam at
# regression.adam_learning_rate (the paper's), so train.learning_rate and the rest do not apply. Beyond one process
# (models/regression.py) it takes the strategy, the batch and learning-rate scaling (of the Adam rate) and the
# precision; its rows are always sharded by examples across workers, so train.data_sharding does not apply.
REGRESSION_TRAIN = ("train.epochs", "train.batch_size", "train.seed", "train.max_steps_per_epoch", "train.distribute",
                    "train.local_workers", "train.batch_scaling", "train.lr_scaling", "train.mixed_precision")


class RegressionTask(Task):
    """A CSV folder (default: the Chicago taxi trips in the tfx package), LDS / FDS, MAE gate by shot region."""

    name = "regression"

    def reads(self, cfg):
        return (*COMMON, *REGRESSION_TRAIN, "regression", "regression_gate")

    def inputs(self, cfg, location=None, manifest=None):
        return TaskInputs(location or regression_csv_dir(cfg))

    def names(self, cfg):
        """Per target, so the last blessed model is always one of the same task and target."""
        return f"{cfg.name}-{cfg.regression.target}", f"{cfg.model_name}-{cfg.regression.target}"

    def gate_thresholds(self, cfg):
        return cfg.regression_gate

    def create_pipeline(self, cfg, inputs, pipeline_root, metadata_path, serving_dir, beam_args):
        return create_regression_pipeline(cfg, inputs.location, pipeline_root, metadata_path, serving_dir, beam_args,
                                          pipeline_name=self.names(cfg)[0])

    def timings(self, results, pipeline_seconds):
        train_seconds = _seconds_if_run(results, TRAINER, "training", "train_seconds")
        return {"pipeline_seconds": pipeline_seconds, "train_seconds": train_seconds,
                "train_cached": results["executions"].get(TRAINER) != "COMPLETE",
                "other_seconds": pipeline_seconds - train_seconds}

    def build_metrics(self, cfg, inputs, results, timings):
        return regression_report.build_metrics(dataclasses.asdict(cfg), inputs.location, results, timings)

    def write_report(self, metrics, out_dir):
        regression_report.write_report(metrics, out_dir)

    def console_table(self, metrics):
        return regression_report.console_table(metrics)


TASKS: dict[str, Task] = {t.name: t for t in (ClassificationTask(), RegressionTask())}


def for_config(cfg: PipelineConfig) -> Task:
    """The config's task, with its settings checked (an unknown task or a setting that does not apply raises)."""
    task = TASKS.get(cfg.task)
    if task is None:
        raise ValueError(f"unknown task {cfg.task!r}; choose one of {sorted(TASKS)}")
    task.check_settings(cfg)
    return task


# --------------------------------------------------------------------------------------- the backbone

# train.backbone=auto: resnet8 up to models.backbones.AUTO_MAX_SIDE (40 px) a side; above it resnet20 with a downsampling
# stem (on the photo folder at 56 px, crop augmentation, one seed: 0.936 against resnet8/s2's 0.883,
# bench/results/photo_folder.md)
AUTO_BACKBONE_BASE, AUTO_BACKBONE_LARGE = "resnet8", "resnet20"


def backbone_choice(cfg: PipelineConfig, image_shape) -> dict:
    """{setting, name, reason}: ``train.backbone`` as set, or, for ``auto``, models.backbones.auto_backbone's pick for
    the run's image size (components/data/image_survey.py chose that for a user's folder)."""
    setting = cfg.train.backbone
    if setting != "auto":
        return {"setting": setting, "name": setting, "reason": f"{setting}: train.backbone"}
    large = max(int(image_shape[0]), int(image_shape[1])) > AUTO_MAX_SIDE
    name, reason = auto_backbone(image_shape, AUTO_BACKBONE_LARGE if large else AUTO_BACKBONE_BASE)
    if large:
        reason += f"; {AUTO_BACKBONE_LARGE}, not {AUTO_BACKBONE_BASE}, for images above {AUTO_MAX_SIDE} px"
    return {"setting": setting, "name": name, "reason": reason}


def augment_choice(cfg: PipelineConfig, image_shape) -> str:
    """train.augment as the run applies it: an ``auto`` left by pipeline/configs.py (a source not known to be
    mirror-symmetric) -> "crop,color" for colour images (SimCLR's colour distortion: a photo's class does not depend
    on its white balance), "crop" for gray ones."""
    if cfg.train.augment != "auto":
        return cfg.train.augment
    return "crop,color" if int(image_shape[-1]) == 3 else "crop"


def with_backbone(cfg: PipelineConfig, manifest: dict) -> PipelineConfig:
    """``cfg`` with train.backbone resolved (:func:`backbone_choice`, recorded in the manifest by ``inputs``) and
    train.augment (:func:`augment_choice`)."""
    choice = manifest.get("backbone") or backbone_choice(cfg, manifest["image_shape"])
    cfg = replace_path(cfg, "train.backbone", choice["name"])
    return replace_path(cfg, "train.augment", augment_choice(cfg, manifest["image_shape"]))


# --------------------------------------------------------------------------------------- data locations


def split_spec(cfg: PipelineConfig) -> SplitSpec:
    return spec_from_data_config(cfg.data)


def image_settings(data) -> tuple:
    """(data.image_size, data.channels, data.image_fit) of a run's data.* settings: the one shape a folder's or
    TFRecords' images are fitted to, by prepare-data and by OwnDataExampleGen."""
    return data.image_size, data.channels, data.image_fit


def ingests_own_data(cfg: PipelineConfig) -> bool:
    """A user's folder:/tfrecord: source goes through OwnDataExampleGen; the pool relevance knob (MNIST digits
    mixed into the pool, an evaluation device) and an explicit data.data_dir keep the prepare-data path."""
    return is_own_data(cfg.data.source) and not cfg.data.data_dir and cfg.data.pool_relevance == 1.0


def own_data_manifest(source: str, spec: SplitSpec, data=None) -> dict:
    """What the wiring needs (classes, the images' fit, planned split sizes), from the listing and the images'
    headers; ``data``: the data.* settings (image_size, channels, image_fit; None: all auto)."""
    plan = plan_own_data(source, spec, *((data.spans,) if data else ()))
    _, record = image_fit_of(plan, *(image_settings(data) if data else ()))
    record["bad_files"] = data.bad_files if data else "error"
    return describe(plan, spec, record)


def ensure_data(cfg: PipelineConfig) -> str:
    """The prepared data folder; prepared now when missing."""
    if cfg.data.data_dir:
        Manifest.load(cfg.data.data_dir)  # raises a named error if it is not a prepared dataset
        return cfg.data.data_dir if storage.is_uri(cfg.data.data_dir) else os.path.abspath(cfg.data.data_dir)
    return os.path.abspath(ensure_prepared(cfg.data.source, split_spec(cfg), cfg.data.source_dir,
                                           image_settings=image_settings(cfg.data)))


def regression_csv_dir(cfg: PipelineConfig) -> str:
    """The folder CsvExampleGen reads: ``regression.csv_dir`` or the taxi CSV of the tfx package."""
    csv_dir = os.path.abspath(cfg.regression.csv_dir or default_csv_dir())
    if not os.path.isdir(csv_dir) or not any(f.endswith(".csv") for f in os.listdir(csv_dir)):
        raise PipelineDataError(f"regression.csv_dir {csv_dir}", "no .csv file there (CsvExampleGen reads every file of "
                                "the folder; the default is tfx/examples/chicago_taxi_pipeline/data/simple in the tfx "
                                "package)", path=csv_dir)
    return csv_dir

"""Every knob of the pipeline in one typed object, a preset (pipeline/presets.py: smoke, default, ssp, paper,
regression-smoke, regression) and the overrides on top of it.

``--set KEY=VALUE`` overrides a field by dotted path (``train.epochs=5``, ``semi.daso.warmup_steps=10``,
``gate.min_per_class_recall=0.5``, ``data.rho=10``). A bare name is an explicit alias (:data:`ALIASES`: the
names README and earlier releases used, ``epochs=5``, ``loss=ce``, ``semi=daso``, ``ssp=rotation``,
``semi_threshold=0.9``) or a field name that exists in exactly one place (``backbone``, ``fds``); the
older dotted paths (``semi_supervised.semi``, ``pretrain.ssp_epochs``) are aliases too. Whether a setting
applies to the chosen task and training mode is the task's check (pipeline/tasks.py).

The sections are plain dataclasses (models/config.py, components/gate.py): building, checking and printing
a configuration imports neither Keras nor TensorFlow. The same object drives local runs and Kubeflow
compilation, and is written whole into metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import typing

from components.data.image_survey import BAD_FILE_POLICIES
from components.data.image_survey import check_settings as check_image_settings
from components.data.own_data import is_own_data
from components.data.prepare import Manifest
from components.data.spans import DEFAULT_SELECTION as DEFAULT_SPANS
from components.data.spans import parse_selection as parse_spans
from components.gate import GateThresholds, RegressionGateThresholds
from models import distribute, modes
from models.config import CalibrationConfig, RegressionConfig, SemiConfig, SSPConfig, TrainConfig, augment_ops, test_time_flip
from models.dotted import get_path, leaf_paths, parse_value, replace_path
from pipeline.presets import PRESETS


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How to prepare the data (see `python -m pipeline prepare-data --help`), or an existing folder."""

    data_dir: str | None = None  # a prepared folder; None: prepare from the settings below
    source: str = "fashion_mnist"  # fashion_mnist | folder:PATH | tfrecord:PATH | tfds:NAME (docs/data.md)
    source_dir: str | None = None  # where the source's raw files are (Fashion-MNIST's IDX folder, the TFDS data dir)
    # labeled imbalance ratio (head count / tail count) drawn from the source; None: the data's own
    rho: float | None = 100.0
    n_max: int | None = 5000  # labeled images of the head class when rho draws a long tail
    # head-to-tail class order of the drawn tail: index | shuffle | comma-separated class ids
    class_order: str = "index"
    # validation images a class, balanced; None: a fifth of every class, at most 300 a class (a user's data's default)
    val_per_class: int | None = 300
    rho_u: float = 1.0  # imbalance ratio of the unlabeled pool drawn from the source (1: balanced)
    unlabeled_size: int | None = None  # pool size cap (None: every image left over)
    # the pool's head-to-tail order: same (as the labeled set's) | reversed | comma-separated ids
    unlabeled_order: str = "same"
    pool_relevance: float = 1.0  # share of the pool kept in-domain; the rest replaced by MNIST digits (evaluation knob)
    seed: int = 0  # the draw's seed (which images go to which split)
    # a user's folder / TFRecords (components/data/image_survey.py): one size and channel count a run
    image_size: str = "auto"  # auto (measured from the images) | H,W | S
    channels: str = "auto"  # auto (3 when any image is colour) | 1 | 3
    image_fit: str = "resize"  # resize (aspect ratio not kept, Keras's default) | crop (to the aspect ratio) | pad
    bad_files: str = "error"  # error: a file that does not read or decode stops the run | skip: counted and listed
    # a folder / TFRecords root of span-N/ folders (components/data/spans.py): all | latest | window:N; the newest
    # span gives the validation (gate) and test splits
    spans: str = DEFAULT_SPANS

    def __post_init__(self):
        check_image_settings(self.image_size, self.channels, self.image_fit)
        parse_spans(self.spans)
        if self.spans != DEFAULT_SPANS and not is_own_data(self.source):
            raise ValueError(f"data.spans={self.spans} needs a folder: or tfrecord: source of span-N/ folders; "
                             f"data.source is {self.source!r}")
        if self.bad_files not in BAD_FILE_POLICIES:
            raise ValueError(f"unknown data.bad_files {self.bad_files!r}; choose one of {list(BAD_FILE_POLICIES)}")


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    # classes with at least this many labeled images are many-shot; None: scaled to the data (log-count thirds)
    many_shot_threshold: float | None = None
    # classes with fewer labeled images are few-shot (None: scaled to the data, as above)
    few_shot_threshold: float | None = None
    # beta of the effective number of samples, (1 - beta^n) / (1 - beta), in LabelStatsGen
    effective_number_beta: float = 0.9999


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    """How every Beam job of the pipeline runs (TFX's components and ours; the Kubeflow package compiles them in).

    The runner is pinned: Beam's default ("DirectRunner") first tries to download the Prism runner binary
    from the web for every job. FnApiRunner is Beam's own in-SDK runner and reads the two direct_* settings;
    PortableRunner (Flink, Spark, a local job service) takes job_endpoint / environment_*; anything else
    (Dataflow's project, region, temp_location, ...) goes in extra_args."""

    # Beam runner of every Beam job: FnApiRunner | PortableRunner | FlinkRunner | SparkRunner | DataflowRunner
    runner: str = "FnApiRunner"
    # auto | in_memory | multi_threading | multi_processing (FnApiRunner). auto: in_memory for a run's input of at most
    # IN_MEMORY_MAX_EXAMPLES examples, multi_processing above (resolved_for; measured in docs/beam.md)
    direct_running_mode: str = "auto"
    direct_num_workers: int = 2  # FnApiRunner's workers (processes or threads, per direct_running_mode)
    job_endpoint: str | None = None  # PortableRunner / FlinkRunner / SparkRunner: host:port of the job service
    environment_type: str | None = None  # DOCKER | PROCESS | EXTERNAL | LOOPBACK (portable runners)
    environment_config: str | None = None  # e.g. host:port of an external SDK worker pool
    extra_args: str = ""  # more pipeline options, shell-quoted: "--project=p --region=r --temp_location=gs://b/t"

    def __post_init__(self):
        if self.runner in DIRECT_RUNNERS and self.direct_running_mode not in DIRECT_RUNNING_MODES:
            raise ValueError(f"unknown beam.direct_running_mode {self.direct_running_mode!r}; choose one of "
                             f"{list(DIRECT_RUNNING_MODES)}")
        if self.runner == "DirectRunner":
            raise ValueError("beam.runner=DirectRunner downloads the Prism runner binary from the web at run time; "
                             "use FnApiRunner (the same in-process execution, pinned)")
        shlex.split(self.extra_args)  # a quoting error names itself here, not in the middle of a run

    def resolved_for(self, examples: int | None) -> tuple[BeamConfig, str | None]:
        """(this section with ``direct_running_mode=auto`` settled for a run's input of ``examples`` examples (None:
        unknown), the reason); the reason is None where nothing was settled. In-memory skips the worker processes'
        start-up (each imports TF and TFX: about 45 s of a default run's 60 s before training, measured); two worker
        processes win only at scale (bench/results/scale.md: 1 worker ties 2 at 40k images and trails at 160k)."""
        if self.runner not in DIRECT_RUNNERS or self.direct_running_mode != "auto":
            return self, None
        if examples is not None and examples <= IN_MEMORY_MAX_EXAMPLES:
            mode, why = "in_memory", f"{examples} input examples <= {IN_MEMORY_MAX_EXAMPLES}: no worker processes to start"
        else:
            mode = "multi_processing"
            why = (f"{examples} input examples > {IN_MEMORY_MAX_EXAMPLES}: {self.direct_num_workers} worker processes"
                   if examples is not None else "the input's size is unknown here: worker processes")
        return dataclasses.replace(self, direct_running_mode=mode), f"beam.direct_running_mode=auto -> {mode} ({why})"

    def args(self) -> list[str]:
        """The Beam pipeline arguments every component gets (pipeline-level beam_pipeline_args); ``auto`` must be
        settled first (:meth:`resolved_for`)."""
        out = [f"--runner={self.runner}"]
        if self.runner in DIRECT_RUNNERS:
            if self.direct_running_mode == "auto":
                raise ValueError("beam.direct_running_mode=auto is settled by BeamConfig.resolved_for(examples) first")
            out += [f"--direct_running_mode={self.direct_running_mode}", f"--direct_num_workers={self.direct_num_workers}"]
            # Without a dependency flag every TFX Beam executor builds an sdist of tfx to stage (tfx.utils.
            # dependency_utils: about 5 s and 50 MB left in /tmp each, 6 times a default run). FnApiRunner runs in this
            # environment and stages nothing; this flag, which it ignores, says the dependencies are provided.
            if not any(a.split("=", 1)[0] in DEPENDENCY_FLAGS for a in shlex.split(self.extra_args)):
                out.append(f"--sdk_container_image={IN_PROCESS_IMAGE}")
        for flag in ("job_endpoint", "environment_type", "environment_config"):
            if getattr(self, flag):
                out.append(f"--{flag}={getattr(self, flag)}")
        return out + shlex.split(self.extra_args)


DIRECT_RUNNERS = ("FnApiRunner",)
# the flags by which TFX (dependency_utils.make_beam_dependency_flags) sees the Beam job's dependencies as provided
DEPENDENCY_FLAGS = ("--extra_package", "--extra_packages", "--setup_file", "--requirements_file",
                    "--worker_harness_container_image", "--sdk_container_image")
IN_PROCESS_IMAGE = "none:in-process"  # never pulled: FnApiRunner's workers are this process or its subprocesses
DIRECT_RUNNING_MODES = ("auto", "in_memory", "multi_threading", "multi_processing")
IN_MEMORY_MAX_EXAMPLES = 50_000  # auto's bound: the bundled default is 25k-30k; scale.md's crossover lies above 40k


# Kubernetes quantities as kfp's PipelineTask.set_cpu_request / set_memory_request accept them
CPU_QUANTITY = re.compile(r"([0-9]*[.])?[0-9]+m?$")
MEMORY_QUANTITY = re.compile(r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki)?$")


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """What each task of the compiled Kubeflow package asks the cluster for (``compile-kfp``, ``schedule``): the
    requests land in every task's container spec (pipeline/kubeflow_runner.py). A local run reads none of it."""

    cpu_request: str = "1"  # every task's CPU request (Kubernetes quantity: 1, 0.5, 500m)
    memory_request: str = "4Gi"  # every task's memory request (4Gi, 4096Mi, 4G)
    trainer_cpu_request: str = "4"  # the Trainers' (base, final, SSP pre-training, regression) CPU request
    trainer_memory_request: str = "16Gi"  # the Trainers' memory request
    trainer_gpus: int = 0  # >0: each Trainer task requests this many GPUs (alias train.gpus)
    gpu_resource: str = "nvidia.com/gpu"  # the accelerator resource a GPU request names
    # with train.distribute=multi_worker: each Trainer step launches a TFJob of this many workers (components/tfjob.py)
    workers: int = 0
    namespace: str | None = None  # the TFJobs' namespace; None: the Trainer pod's own
    train_timeout_s: float = 86400.0  # how long a Trainer step waits for its TFJob

    def __post_init__(self):
        for key in ("cpu_request", "trainer_cpu_request"):
            if not CPU_QUANTITY.match(str(getattr(self, key))):
                raise ValueError(f"kubeflow.{key}={getattr(self, key)!r} is not a CPU quantity (1, 0.5 or 500m)")
        for key in ("memory_request", "trainer_memory_request"):
            if not MEMORY_QUANTITY.match(str(getattr(self, key))):
                raise ValueError(f"kubeflow.{key}={getattr(self, key)!r} is not a memory quantity (4Gi, 512Mi, 4G)")
        if self.trainer_gpus < 0:
            raise ValueError(f"kubeflow.trainer_gpus must be >= 0, got {self.trainer_gpus}")
        if self.workers == 1 or self.workers < 0:
            raise ValueError(f"kubeflow.workers must be 0 (no TFJob) or >= 2, got {self.workers}")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    # the pipeline's name: its MLMD history, its last blessed model, runs/_tfx/<name>/ (a user's data: its own)
    name: str = "longtail-fmnist"
    preset: str = "default"  # which preset the run started from (set by --preset, recorded in metrics.json)
    task: str = "classification"  # classification (images, per-class gate) | regression (taxi CSV, LDS / FDS)
    data: DataConfig = DataConfig()
    stats: StatsConfig = StatsConfig()
    pretrain: SSPConfig = SSPConfig()  # self-supervised pre-training (pretrain.method=none: none)
    train: TrainConfig = TrainConfig()
    semi: SemiConfig = SemiConfig()  # semi.method: the training mode (models/modes.py) and each method's settings
    gate: GateThresholds = GateThresholds()
    regression: RegressionConfig = RegressionConfig()  # task=regression only
    regression_gate: RegressionGateThresholds = RegressionGateThresholds()
    post_hoc_logit_adjust_tau: float = 0.0  # >0 adds -tau*log(prior) to the served logits
    # per-class logit offsets fitted on half the validation split, the gate judging the other half (classification)
    calibration: CalibrationConfig = CalibrationConfig()
    # the serving folder's name, <serving_root>/<model_name>/<version>/ (a user's data: its own)
    model_name: str = "longtail"
    runs_root: str = "runs"  # run outputs, pipeline root and MLMD live here
    serving_root: str = "serving"  # TF Serving layout: serving/<model_name>/<version>/
    beam: BeamConfig = BeamConfig()  # in_memory for tests: --set beam.direct_running_mode=in_memory
    kubeflow: KubeflowConfig = KubeflowConfig()  # the compiled package's resource requests
    # TFX's cache: a component whose inputs and settings are unchanged reuses its last outputs
    enable_cache: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_RENAMED = {
    "semi_supervised.semi": "semi.method",
    **{f"semi_supervised.semi_{k}": f"semi.fixmatch.{k}" for k in (
        "threshold", "mu", "lambda_u", "ema_decay", "randaugment_ops", "randaugment_factor", "cutout_max_area",
        "eval_pool_size")},
    **{f"semi_supervised.daso_{k}": f"semi.daso.{k}" for k in (
        "warmup_steps", "queue_size", "proto_temperature", "dist_temperature", "count_window", "align_weight")},
    "semi_supervised.semi_pl_weight": "semi.pseudo_label.weight",
    "semi_supervised.semi_pl_threshold": "semi.pseudo_label.threshold",
    "semi_supervised.semi_pl_top_k": "semi.pseudo_label.top_k",
    **{f"semi_supervised.plan_{k}": f"semi.planner.{k}" for k in (
        "min_relevance", "min_in_domain_examples", "min_pool_to_labeled_ratio", "max_pool_imbalance", "ssp")},
    "pretrain.ssp": "pretrain.method",
    **{f"pretrain.ssp_{k}": f"pretrain.{k}" for k in (
        "data", "epochs", "batch_size", "learning_rate", "momentum", "weight_decay", "seed", "max_steps_per_epoch")},
    **{f"pretrain.moco_{k}": f"pretrain.moco.{k}" for k in ("dim", "queue_size", "momentum", "temperature")},
}
ALIASES: dict[str, str] = {
    **_RENAMED,
    **{old.split(".", 1)[1]: new for old, new in _RENAMED.items()},
    "beam_direct_running_mode": "beam.direct_running_mode",
    "train.gpus": "kubeflow.trainer_gpus",  # the name issue #46 asked for: the Trainers' GPU request on Kubeflow
    "beam_num_workers": "beam.direct_num_workers",
    # train.* names that were unique before pretrain.* lost its prefix
    **{k: f"train.{k}" for k in ("epochs", "batch_size", "learning_rate", "momentum", "weight_decay",
                                 "max_steps_per_epoch")},
}
LEAVES: dict[str, typing.Any] = leaf_paths(PipelineConfig)


def resolve_key(key: str) -> str:
    """The dotted path of a ``--set`` key: an alias, a dotted path, or a field name found in one place only."""
    if key in ALIASES:
        return ALIASES[key]
    if key in LEAVES:
        return key
    if "." not in key:
        hits = [p for p in LEAVES if p.rsplit(".", 1)[-1] == key]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise KeyError(f"setting {key!r} is ambiguous: {sorted(hits)}; give its dotted path")
    section = key.rsplit(".", 1)[0]
    near = sorted(p for p in LEAVES if p.startswith(section + ".")) if "." in key else []
    raise KeyError(f"setting {key!r} does not exist" + (f"; {section} has {near}" if near else ""))


def apply_overrides(cfg: PipelineConfig, overrides: dict[str, typing.Any]) -> PipelineConfig:
    for key, value in overrides.items():
        path = resolve_key(key)
        v = parse_value(value, LEAVES[path]) if isinstance(value, str) else value
        try:
            cfg = replace_path(cfg, path, v)
        except (TypeError, ValueError) as e:
            raise ValueError(f"setting {key}={value!r}: {e}") from e
    return cfg


def load_config(preset: str = "default", overrides: dict[str, str] | None = None) -> PipelineConfig:
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = apply_overrides(PipelineConfig(preset=preset), PRESETS[preset])
    cfg = apply_overrides(cfg, overrides or {})
    given = {resolve_key(k) for k in [*PRESETS[preset], *(overrides or {})]}
    cfg = resolve_augment(resolve_own_data(cfg, given, {resolve_key(k) for k in overrides or {}}))
    distribute.check_config(cfg.train, modes.get(cfg.semi.method).name, cfg.task)
    check_warm_start(cfg.train.warm_start, cfg.train.warm_start_epochs)
    return cfg


def check_warm_start(setting: str, epochs: int | None) -> None:
    """train.warm_start is auto, none or an existing model folder (a remote URI is checked when the Trainer reads it);
    train.warm_start_epochs is None or >= 1 (models/retrain.py)."""
    if epochs is not None and epochs < 1:
        raise ValueError(f"train.warm_start_epochs must be >= 1 (or none), got {epochs}")
    if setting in ("auto", "none") or "://" in setting:
        return
    if not os.path.isdir(setting):
        raise ValueError(f"train.warm_start={setting}: no such model folder (auto | none | an exported model's folder, "
                         "e.g. serving/NAME/VERSION)")


OWN_DATA_DEFAULTS = {"data.rho": None, "data.val_per_class": None}


def resolve_own_data(cfg: PipelineConfig, given: set[str], set_by_user: set[str] = frozenset()) -> PipelineConfig:
    """A user's own data (data.source folder:, tfrecord:, tfds:) keeps its own class distribution (data.rho=none) and
    gets a validation split sized to it (data.val_per_class=none), unless the preset or the command line sets them:
    the Fashion-MNIST benchmark's long tail (rho 100, 300 a class) is not applied to data it was not made for.
    Its pipeline (MLMD history, last blessed model) and served model are named after it (:func:`data_identity`, with
    :func:`preset_suffix`) unless the command line names them: a preset's names are its bundled data's."""
    identity = data_identity(cfg)
    if identity is not None:
        identity += preset_suffix(cfg.preset)
        for path in ("name", "model_name"):
            if path not in set_by_user:
                cfg = replace_path(cfg, path, identity)
    if cfg.data.source == "fashion_mnist" or cfg.data.data_dir:
        return cfg
    for path, value in OWN_DATA_DEFAULTS.items():
        if path not in given:
            cfg = replace_path(cfg, path, value)
    return cfg


IDENTITY_PREFIX = "longtail-"
# The presets a data set is trained and served by: they name a user's data's pipeline and model after the data alone.
# Any other preset (smoke, ssp, paper, regression-smoke) appends its own name, as its bundled-data names differ from
# the default's: a smoke run (gate floors at zero) never pushes into, or compares against, the default's history.
MAIN_PRESETS = ("default", "regression")


def preset_suffix(preset: str) -> str:
    return "" if preset in MAIN_PRESETS else f"-{preset}"


def data_identity(cfg: PipelineConfig) -> str | None:
    """``longtail-<data name>`` for data other than the bundled benchmark's (the user's folder's or TFRecord folder's
    last path component, a TFDS name, a prepared folder's source, a regression CSV folder's name); None for the
    benchmark, which keeps the preset's names. Two data sets never share a pipeline name, so never an MLMD history, a
    last blessed model or a serving folder."""
    if cfg.task == "regression":
        where = cfg.regression.csv_dir
    else:
        source = data_source(cfg)
        where = None if source == "fashion_mnist" else source.partition(":")[2] or source
    if not where:
        return None
    base = where.rstrip("/").rsplit("/", 1)[-1] if "://" in where else os.path.basename(os.path.abspath(where))
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return IDENTITY_PREFIX + (slug or "data")


# Sources whose images are the same class mirrored (clothes); any other source, a user's own folder first, is not
# assumed to be (a mirrored digit or letter is another class or none), so its "auto" augmentation has no flip.
MIRROR_SYMMETRIC_SOURCES = ("fashion_mnist",)


def data_source(cfg: PipelineConfig) -> str:
    """Where the images come from: a prepared folder's manifest says (data.data_dir), else data.source."""
    if cfg.data.data_dir:
        try:
            return Manifest.load(cfg.data.data_dir).source
        except (OSError, ValueError):  # not prepared (yet), DataError included: the run itself names that error
            pass
    return cfg.data.source


def resolve_augment(cfg: PipelineConfig) -> PipelineConfig:
    """train.augment=auto (or true) -> "crop,flip" for a mirror-symmetric source; any other stays "auto" until its
    images' channels are known (pipeline/tasks.py: "crop,color" for colour images, "crop" for gray); false -> none.
    The resolved value is what metrics.json records; a bad op list is an error naming it."""
    value = str(cfg.train.augment).strip().lower()
    if value in ("auto", "true", "1", "yes"):
        value = "crop,flip" if data_source(cfg) in MIRROR_SYMMETRIC_SOURCES else "auto"
    elif value in ("false", "0", "no", ""):
        value = "none"
    augment_ops(value)  # raises ValueError naming an unknown op
    cfg = replace_path(cfg, "train.augment", value)
    # train.test_time_flip=auto follows the resolved augmentation; metrics.json records on or off
    return replace_path(cfg, "train.test_time_flip", "on" if test_time_flip(cfg.train) else "off")


def changed_paths(cfg: PipelineConfig) -> list[str]:
    """The settings whose value differs from the preset's: what the user set (``--set``)."""
    base = load_config(cfg.preset)
    return [p for p in LEAVES if p != "preset" and get_path(cfg, p) != get_path(base, p)]


def config_json(cfg: PipelineConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)

"""Every knob of the pipeline in one typed object, and the presets (smoke, default, paper).

``--set KEY=VALUE`` overrides a field by dotted path (``train.epochs=5``, ``gate.min_per_class_recall=0.5``,
``data.rho=10``); a bare field name is looked up in every section (``epochs=5``, ``loss=ce``, ``semi=daso``).
The same object drives local runs and Kubeflow compilation, and is written whole into metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import typing

from components.gate import GateThresholds, RegressionGateThresholds
from models.regression import RegressionConfig
from models.semi import SemiConfig
from models.ssp import SSPConfig
from models.training import TrainConfig


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How to prepare the data (see `python -m pipeline prepare-data --help`), or an existing folder."""

    data_dir: str | None = None  # a prepared folder; None: prepare from the settings below
    source: str = "fashion_mnist"
    source_dir: str | None = None
    rho: float | None = 100.0
    n_max: int | None = 5000
    class_order: str = "index"
    val_per_class: int = 300
    rho_u: float = 1.0
    unlabeled_size: int | None = None
    unlabeled_order: str = "same"
    pool_relevance: float = 1.0  # share of the pool kept in-domain; the rest replaced by MNIST digits (evaluation knob)
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class StatsConfig:
    many_shot_threshold: float | None = None  # None: scaled to the data (log-count thirds)
    few_shot_threshold: float | None = None
    effective_number_beta: float = 0.9999


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str = "longtail-fmnist"
    preset: str = "default"
    task: str = "classification"  # classification (images, per-class gate) | regression (taxi CSV, LDS / FDS)
    data: DataConfig = DataConfig()
    stats: StatsConfig = StatsConfig()
    pretrain: SSPConfig = SSPConfig()  # self-supervised pre-training (ssp=none: none)
    train: TrainConfig = TrainConfig()
    # semi=none|fixmatch|daso|pseudo_label|auto and its semi_* / daso_* / plan_* settings
    semi_supervised: SemiConfig = SemiConfig()
    gate: GateThresholds = GateThresholds()
    regression: RegressionConfig = RegressionConfig()  # task=regression only
    regression_gate: RegressionGateThresholds = RegressionGateThresholds()
    post_hoc_logit_adjust_tau: float = 0.0  # >0 adds -tau*log(prior) to the served logits
    model_name: str = "longtail"
    runs_root: str = "runs"  # run outputs, pipeline root and MLMD live here
    serving_root: str = "serving"  # TF Serving layout: serving/<model_name>/<version>/
    beam_direct_running_mode: str = "multi_processing"  # in_memory for tests
    beam_num_workers: int = 2
    enable_cache: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    # seconds: the end-to-end test. Tiny data, a few steps, floors at zero so the push path runs.
    "smoke": {
        "name": "longtail-smoke",
        "data.n_max": 200, "data.val_per_class": 20, "data.unlabeled_size": 200,
        "train.backbone": "resnet8", "train.epochs": 1, "train.batch_size": 64, "train.max_steps_per_epoch": 4,
        "train.jit_compile": False,
        "pretrain.ssp_epochs": 1, "pretrain.ssp_batch_size": 32, "pretrain.ssp_max_steps_per_epoch": 3,
        "gate.min_balanced_accuracy": 0.0, "gate.min_per_class_recall": 0.0,
        "gate.max_drop_balanced_accuracy": 1.0, "gate.max_drop_few_shot_accuracy": 1.0,
    },
    # minutes on a 2-core CPU: the reference's small ResNet, logit-adjusted loss, 30 epochs; the planner
    # chooses pseudo-label training, rotation SSP or supervised-only from the pool (semi=auto).
    "default": {
        "train.backbone": "resnet8", "train.epochs": 30, "train.loss": "logit_adjusted", "semi_supervised.semi": "auto",
        "pretrain.ssp_epochs": 8,  # only when the planner chooses SSP (bench/results/ssp_rho100.md)
        "gate.min_balanced_accuracy": 0.7, "gate.min_per_class_recall": 0.3,
    },
    # the default run warm-started from a self-supervised (rotation) pre-training of the backbone
    "ssp": {
        "name": "longtail-ssp",
        "train.backbone": "resnet8", "train.epochs": 30, "train.loss": "logit_adjusted",
        "pretrain.ssp": "rotation", "pretrain.ssp_epochs": 8,  # bench/results/ssp_rho100.md
        "gate.min_balanced_accuracy": 0.7, "gate.min_per_class_recall": 0.3,
    },
    # the papers' schedule (LDAM / "Rethinking the Value of Labels" CIFAR-LT): ResNet-32, 200 epochs,
    # batch 128, lr 0.1, weight decay 2e-4 (cosine decay here instead of their step decay at 160/180).
    "paper": {
        "name": "longtail-paper",
        "train.backbone": "resnet32", "train.epochs": 200, "train.learning_rate": 0.1, "train.weight_decay": 2e-4,
        "train.loss": "logit_adjusted", "pretrain.ssp_epochs": 200,
        "gate.min_balanced_accuracy": 0.7, "gate.min_per_class_recall": 0.3,
    },
    # task=regression, seconds: the Chicago taxi fare through the whole pipeline (tests), FDS on, loose gate.
    "regression-smoke": {
        "name": "taxi-regression-smoke", "task": "regression", "model_name": "taxi",
        "train.epochs": 2, "train.batch_size": 256, "train.max_steps_per_epoch": 10, "regression.fds": True,
    },
    # task=regression, about a minute of training on 2 cores: MLP, sqrt-inverse LDS weights + FDS, 30 epochs.
    "regression": {
        "name": "taxi-regression", "task": "regression", "model_name": "taxi",
        "train.epochs": 30, "train.batch_size": 256, "regression.fds": True,
        "regression_gate.max_mae": 3.0, "regression_gate.max_few_shot_mae": 60.0,
    },
}


def _convert(text: str, annotation):
    """Parse ``text`` as the field's declared type (int, float, bool, str, their Optional forms)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"float": float, "int": int, "str": str, "bool": bool, "None": None})  # noqa: S307
    args = typing.get_args(annotation)
    if args and type(None) in args:
        if text.lower() in ("none", "null"):
            return None
        annotation = next(a for a in args if a is not type(None))
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {text!r}")
    return annotation(text)


def _sections(cfg) -> dict[str, typing.Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))}


def resolve_key(cfg: PipelineConfig, key: str) -> str:
    """A dotted path for ``key``; a bare name must exist in exactly one place."""
    if "." in key:
        return key
    hits = [f.name for f in dataclasses.fields(cfg) if f.name == key]
    hits += [f"{s}.{key}" for s, sub in _sections(cfg).items() for f in dataclasses.fields(sub) if f.name == key]
    if len(hits) != 1:
        raise KeyError(f"setting {key!r} {'is ambiguous: ' + str(hits) if hits else 'does not exist'}")
    return hits[0]


def apply_overrides(cfg: PipelineConfig, overrides: dict[str, typing.Any]) -> PipelineConfig:
    for key, value in overrides.items():
        path = resolve_key(cfg, key).split(".")
        if len(path) == 1:
            fields = {f.name: f for f in dataclasses.fields(cfg)}
            if path[0] not in fields or path[0] in _sections(cfg):
                raise KeyError(f"setting {key!r} does not exist")
            v = _convert(value, fields[path[0]].type) if isinstance(value, str) else value
            cfg = dataclasses.replace(cfg, **{path[0]: v})
        else:
            section_name, field = path
            section = _sections(cfg).get(section_name)
            fields = {f.name: f for f in dataclasses.fields(section)} if section is not None else {}
            if field not in fields:
                raise KeyError(f"setting {key!r} does not exist")
            v = _convert(value, fields[field].type) if isinstance(value, str) else value
            cfg = dataclasses.replace(cfg, **{section_name: dataclasses.replace(section, **{field: v})})
    return cfg


def load_config(preset: str = "default", overrides: dict[str, str] | None = None) -> PipelineConfig:
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = apply_overrides(PipelineConfig(preset=preset), PRESETS[preset])
    return apply_overrides(cfg, overrides or {})


def config_json(cfg: PipelineConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2, sort_keys=True)

"""The Trainer job: what a Trainer execution is told to train, typed, with every ``custom_config`` key named once.

pipeline/ builds a :class:`TrainerJob` from the typed config (``with_backup`` adds its backup folder), the
component serializes it (``to_custom_config``: TFX stores that JSON in the component's exec properties, so it
is the Trainer's cache key), the executor adds the input paths (``with_inputs``), and run_fn reads it back
(``from_custom_config``). As TFX names its component keys once (tfx/types/standard_component_specs.py), every
key here is a constant; no other module spells one.

Three stages share the contract, each with its own keys:
  TRAIN (models.trainer.run_fn): train, semi, pretrain, calibration, post_hoc_logit_adjust_tau, image_shape,
    backup_dir; pool_setting, pool_truth (modes with online_pool), image_fit (a user's images: how the served
    signature fits them) when set
  PRETRAIN (models.ssp.run_fn): pretrain, backbone, image_shape, backup_dir; distribute (the train.* settings of
    models.config.DistributeConfig) when any differs from its default
  REGRESSION (models.regression.run_fn): train, regression, backup_dir
and the input paths the executor adds (components/trainer.py): label_stats_path, unlabeled_files,
pseudo_labeled_files, pseudo_label_stats_path, init_model, warm_start_model (models/retrain.py).

Pure Python (models.config imports neither Keras nor TensorFlow): the pipeline and the Kubeflow compiler
build jobs without loading either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from models import config, dotted

# --- the keys pipeline/ writes (from the typed config)
TRAINING_SUMMARY_FILE = "training_summary.json"  # a classification or regression Trainer's, in its model run dir
TRAIN_KEY = "train"
SEMI_KEY = "semi"
PRETRAIN_KEY = "pretrain"
CALIBRATION_KEY = "calibration"
POST_HOC_LOGIT_ADJUST_TAU_KEY = "post_hoc_logit_adjust_tau"
REGRESSION_KEY = "regression"
BACKBONE_KEY = "backbone"
IMAGE_SHAPE_KEY = "image_shape"
IMAGE_FIT_KEY = "image_fit"
BACKUP_DIR_KEY = "backup_dir"
POOL_SETTING_KEY = "pool_setting"
POOL_TRUTH_KEY = "pool_truth"
DISTRIBUTE_KEY = "distribute"
# a compiled Kubeflow package's: how train.distribute=multi_worker starts its workers where no TF_CONFIG names a cluster
# ({"launcher": "module:function", ...}; components/tfjob.py; models.cluster.launch_on_cluster)
CLUSTER_LAUNCH_KEY = "cluster_launch"

# --- the input paths the executor adds (components/trainer.py), from the Trainer's input artifacts
LABEL_STATS_PATH_KEY = "label_stats_path"
UNLABELED_FILES_KEY = "unlabeled_files"
PSEUDO_LABELED_FILES_KEY = "pseudo_labeled_files"
PSEUDO_LABEL_STATS_PATH_KEY = "pseudo_label_stats_path"
INIT_MODEL_KEY = "init_model"
WARM_START_MODEL_KEY = "warm_start_model"  # the last blessed model's export (train.warm_start=auto) or the folder named
INPUT_KEYS = (LABEL_STATS_PATH_KEY, UNLABELED_FILES_KEY, PSEUDO_LABELED_FILES_KEY, PSEUDO_LABEL_STATS_PATH_KEY,
              INIT_MODEL_KEY, WARM_START_MODEL_KEY)

# --- the stages
TRAIN = "train"  # the classification Trainers (base and final)
PRETRAIN = "pretrain"  # the self-supervised pre-training Trainer
REGRESSION = "regression"  # the regression Trainer

# keys always written (null where unset), by stage
STAGE_KEYS = {
    TRAIN: (TRAIN_KEY, SEMI_KEY, PRETRAIN_KEY, CALIBRATION_KEY, POST_HOC_LOGIT_ADJUST_TAU_KEY, IMAGE_SHAPE_KEY,
            BACKUP_DIR_KEY),
    PRETRAIN: (PRETRAIN_KEY, BACKBONE_KEY, IMAGE_SHAPE_KEY, BACKUP_DIR_KEY),
    REGRESSION: (TRAIN_KEY, REGRESSION_KEY, BACKUP_DIR_KEY),
}
# keys written only when set, by stage (the input paths: every stage)
OPTIONAL_KEYS = {TRAIN: (POOL_SETTING_KEY, POOL_TRUTH_KEY, IMAGE_FIT_KEY, CLUSTER_LAUNCH_KEY),
                 PRETRAIN: (DISTRIBUTE_KEY, CLUSTER_LAUNCH_KEY),
                 REGRESSION: (CLUSTER_LAUNCH_KEY,)}
# BackupAndRestore's folder under the pipeline root, by stage (one subfolder a cache key)
BACKUP_FOLDERS = {TRAIN: "_trainer_backup", PRETRAIN: "_pretrainer_backup", REGRESSION: "_trainer_backup"}

_SECTIONS = {TRAIN_KEY: config.TrainConfig, SEMI_KEY: config.SemiConfig, PRETRAIN_KEY: config.SSPConfig,
             CALIBRATION_KEY: config.CalibrationConfig, REGRESSION_KEY: config.RegressionConfig,
             DISTRIBUTE_KEY: config.DistributeConfig}


@dataclasses.dataclass(frozen=True)
class TrainerJob:
    """One Trainer execution's job (see the module docstring for which stage carries which field).

    ``pool_setting``: the declared pool imbalance {rho, rho_u, same_order} (DASO's T_dist); ``pool_truth``: {data_dir,
    unlabeled} where the pool's true classes are (only to score pseudo-labels). ``distribute``: how a PRETRAIN job runs
    beyond one float32 process (None: DistributeConfig's defaults). The input paths are None until the executor adds
    them."""

    stage: str = TRAIN
    train: config.TrainConfig | None = None
    semi: config.SemiConfig | None = None
    pretrain: config.SSPConfig | None = None
    calibration: config.CalibrationConfig | None = None
    post_hoc_logit_adjust_tau: float | None = None
    regression: config.RegressionConfig | None = None
    backbone: str | None = None
    image_shape: list | None = None
    image_fit: str | None = None  # how images of another size are fitted (models/image_fit.py; None: resize)
    backup_dir: str | None = None
    pool_setting: dict | None = None
    pool_truth: dict | None = None
    distribute: config.DistributeConfig | None = None
    cluster_launch: dict | None = None  # CLUSTER_LAUNCH_KEY: set by compile-kfp for a multi-worker package
    # the input paths (components/trainer.py)
    label_stats_path: str | None = None
    unlabeled_files: list | None = None
    pseudo_labeled_files: list | None = None
    pseudo_label_stats_path: str | None = None
    init_model: str | None = None
    warm_start_model: str | None = None

    def __post_init__(self):
        if self.stage not in STAGE_KEYS:
            raise ValueError(f"unknown Trainer stage {self.stage!r}; one of {sorted(STAGE_KEYS)}")

    # ---- the cache key and the backup folder

    def cache_key(self, data) -> str:
        """16 hex digits of what the training depends on: its settings and ``data`` (the manifest's splits; for
        REGRESSION, :func:`folder_identity` of the CSV folder). Stable across re-executions of the same training,
        so an interrupted Trainer resumes from its backup; a TRAIN job's pre-training settings are part of it
        when it warm-starts from a pre-training or may pre-train inline (the planner)."""
        if self.stage == PRETRAIN:  # not the supervised settings: changing them leaves the pre-training alone
            payload = {PRETRAIN_KEY: dataclasses.asdict(self.pretrain), BACKBONE_KEY: self.backbone, "data": data}
            if self.distribute is not None:  # another cluster's backup (its own file, models.toolkit.Backup)
                payload[DISTRIBUTE_KEY] = dataclasses.asdict(self.distribute)
        elif self.stage == REGRESSION:
            payload = {TRAIN_KEY: dataclasses.asdict(self.train), REGRESSION_KEY: dataclasses.asdict(self.regression),
                       "csv": data}
        else:
            payload = {TRAIN_KEY: dataclasses.asdict(self.train), SEMI_KEY: dataclasses.asdict(self.semi), "data": data}
            if self.pretrain.method != "none" or self.semi.mode.inline_ssp:
                payload[PRETRAIN_KEY] = dataclasses.asdict(self.pretrain)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def backup_folder(self, pipeline_root: str, data) -> str:
        """BackupAndRestore's folder: <pipeline_root>/<the stage's backup folder>/<cache key>."""
        return os.path.join(pipeline_root, BACKUP_FOLDERS[self.stage], self.cache_key(data))

    def with_backup(self, pipeline_root: str, data) -> TrainerJob:
        return dataclasses.replace(self, backup_dir=self.backup_folder(pipeline_root, data))

    def with_inputs(self, **paths) -> TrainerJob:
        """The job with the executor's input paths (keyword names: :data:`INPUT_KEYS`)."""
        unknown = sorted(set(paths) - set(INPUT_KEYS))
        if unknown:
            raise ValueError(f"unknown Trainer inputs {unknown}; the job has {list(INPUT_KEYS)}")
        return dataclasses.replace(self, **paths)

    @property
    def inputs(self) -> dict:
        """The input paths that are set (non-empty), by key."""
        return {k: getattr(self, k) for k in INPUT_KEYS if getattr(self, k)}

    # ---- custom_config, as TFX stores it

    def to_custom_config(self) -> dict:
        """The JSON-ready dict: the stage's keys (config sections as dicts), then the optional keys and the input
        paths that are set."""
        out = {}
        for key in STAGE_KEYS[self.stage]:
            value = getattr(self, key)
            out[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        for key in OPTIONAL_KEYS[self.stage] + INPUT_KEYS:
            value = getattr(self, key)
            if value is not None and value is not False:
                out[key] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    @classmethod
    def from_custom_config(cls, custom_config: dict | None, stage: str | None = None) -> TrainerJob:
        """The job from a custom_config dict; ``stage`` None: read from its keys (:func:`stage_of`). Every key is
        checked (an unknown one names the stage's keys); a missing config section is its defaults."""
        c = dict(custom_config or {})
        stage = stage or stage_of(c)
        known = STAGE_KEYS[stage] + OPTIONAL_KEYS[stage] + INPUT_KEYS
        unknown = sorted(set(c) - set(known))
        if unknown:
            raise ValueError(f"unknown custom_config keys {unknown} for the {stage} Trainer; it has {sorted(known)}")
        fields = {}
        for key in known:
            if key in _SECTIONS and (key in STAGE_KEYS[stage] or key in c):
                fields[key] = dotted.from_dict(_SECTIONS[key], c.get(key), f"{key}.")
            elif key in c:
                fields[key] = c[key]
        return cls(stage=stage, **fields)


def stage_of(custom_config: dict) -> str:
    """The stage a custom_config belongs to, from the keys only its stage writes."""
    if REGRESSION_KEY in custom_config:
        return REGRESSION
    if BACKBONE_KEY in custom_config:
        return PRETRAIN
    return TRAIN


def folder_identity(folder: str) -> list:
    """[folder, (name, size, mtime) of each file] where the folder can be listed here (the folder's path alone
    elsewhere, e.g. a cluster's path at compile time): a cache key's data part for a folder read whole."""
    try:
        return [folder] + sorted((e.name, e.stat().st_size, int(e.stat().st_mtime)) for e in os.scandir(folder)
                                 if e.is_file())
    except OSError:
        return [folder]

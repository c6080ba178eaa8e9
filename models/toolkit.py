"""The training toolkit every method module imports: the Trainer's job (config, statistics, files), the
labeled dataset, the model builder, progress lines, SGD with a cosine schedule, the standard callbacks
and the strict warm start. It imports no method module (training, semi, ssp, pseudo_label), so those can
import it and each other without a cycle.

models/ never imports tfx: ``fn_args`` is read only through its attributes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from models import backbones, config, inputs, modes, retrain, sampling
from models import job as trainer_job

# --------------------------------------------------------------------------------------------- the job


@dataclasses.dataclass
class TrainingJob:
    """What one classification Trainer execution trains on, parsed once from TFX's fn_args: its custom_config is a
    models.job.TrainerJob (stage TRAIN; its docstring lists the keys), written by pipeline/ from the typed config,
    with the input paths the executor adds. ``inputs``: those paths (and pool_setting, pool_truth) that are set, by
    their models.job key. ``fn_args.base_model``: a pre-trained backbone (the SSPPretrainer's Model artifact) to
    warm-start from.
    """

    train: config.TrainConfig
    semi: config.SemiConfig
    pretrain: config.SSPConfig
    stats: dict
    image_shape: list
    train_files: list
    eval_files: list | None
    model_run_dir: str
    backup_dir: str | None = None
    base_model: str | None = None
    inputs: dict = dataclasses.field(default_factory=dict)
    calibration: config.CalibrationConfig = config.CalibrationConfig()
    post_hoc_logit_adjust_tau: float | None = None
    image_fit: str | None = None  # how the served signature fits an image of another size (models/image_fit.py)
    strategy: object = None  # a tf.distribute strategy when train.distribute resolves to more than one process/device
    plan: object = None  # its models.distribute.Plan (batch, learning rate, sharding, chief), recorded in the summary
    single_process_reason: str | None = None  # why a distributed setting trains in one process after all
    precision_reason: str = ""  # what train.mixed_precision=auto resolved to and why (models.distribute)
    warm_start: dict | None = None  # whether this stage started from the last blessed model (models.retrain.decide)

    @property
    def mode(self) -> modes.TrainingMode:
        return self.semi.mode

    @classmethod
    def from_fn_args(cls, fn_args) -> TrainingJob:
        spec = trainer_job.TrainerJob.from_custom_config(fn_args.custom_config, trainer_job.TRAIN)
        with tf.io.gfile.GFile(spec.label_stats_path) as f:
            stats = json.load(f)
        given = {trainer_job.POOL_SETTING_KEY: spec.pool_setting, trainer_job.POOL_TRUTH_KEY: spec.pool_truth, **spec.inputs}
        return cls(train=spec.train, semi=spec.semi, pretrain=spec.pretrain,
                   stats=stats, image_shape=spec.image_shape, train_files=list(fn_args.train_files),
                   eval_files=list(getattr(fn_args, "eval_files", None) or []) or None,
                   model_run_dir=fn_args.model_run_dir, backup_dir=spec.backup_dir,
                   base_model=getattr(fn_args, "base_model", None) or None,
                   inputs={k: v for k, v in given.items() if v and k != trainer_job.LABEL_STATS_PATH_KEY},
                   calibration=spec.calibration, post_hoc_logit_adjust_tau=spec.post_hoc_logit_adjust_tau,
                   image_fit=spec.image_fit)

    def start_for(self, epochs: int, unsupported: str | None = None) -> dict:
        """Decide (and record) whether this stage starts from the last blessed model (``train.warm_start``,
        models/retrain.py) for a from-scratch schedule of ``epochs``; printed on stderr."""
        self.warm_start = retrain.decide(self.train, self.inputs.get(trainer_job.WARM_START_MODEL_KEY),
                                         self.stats.get("class_names") or [], self.image_shape, self.train.backbone,
                                         epochs, unsupported)
        print(f"[trainer] {self.warm_start['reason']}", file=sys.stderr, flush=True)
        return self.warm_start

    def warm_backup_dir(self) -> str | None:
        """BackupAndRestore's folder for a warm-started stage: apart from the from-scratch one of the same data."""
        if not self.backup_dir or not self.warm_start or self.warm_start["start"] != retrain.WARM:
            return self.backup_dir
        return f"{self.backup_dir}-warm-{hashlib.sha256(self.warm_start['model'].encode()).hexdigest()[:8]}"

    def require(self, key: str, what: str):
        """An executor-provided input the mode needs; a clear error naming it when the DAG did not wire it."""
        if not self.inputs.get(key):
            raise ValueError(f"semi.method={self.semi.method} needs the Trainer's {what}; none was given")
        return self.inputs[key]


@dataclasses.dataclass
class TrainResult:
    """What a mode's train function returns to run_fn: the model to export and what the summary records."""

    model: keras.Model
    history: list
    images_seen: int  # for images/s: images drawn from the training data (an unlabeled image counted once)
    training_stats: dict  # the label statistics the loss and sampler used (labeled + accepted pseudo-labels)
    backbone_weights: str | None = None  # the folder the backbone was warm-started from
    summary: dict = dataclasses.field(default_factory=dict)  # the mode's own blocks (semi, plan, pseudo_labels, ...)


# ----------------------------------------------------------------------------------- model and data


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch on stderr: the pipeline's progress for the long step."""

    def __init__(self, epochs: int, prefix: str = "[trainer]"):
        super().__init__()
        self.epochs, self.prefix, self.history = epochs, prefix, []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.report({"epoch": epoch + 1, "seconds": time.time() - self._t0, **logs})

    def report(self, entry: dict) -> None:
        """Record and print one epoch's entry ({"epoch", "seconds", metrics...}); also the custom loop's
        (models.distribute.fit) progress callback."""
        self.history.append(entry)
        shown = " ".join(f"{k}={v:.4f}" for k, v in entry.items() if k not in ("epoch", "seconds", "learning_rate"))
        print(f"{self.prefix} epoch {entry['epoch']}/{self.epochs} {shown} ({entry['seconds']:.1f} s)", file=sys.stderr,
              flush=True)


def head_kind(cfg: config.TrainConfig) -> str:
    return ("cosine" if cfg.loss == "ldam" else "linear") if cfg.head == "auto" else cfg.head


def build_model(cfg: config.TrainConfig, image_shape, num_classes: int) -> keras.Model:
    backbone = backbones.build_backbone(cfg.backbone, image_shape, weights=cfg.backbone_weights)
    return backbones.build_classifier(backbone, num_classes, cosine=head_kind(cfg) == "cosine")


def steps_per_epoch(cfg: config.TrainConfig, num_examples: int, batch_size: int) -> int:
    """Batches of ``batch_size`` (the global batch) in one pass over the examples, capped by max_steps_per_epoch."""
    steps = -(-num_examples // batch_size)
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def labeled_dataset(cfg: config.TrainConfig, train_files, stats: dict, image_shape, sampler: str, epochs: int,
                    first_epoch: int = 0, drop_remainder: bool = False, pseudo_files=None, pseudo_weight: float = 1.0,
                    batch_size: int | None = None, shard: tuple[int, int] | None = None, seed_offset: int = 0):
    """(dataset, steps per epoch). Instance-balanced reads shuffled epochs; other samplers draw an
    endless class-aware stream cut into epochs of the training set's size.

    ``pseudo_files``: pseudo-labeled examples (components/pseudo_labeler.py) appended to the labeled
    ones; with ``pseudo_weight`` != 1 every element gets a sample weight (1 labeled, w pseudo-labeled).
    Distributed training (models/distribute.py): ``batch_size`` the replica's batch (default train.batch_size),
    ``shard`` (n, i) keeps every n-th example from the i-th, ``seed_offset`` shifts the shuffle, sampler and
    augmentation seeds (a worker's own order)."""
    n = stats["num_examples"]
    batch_size = batch_size or cfg.batch_size
    steps = steps_per_epoch(cfg, n, batch_size)
    seed = cfg.seed + seed_offset
    decoded = inputs.read_examples(train_files, image_shape)
    if pseudo_files:
        pseudo = inputs.read_examples(pseudo_files, image_shape)
        if pseudo_weight != 1.0:
            decoded = decoded.map(lambda x, y: (x, y, tf.constant(1.0)))
            pseudo = pseudo.map(lambda x, y: (x, y, tf.constant(float(pseudo_weight))))
        decoded = decoded.concatenate(pseudo)
    if shard is not None:
        decoded = decoded.shard(*shard)
    decoded = decoded.cache()
    if sampler == "instance":
        ds = decoded.shuffle(50_000, seed=seed, reshuffle_each_iteration=True).repeat()
    else:
        ds = sampling.resampled(decoded, stats["class_counts"], sampler, epochs, n, seed, first_epoch)
    ops = config.augment_ops(cfg.augment)
    on_batch = inputs.batch_augmenter(ops, image_shape) if cfg.batch_augment else None
    augment = None if on_batch else inputs.augmenter(ops, image_shape, seed)
    if augment is not None:
        ds = ds.map(lambda x, *rest: (augment(x), *rest), num_parallel_calls=inputs.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if on_batch is not None:
        ds = ds.map(lambda x, *rest: (on_batch(x), *rest), num_parallel_calls=inputs.AUTOTUNE)
    ds = ds.map(lambda x, *rest: (inputs.to_float(x), *rest), num_parallel_calls=inputs.AUTOTUNE)
    return ds.prefetch(inputs.AUTOTUNE), steps


# ----------------------------------------------------------------------------- optimizer and callbacks


def sgd_cosine(learning_rate: float, total_steps: int, momentum: float, weight_decay: float,
               warmup_steps: int = 0) -> keras.optimizers.SGD:
    """SGD with momentum and decoupled weight decay on a cosine schedule (with an optional linear warm-up
    from 0): the schedule of the reference scripts, the LDAM and SSP official code."""
    if warmup_steps:
        schedule = keras.optimizers.schedules.CosineDecay(0.0, max(total_steps - warmup_steps, 1),
                                                          warmup_target=learning_rate, warmup_steps=warmup_steps)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(total_steps, 1))
    return keras.optimizers.SGD(schedule, momentum=momentum, weight_decay=weight_decay)


def sgd_for(cfg: config.TrainConfig, total_steps: int) -> keras.optimizers.SGD:
    return sgd_cosine(cfg.learning_rate, total_steps, cfg.momentum, cfg.weight_decay)


def standard_callbacks(progress: EpochProgress, model_run_dir: str, backup_dir: str | None = None,
                       checkpoints: bool = False, extra=()) -> list:
    """Progress, TensorBoard under the run dir, per-epoch weight checkpoints (optional) and, with a
    ``backup_dir``, BackupAndRestore: an interrupted run re-executed with the same inputs resumes at its
    last epoch."""
    callbacks = [progress, keras.callbacks.TensorBoard(log_dir=os.path.join(model_run_dir, "tensorboard"))]
    if checkpoints:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            os.path.join(model_run_dir, "checkpoints", "epoch-{epoch:03d}.weights.h5"), save_weights_only=True))
    if backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch", delete_checkpoint=True))
    return callbacks + list(extra)


def warm_start(model: keras.Model, weights_dir: str | None, prefix: str = "[trainer]") -> int:
    """Load a pre-trained backbone into ``model`` strictly (every backbone variable, a missing or unexpected
    one raises; models.backbones.load_backbone_weights), the head left fresh; the number loaded."""
    if not weights_dir:
        return 0
    loaded = backbones.load_backbone_weights(model, weights_dir)
    print(f"{prefix} warm start: {len(loaded)} backbone variables from {weights_dir}; fresh head",
          file=sys.stderr, flush=True)
    return len(loaded)


def init_from_classifier(model: keras.Model, weights_dir: str | None, prefix: str = "[trainer]") -> int:
    """Start ``model`` from a trained classifier's every weight, head included (its CLASSIFIER_WEIGHTS_FILE),
    strictly as :func:`warm_start`; the optimizer starts afresh. The number loaded."""
    if not weights_dir:
        return 0
    loaded = backbones.load_backbone_weights(model, weights_dir, head=None, file=backbones.CLASSIFIER_WEIGHTS_FILE)
    print(f"{prefix} starts from the classifier in {weights_dir}: {len(loaded)} variables, head included",
          file=sys.stderr, flush=True)
    return len(loaded)


BACKUP_FILE = "distributed_backup.npz"


class Backup:
    """BackupAndRestore for the data-parallel loop (models.distribute.run_epochs): after each epoch the model's and
    optimizer's variables and the epoch, in one ``.npz`` written atomically (a temporary name, then a rename) by the
    chief only; every worker reads the chief's file on resume (``backup_dir`` is shared storage on a cluster, as
    Keras' BackupAndRestore needs)."""

    def __init__(self, backup_dir: str, chief: bool, stage: str = "train"):
        self.path = os.path.join(backup_dir, f"{stage}-{BACKUP_FILE}")
        self.chief = chief

    def save(self, model, optimizer, epoch: int) -> None:
        # every worker reads the variables (a distributed read may be a collective); only the chief writes
        values = {f"m{i}": np.asarray(v) for i, v in enumerate(model.get_weights())}
        values.update({f"o{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)})
        if not self.chief:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        partial = self.path + ".partial.npz"
        np.savez(partial, epoch=np.int64(epoch), **values)
        os.replace(partial, self.path)

    def restore(self, model, optimizer) -> int:
        """The epoch to start at (0 without a backup); a backup that does not fit the model is an error."""
        if not os.path.exists(self.path):
            return 0
        with np.load(self.path) as saved:
            model_values = [saved[f"m{i}"] for i in range(len(model.get_weights()))]
            optimizer_values = [saved[k] for k in sorted((k for k in saved.files if k.startswith("o")),
                                                         key=lambda k: int(k[1:]))]
            epoch = int(saved["epoch"])
        if len(optimizer_values) != len(optimizer.variables):
            raise ValueError(f"{self.path}: {len(optimizer_values)} optimizer variables, the optimizer has "
                             f"{len(optimizer.variables)}; remove the backup to start over")
        model.set_weights(model_values)
        for variable, value in zip(optimizer.variables, optimizer_values):
            variable.assign(value)
        print(f"[trainer] resumed from {self.path} at epoch {epoch}", file=sys.stderr, flush=True)
        return epoch

    def remove(self) -> None:
        if self.chief and os.path.exists(self.path):
            os.remove(self.path)

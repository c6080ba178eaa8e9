"""The Trainer's run_fn: Keras 3 supervised training on TFRecords, with resume and export.

models/ never imports tfx: ``fn_args`` is used only through its attributes (train_files,
eval_files, serving_model_dir, model_run_dir, custom_config).

custom_config keys (written by pipeline/ from the typed config):
  train: dict of :class:`TrainConfig` fields
  label_stats_path: the LabelStatsGen JSON (class counts, priors, groups), never a hard-coded list
  image_shape: [H, W, C]
  backup_dir: a folder stable across re-executions of the same training, for BackupAndRestore
  semi: dict of :class:`models.semi.SemiConfig` fields; semi=fixmatch|daso trains FixMatch / DASO (models/semi.py);
        semi=pseudo_label|auto trains on labeled + pseudo-labeled examples when the plan says so (models/pseudo_label.py)
  pseudo_labeled_files, pseudo_label_stats_path: the PseudoLabeler's outputs (LongTailTrainer's inputs), semi=pseudo_label|auto
  ssp: pretrain.ssp, so the plan can say whether SSP already runs
  unlabeled_files: the pool's TFRecords (LongTailTrainer's unlabeled_examples input), for semi != none
  pool_setting, pool_truth: declared pool imbalance (DASO's T_dist) and the evaluation-only true classes

``fn_args.base_model`` (the self-supervised pre-training Trainer's Model artifact, when the pipeline has
one): the backbone is warm-started from its backbone.weights.npz, strictly, and the head starts fresh.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from models import backbones, heads, inputs, losses, pseudo_label, sampling, semi
from models.export import export_serving_model


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    backbone: str = "resnet8"
    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 0.05  # SGD momentum 0.9, cosine decay, as the reference and LDAM code
    momentum: float = 0.9
    weight_decay: float = 5e-4
    loss: str = "ce"  # ce | focal | ldam | logit_adjusted | balanced_softmax
    logit_adjust_tau: float = 1.0
    focal_gamma: float = 1.0
    ldam_max_margin: float = 0.5
    ldam_scale: float = 30.0
    head: str = "auto"  # linear | cosine; auto: cosine for LDAM (its official code's NormedLinear), else linear
    class_weighting: str = "none"  # none | effective_number | inverse | sqrt_inverse (from the first epoch)
    drw_epoch: int | None = None  # deferred re-weighting: effective-number weights from this epoch (0-based)
    effective_number_beta: float = 0.9999
    sampler: str = "instance"  # instance | class_balanced | sqrt | progressive
    decoupling: str = "none"  # none | crt | lws | tau_norm (a second stage on the trained backbone)
    decoupling_epochs: int = 10  # cRT / LWS epochs (class-balanced sampling, cosine from learning_rate)
    decoupling_tau: float = 1.0  # tau-normalisation exponent
    augment: bool = True
    seed: int = 0
    # XLA on this CPU was slower than TF's oneDNN kernels (7.9 vs 10.1 s/epoch for resnet8, 12.4k images).
    jit_compile: bool = False
    steps_per_execution: int = 1  # >1 runs several steps per tf.function call (less Python overhead)
    max_steps_per_epoch: int | None = None  # smoke runs only

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        return cls(**d)


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch on stderr: the pipeline's progress for the long step."""

    def __init__(self, epochs: int, prefix: str = "[trainer]"):
        super().__init__()
        self.epochs, self.prefix, self.history = epochs, prefix, []

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self._t0
        logs = {k: float(v) for k, v in (logs or {}).items()}
        self.history.append({"epoch": epoch + 1, "seconds": seconds, **logs})
        shown = " ".join(f"{k}={v:.4f}" for k, v in logs.items() if k != "learning_rate")
        print(f"{self.prefix} epoch {epoch + 1}/{self.epochs} {shown} ({seconds:.1f} s)", file=sys.stderr, flush=True)


def head_kind(cfg: TrainConfig) -> str:
    return ("cosine" if cfg.loss == "ldam" else "linear") if cfg.head == "auto" else cfg.head


def build_model(cfg: TrainConfig, image_shape, num_classes: int) -> keras.Model:
    return backbones.build_classifier(backbones.build_backbone(cfg.backbone, image_shape), num_classes,
                                      cosine=head_kind(cfg) == "cosine")


def _dataset(cfg: TrainConfig, train_files, stats: dict, image_shape, sampler: str, epochs: int, first_epoch: int = 0,
             drop_remainder: bool = False, pseudo_files=None, pseudo_weight: float = 1.0):
    """(dataset, steps per epoch). Instance-balanced reads shuffled epochs; other samplers draw an
    endless class-aware stream cut into epochs of the training set's size.

    ``pseudo_files``: pseudo-labeled examples (components/pseudo_labeler.py) appended to the labeled
    ones; with ``pseudo_weight`` != 1 every element gets a sample weight (1 labeled, w pseudo-labeled)."""
    n = stats["num_examples"]
    steps = -(-n // cfg.batch_size)
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    decoded = inputs.read_examples(train_files, image_shape)
    if pseudo_files:
        pseudo = inputs.read_examples(pseudo_files, image_shape)
        if pseudo_weight != 1.0:
            decoded = decoded.map(lambda x, y: (x, y, tf.constant(1.0)))
            pseudo = pseudo.map(lambda x, y: (x, y, tf.constant(float(pseudo_weight))))
        decoded = decoded.concatenate(pseudo)
    decoded = decoded.cache()
    if sampler == "instance":
        ds = decoded.shuffle(50_000, seed=cfg.seed, reshuffle_each_iteration=True).repeat()
    else:
        ds = sampling.resampled(decoded, stats["class_counts"], sampler, epochs, n, cfg.seed, first_epoch)
    if cfg.augment:
        ds = ds.map(lambda x, *rest: (inputs.augment(x), *rest), num_parallel_calls=inputs.AUTOTUNE)
    ds = ds.map(lambda x, *rest: (inputs.to_float(x), *rest), num_parallel_calls=inputs.AUTOTUNE)
    return ds.batch(cfg.batch_size, drop_remainder=drop_remainder).prefetch(inputs.AUTOTUNE), steps


def _fit(model, cfg, ds, steps, first_epoch, end_epoch, callbacks):
    model.fit(ds, epochs=end_epoch, initial_epoch=first_epoch, steps_per_epoch=steps, verbose=0, callbacks=callbacks)


def train(cfg: TrainConfig, train_files, stats: dict, image_shape, model_run_dir: str, backup_dir: str | None = None,
          extra_callbacks=(), backbone_weights: str | None = None, pseudo_files=None, pseudo_weight: float = 1.0):
    """Train and return (model, history). Resumes from ``backup_dir`` when a backup is there.
    ``pseudo_files`` / ``pseudo_weight``: pseudo-labeled examples added to the training set with weight w
    (``stats`` must then count them: models.pseudo_label.combined_stats).
    ``backbone_weights``: a folder with a pre-trained backbone.weights.npz to warm-start from (every
    backbone variable loaded, a mismatch raises; the head is freshly initialised).

    Stage 1: the configured loss, class weights (fixed, or deferred re-weighting) and sampler.
    Stage 2 (decoupling != none): cRT or LWS on a class-balanced sample, or tau-normalisation.
    """
    keras.utils.set_random_seed(cfg.seed)
    num_classes = stats["num_classes"]
    ds, steps = _dataset(cfg, train_files, stats, image_shape, cfg.sampler, cfg.epochs, pseudo_files=pseudo_files,
                         pseudo_weight=pseudo_weight)
    model = build_model(cfg, image_shape, num_classes)
    if backbone_weights:
        loaded = backbones.load_backbone_weights(model, backbone_weights)
        print(f"[trainer] warm start: {len(loaded)} backbone variables from {backbone_weights}; fresh head",
              file=sys.stderr, flush=True)
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.epochs * steps)
    optimizer = keras.optimizers.SGD(schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    progress = EpochProgress(cfg.epochs)
    callbacks = [
        progress,
        keras.callbacks.TensorBoard(log_dir=os.path.join(model_run_dir, "tensorboard")),
        keras.callbacks.ModelCheckpoint(os.path.join(model_run_dir, "checkpoints", "epoch-{epoch:03d}.weights.h5"),
                                        save_weights_only=True),
    ]
    if backup_dir:  # an interrupted run re-executed with the same inputs resumes at its last epoch
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch", delete_checkpoint=True))
    callbacks += list(extra_callbacks)
    fixed_weights = losses.class_weights_for(cfg.class_weighting, stats["class_counts"], cfg.effective_number_beta)
    if cfg.drw_epoch is not None:
        phases = losses.DeferredReweighting(stats["class_counts"], cfg.drw_epoch, cfg.effective_number_beta).phases(cfg.epochs)
    else:
        phases = [(0, cfg.epochs, fixed_weights)]
    for first, end, weights in phases:  # same optimizer (and its state) across the DRW switch
        model.compile(optimizer, losses.make_loss(cfg, stats, weights),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], jit_compile=cfg.jit_compile,
                      steps_per_execution=cfg.steps_per_execution)
        _fit(model, cfg, ds, steps, first, end, callbacks)
    history = progress.history
    if cfg.decoupling != "none":
        model, stage2 = decouple(model, cfg, train_files, stats, image_shape, pseudo_files, pseudo_weight)
        history = history + stage2
    return model, history


def decouple(model, cfg: TrainConfig, train_files, stats: dict, image_shape, pseudo_files=None, pseudo_weight: float = 1.0):
    """Second stage of Kang et al.: cRT or LWS (class-balanced sampling, CE) or tau-normalisation."""
    if cfg.decoupling == "tau_norm":
        return heads.tau_normalized_model(model, cfg.decoupling_tau), []
    if cfg.decoupling == "crt":
        stage = heads.classifier_retraining_model(model, stats["num_classes"])
    elif cfg.decoupling == "lws":
        stage = heads.lws_model(model)
    else:
        raise ValueError(f"unknown decoupling {cfg.decoupling!r}; choose none, crt, lws or tau_norm")
    epochs = cfg.decoupling_epochs
    ds, steps = _dataset(cfg, train_files, stats, image_shape, "class_balanced", epochs, pseudo_files=pseudo_files,
                         pseudo_weight=pseudo_weight)
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, epochs * steps)
    stage.compile(keras.optimizers.SGD(schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay),
                  losses.CrossEntropyLoss(), metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=cfg.jit_compile)
    progress = EpochProgress(epochs, prefix=f"[trainer:{cfg.decoupling}]")
    stage.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[progress])
    return stage, [dict(h, stage=cfg.decoupling) for h in progress.history]


def _inline_ssp(fn_args, cfg: TrainConfig, semi_cfg, config: dict) -> tuple[dict, str]:
    """semi=auto chose SSP: pre-train the backbone here on the labeled images (plan_ssp with the pretrain.*
    settings) and return (its summary, the folder of its weights for the strict warm start)."""
    from models import ssp

    ssp_cfg = ssp.SSPConfig.from_dict({**(config.get("pretrain") or {}), "ssp": semi_cfg.plan_ssp, "ssp_data": "labeled"})
    ssp_dir = os.path.join(fn_args.model_run_dir, "ssp")
    weights = os.path.join(ssp_dir, "backbone")
    summary = ssp.pretrain_backbone(ssp_cfg, cfg.backbone, config["image_shape"], [fn_args.train_files], ssp_dir,
                                    weights, getattr(fn_args, "eval_files", None))
    return summary, weights


def run_fn(fn_args) -> None:
    """TFX GenericExecutor entry point (referred to by the dotted path models.training.run_fn)."""
    config = fn_args.custom_config
    cfg = TrainConfig.from_dict(config["train"])
    with open(config["label_stats_path"]) as f:
        stats = json.load(f)
    image_shape = config["image_shape"]
    semi_cfg = semi.SemiConfig.from_dict(config.get("semi") or {})
    semi_summary = None
    t0 = time.time()
    base_model = getattr(fn_args, "base_model", None)
    plan = pseudo_labels = inline_ssp = None
    pseudo_files, pseudo_weight, train_stats = None, 1.0, stats
    if semi_cfg.semi in ("pseudo_label", "auto"):
        pl_stats = None
        if config.get("pseudo_label_stats_path"):
            with tf.io.gfile.GFile(config["pseudo_label_stats_path"]) as f:
                pl_stats = json.load(f)
        elif semi_cfg.semi == "pseudo_label":
            raise ValueError("semi=pseudo_label needs the Trainer's pseudo_labeled_examples and pseudo_label_stats inputs "
                             "(the PseudoLabeler's outputs); none were given")
        plan = pseudo_label.decide(semi_cfg, stats, pl_stats, config.get("ssp", "none"))
        use = plan["trained_with"] == "pseudo_label"
        if pl_stats is not None:
            pseudo_labels = pseudo_label.pseudo_label_block(pl_stats, semi_cfg.semi_pl_weight, use)
        print(f"[trainer] plan ({semi_cfg.semi}): {plan['choice']}; trained with {plan['trained_with']}: "
              + "; ".join(plan["reasons"]), file=sys.stderr, flush=True)
        if use:
            pseudo_files, pseudo_weight = config["pseudo_labeled_files"], semi_cfg.semi_pl_weight
            train_stats = pseudo_label.combined_stats(stats, pl_stats["per_class_accepted"], pseudo_weight)
        if plan["trained_with"] == "ssp":
            inline_ssp, base_model = _inline_ssp(fn_args, cfg, semi_cfg, config)
    if semi_cfg.semi not in semi.ONLINE_METHODS:
        model, history = train(cfg, fn_args.train_files, train_stats, image_shape, fn_args.model_run_dir,
                               config.get("backup_dir"), backbone_weights=base_model, pseudo_files=pseudo_files,
                               pseudo_weight=pseudo_weight)
        images_seen = train_stats["num_examples"] * cfg.epochs
    else:
        if not config.get("unlabeled_files"):
            raise ValueError(f"semi={semi_cfg.semi} needs the Trainer's unlabeled_examples input (the pool); none was given")
        truth = config.get("pool_truth")
        pool_truth = None
        if truth:
            pool_truth = semi.load_pool_truth(truth["data_dir"], truth["unlabeled"], image_shape,
                                              semi_cfg.semi_eval_pool_size, cfg.seed)
        model, history, semi_summary = semi.train_semi(
            cfg, semi_cfg, fn_args.train_files, config["unlabeled_files"], stats, image_shape, fn_args.model_run_dir,
            config.get("backup_dir"), pool_truth=pool_truth, pool_setting=config.get("pool_setting"),
            backbone_weights=base_model)
        # labeled + unlabeled images drawn (an unlabeled image counted once, though it passes the network in two views)
        images_seen = semi_summary["total_steps"] * (semi_summary["labeled_batch"] + semi_summary["unlabeled_batch"])
    train_seconds = time.time() - t0
    logit_offset = None
    if config.get("post_hoc_logit_adjust_tau"):
        logit_offset = -config["post_hoc_logit_adjust_tau"] * np.log(np.asarray(stats["class_priors"], np.float32))

    export_serving_model(model, fn_args.serving_model_dir, image_shape, logit_offset)
    model.save(os.path.join(fn_args.model_run_dir, "model.keras"))
    summary = {"train_seconds": train_seconds, "epochs": cfg.epochs, "history": history, "config": dataclasses.asdict(cfg),
               "images_per_second": (images_seen / train_seconds) if train_seconds else None, "semi": semi_summary,
               "plan": plan, "pseudo_labels": pseudo_labels, "inline_ssp": inline_ssp,
               "training_files": {"labeled": list(fn_args.train_files), "pseudo_labeled": list(pseudo_files or [])},
               "training_class_counts": train_stats["class_counts"],
               # the load is strict, so every variable in the file was loaded
               "warm_start": {"base_model": base_model, "variables": len(backbones.saved_backbone_names(base_model))}
               if base_model else None}
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "training_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)

"""Supervised training (the ``supervised`` mode, and the final stage of pseudo-label training): the
configured loss, class weights (fixed, or deferred re-weighting), sampler and, optionally, a decoupling
second stage (Kang et al., ICLR 2020).
"""

from __future__ import annotations

import keras

from models import heads, losses, toolkit
from models.config import TrainConfig


def _compile(model, optimizer, loss, cfg: TrainConfig) -> None:
    model.compile(optimizer, loss, metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=cfg.jit_compile, steps_per_execution=cfg.steps_per_execution)


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
    ds, steps = toolkit.labeled_dataset(cfg, train_files, stats, image_shape, cfg.sampler, cfg.epochs,
                                        pseudo_files=pseudo_files, pseudo_weight=pseudo_weight)
    model = toolkit.build_model(cfg, image_shape, stats["num_classes"])
    toolkit.warm_start(model, backbone_weights)
    optimizer = toolkit.sgd_for(cfg, cfg.epochs * steps)
    progress = toolkit.EpochProgress(cfg.epochs)
    callbacks = toolkit.standard_callbacks(progress, model_run_dir, backup_dir, checkpoints=True, extra=extra_callbacks)
    fixed_weights = losses.class_weights_for(cfg.class_weighting, stats["class_counts"], cfg.effective_number_beta)
    if cfg.drw_epoch is not None:
        phases = losses.DeferredReweighting(stats["class_counts"], cfg.drw_epoch, cfg.effective_number_beta).phases(cfg.epochs)
    else:
        phases = [(0, cfg.epochs, fixed_weights)]
    for first, end, weights in phases:  # same optimizer (and its state) across the DRW switch
        _compile(model, optimizer, losses.make_loss(cfg, stats, weights), cfg)
        model.fit(ds, epochs=end, initial_epoch=first, steps_per_epoch=steps, verbose=0, callbacks=callbacks)
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
    ds, steps = toolkit.labeled_dataset(cfg, train_files, stats, image_shape, "class_balanced", epochs,
                                        pseudo_files=pseudo_files, pseudo_weight=pseudo_weight)
    stage.compile(toolkit.sgd_for(cfg, epochs * steps), losses.CrossEntropyLoss(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], jit_compile=cfg.jit_compile)
    progress = toolkit.EpochProgress(epochs, prefix=f"[trainer:{cfg.decoupling}]")
    stage.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[progress])
    return stage, [dict(h, stage=cfg.decoupling) for h in progress.history]


def train_supervised(job: toolkit.TrainingJob) -> toolkit.TrainResult:
    """The ``supervised`` mode: the labeled set only, warm-started from the pre-training when there is one."""
    model, history = train(job.train, job.train_files, job.stats, job.image_shape, job.model_run_dir, job.backup_dir,
                           backbone_weights=job.base_model)
    return toolkit.TrainResult(model, history, job.stats["num_examples"] * job.train.epochs, job.stats,
                               backbone_weights=job.base_model)

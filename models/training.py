"""Supervised training (the ``supervised`` mode, and the final stage of pseudo-label training): the
configured loss, class weights (fixed, or deferred re-weighting), sampler and, optionally, a decoupling
second stage (Kang et al., ICLR 2020).
"""

from __future__ import annotations

import dataclasses

import keras

from models import distribute, heads, losses, precision, retrain, toolkit
from models.config import TrainConfig


def _compile(model, optimizer, loss, cfg: TrainConfig) -> None:
    model.compile(optimizer, loss, metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
                  jit_compile=cfg.jit_compile, steps_per_execution=cfg.steps_per_execution)


def train(cfg: TrainConfig, train_files, stats: dict, image_shape, model_run_dir: str, backup_dir: str | None = None,
          extra_callbacks=(), backbone_weights: str | None = None, pseudo_files=None, pseudo_weight: float = 1.0,
          strategy=None, plan: distribute.Plan | None = None, init_weights: str | None = None):
    """Train and return (model, history). Resumes from ``backup_dir`` when a backup is there.
    ``strategy`` / ``plan`` (models/distribute.py): the same training, data-parallel, with the custom loop.
    ``pseudo_files`` / ``pseudo_weight``: pseudo-labeled examples added to the training set with weight w
    (``stats`` must then count them: models.pseudo_label.combined_stats).
    ``backbone_weights``: a folder with a pre-trained backbone.weights.npz to warm-start from (every
    backbone variable loaded, a mismatch raises; the head is freshly initialised).
    ``init_weights``: a folder with a trained classifier's classifier.weights.npz to start from, head included
    (strict as the warm start; the optimizer and its schedule start afresh).

    Stage 1: the configured loss, class weights (fixed, or deferred re-weighting) and sampler.
    Stage 2 (decoupling != none): cRT or LWS on a class-balanced sample, or tau-normalisation.
    """
    if strategy is not None:
        return train_distributed(cfg, train_files, stats, image_shape, backup_dir, strategy, plan, backbone_weights,
                                 pseudo_files, pseudo_weight, init_weights)
    keras.utils.set_random_seed(cfg.seed)
    ds, steps = toolkit.labeled_dataset(cfg, train_files, stats, image_shape, cfg.sampler, cfg.epochs,
                                        pseudo_files=pseudo_files, pseudo_weight=pseudo_weight)
    model = toolkit.build_model(cfg, image_shape, stats["num_classes"])
    toolkit.warm_start(model, backbone_weights)
    toolkit.init_from_classifier(model, init_weights)
    optimizer = toolkit.sgd_for(cfg, cfg.epochs * steps)
    progress = toolkit.EpochProgress(cfg.epochs)
    callbacks = toolkit.standard_callbacks(progress, model_run_dir, backup_dir, checkpoints=True, extra=extra_callbacks)
    for first, end, weights in _phases(cfg, stats):  # same optimizer (and its state) across the DRW switch
        _compile(model, optimizer, losses.make_loss(cfg, stats, weights), cfg)
        model.fit(ds, epochs=end, initial_epoch=first, steps_per_epoch=steps, verbose=0, callbacks=callbacks)
    history = progress.history
    if cfg.decoupling != "none":
        model, stage2 = decouple(model, cfg, train_files, stats, image_shape, pseudo_files, pseudo_weight)
        history = history + stage2
    return model, history


def _phases(cfg: TrainConfig, stats: dict) -> list:
    """(first epoch, end epoch, class weights) per stage-1 phase: one with the fixed weighting, or DRW's two."""
    if cfg.drw_epoch is not None:
        return losses.DeferredReweighting(stats["class_counts"], cfg.drw_epoch,
                                          cfg.effective_number_beta).phases(cfg.epochs)
    return [(0, cfg.epochs, losses.class_weights_for(cfg.class_weighting, stats["class_counts"],
                                                     cfg.effective_number_beta))]


def _stage_model(model, cfg: TrainConfig, num_classes: int):
    """(the second-stage model, whether it trains): cRT's or LWS's model to train, or the tau-normalised one."""
    if cfg.decoupling == "tau_norm":
        return heads.tau_normalized_model(model, cfg.decoupling_tau), False
    if cfg.decoupling == "crt":
        return heads.classifier_retraining_model(model, num_classes), True
    if cfg.decoupling == "lws":
        return heads.lws_model(model), True
    raise ValueError(f"unknown decoupling {cfg.decoupling!r}; choose none, crt, lws or tau_norm")


def decouple(model, cfg: TrainConfig, train_files, stats: dict, image_shape, pseudo_files=None, pseudo_weight: float = 1.0):
    """Second stage of Kang et al.: cRT or LWS (class-balanced sampling, CE) or tau-normalisation."""
    stage, trains = _stage_model(model, cfg, stats["num_classes"])
    if not trains:
        return stage, []
    epochs = cfg.decoupling_epochs
    ds, steps = toolkit.labeled_dataset(cfg, train_files, stats, image_shape, "class_balanced", epochs,
                                        pseudo_files=pseudo_files, pseudo_weight=pseudo_weight)
    stage.compile(toolkit.sgd_for(cfg, epochs * steps), losses.CrossEntropyLoss(),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], jit_compile=cfg.jit_compile)
    progress = toolkit.EpochProgress(epochs, prefix=f"[trainer:{cfg.decoupling}]")
    stage.fit(ds, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[progress])
    return stage, [dict(h, stage=cfg.decoupling) for h in progress.history]


def train_distributed(cfg: TrainConfig, train_files, stats: dict, image_shape, backup_dir, strategy,
                      plan: distribute.Plan, backbone_weights=None, pseudo_files=None, pseudo_weight: float = 1.0,
                      init_weights: str | None = None):
    """:func:`train` under a tf.distribute strategy: the same stages, sampler, loss, class weights and DRW switch,
    with the custom loop (models.distribute.fit) and one global batch of ``plan.global_batch_size`` a step."""
    keras.utils.set_random_seed(cfg.seed)
    steps = toolkit.steps_per_epoch(cfg, stats["num_examples"], plan.global_batch_size)

    def dataset_fn(sampler: str, epochs: int, first_epoch: int, sharding: str):
        def make(context):
            shard = None
            if sharding == "examples" and context.num_input_pipelines > 1:
                shard = (context.num_input_pipelines, context.input_pipeline_id)
            ds, _ = toolkit.labeled_dataset(cfg, train_files, stats, image_shape, sampler, epochs, first_epoch,
                                            drop_remainder=True, pseudo_files=pseudo_files, pseudo_weight=pseudo_weight,
                                            batch_size=context.get_per_replica_batch_size(plan.global_batch_size),
                                            shard=shard, seed_offset=context.input_pipeline_id)
            return ds
        return make

    with strategy.scope():
        model = toolkit.build_model(cfg, image_shape, stats["num_classes"])
        toolkit.warm_start(model, backbone_weights)
        toolkit.init_from_classifier(model, init_weights)
        optimizer = toolkit.sgd_cosine(plan.learning_rate, cfg.epochs * steps, cfg.momentum, cfg.weight_decay)
        optimizer = precision.loss_scaled(optimizer, cfg.mixed_precision)
        optimizer.build(model.trainable_variables)
    backup = toolkit.Backup(backup_dir, plan.chief) if backup_dir else None
    first = backup.restore(model, optimizer) if backup else 0
    focal = cfg.loss == "focal"  # the focal loss weights inside its power; the others' weights are applied by fit
    progress = toolkit.EpochProgress(cfg.epochs)
    for start, end, weights in _phases(cfg, stats):  # same optimizer (and its state) across the DRW switch
        if end <= first:
            continue
        begin = max(start, first)
        distribute.fit(strategy, model, optimizer, losses.make_loss(cfg, stats, weights if focal else None),
                       dataset_fn(cfg.sampler, cfg.epochs, begin, plan.data_sharding), end, steps, begin,
                       class_weights=weights, weights_in_loss=focal, progress=progress.report, backup=backup)
    history = progress.history
    if cfg.decoupling != "none":
        with strategy.scope():
            stage, trains = _stage_model(model, cfg, stats["num_classes"])
            epochs = cfg.decoupling_epochs
            if trains:
                stage_optimizer = toolkit.sgd_cosine(plan.learning_rate, epochs * steps, cfg.momentum, cfg.weight_decay)
                stage_optimizer.build(stage.trainable_variables)
        if trains:
            stage_progress = toolkit.EpochProgress(epochs, prefix=f"[trainer:{cfg.decoupling}]")
            distribute.fit(strategy, stage, stage_optimizer, losses.CrossEntropyLoss(),
                           dataset_fn("class_balanced", epochs, 0, distribute.data_sharding_for("auto", "class_balanced")),
                           epochs, steps, progress=stage_progress.report)
            history = history + [dict(h, stage=cfg.decoupling) for h in stage_progress.history]
        model = stage
    if backup is not None:
        backup.remove()
    return model, history


def train_supervised(job: toolkit.TrainingJob) -> toolkit.TrainResult:
    """The ``supervised`` mode: the labeled set only; from the last blessed model when the retraining warm-starts
    (models/retrain.py: every weight, fewer epochs), else warm-started from the pre-training when there is one."""
    start = job.start_for(job.train.epochs)
    warm = start["start"] == retrain.WARM
    cfg = retrain.stage_config(job.train, start)
    backbone = None if warm else job.base_model
    model, history = train(cfg, job.train_files, job.stats, job.image_shape, job.model_run_dir, job.warm_backup_dir(),
                           backbone_weights=backbone, strategy=job.strategy, plan=job.plan,
                           init_weights=start["model"] if warm else None)
    summary = {"epochs": cfg.epochs, "config": dataclasses.asdict(cfg)} if warm else {}
    return toolkit.TrainResult(model, history, job.stats["num_examples"] * cfg.epochs, job.stats,
                               backbone_weights=backbone, summary=summary)

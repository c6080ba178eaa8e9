"""Self-supervised pre-training (SSP) of the backbone: rotation prediction and MoCo v2.

"Rethinking the Value of Labels for Improving Class-Imbalanced Learning" (Yang & Xu, NeurIPS 2020):
pre-train the backbone on the training images WITHOUT their labels, then train any supervised method
from it (models.toolkit.warm_start loads the backbone strictly and the head starts fresh).

The pretext tasks, rotation and MoCo v2 with the official code's settings (YyzHarry/imbalanced-semi-self), their
models and how their state stays one across replicas: models/pretext.py. Under a strategy (``train.distribute``,
models/distribute.py) the pre-training runs the custom loop :func:`fit_pretext` (Keras 3's ``model.fit`` fails under
MultiWorkerMirroredStrategy): each replica's loss is its terms' sum over the global batch's count, the images are
sharded across workers, the chief exports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from models import backbones, cluster, distribute, inputs, precision, replicas, toolkit
from models.config import DistributeConfig, SSPConfig
from models.job import PRETRAIN, TrainerJob
from models.pretext import batch_norm_statistics, build_pretext_model, pretext_loss_terms

SUMMARY_FILE = "ssp_summary.json"
PRETEXT_WEIGHTS_FILE = "pretext.weights.npz"  # a worker's final pretext model, in its scratch folder


# ---------------------------------------------------------------------------------------------------
# Rotation prediction (Gidaris et al., ICLR 2018)


# ---------------------------------------------------------------------------------------------------
# MoCo v2 (He et al., CVPR 2020; Chen et al., 2020)


# ---------------------------------------------------------------------------------------------------
# Training (tf.data input, like models.training)


def image_dataset(file_groups, image_shape):
    """The decoded uint8 images of every file pattern in ``file_groups``, cached; labels are not parsed."""
    ds = None
    for files in file_groups:
        part = inputs.read_examples(files, image_shape, with_labels=False).map(lambda image: image)
        ds = part if ds is None else ds.concatenate(part)
    return ds.cache()


def pretext_dataset(cfg: SSPConfig, images, image_shape, batch_size: int | None = None, shard=None,
                    seed_offset: int = 0):
    """Batches for the pretext task: crop+flip images (rotation) or two MoCo v2 views stacked on axis 1.
    ``batch_size``: a replica's batch (None: pretrain.batch_size); ``shard`` (n, i): every n-th image from the i-th
    (a worker's share); ``seed_offset``: added to the shuffle seed (each worker its own order)."""
    if shard is not None:
        images = images.shard(*shard)
    ds = images.shuffle(50_000, seed=cfg.seed + seed_offset, reshuffle_each_iteration=True).repeat()
    if cfg.method == "rotation":
        ds = ds.map(lambda x: inputs.to_float(inputs.augment(x)), num_parallel_calls=inputs.AUTOTUNE)
    else:
        ds = ds.map(lambda x: tf.stack([inputs.contrastive_view(x), inputs.contrastive_view(x)]),
                    num_parallel_calls=inputs.AUTOTUNE)
    return ds.batch(batch_size or cfg.batch_size, drop_remainder=True).prefetch(inputs.AUTOTUNE)


def fit_pretext(strategy, model, optimizer, dataset_fn, epochs: int, steps: int, first_epoch: int = 0, progress=None,
                backup=None) -> list:
    """Pre-training under a tf.distribute strategy with a custom loop (models.distribute.fit's, for a pretext task);
    the per-epoch history [{epoch, seconds, loss, accuracy}].

    Each replica's loss is sum_i l_i / N over its terms l_i (:func:`pretext_loss_terms`), N the global batch's count
    of terms (4 x the global batch for rotation, the global batch for MoCo), so the optimizer's sum across replicas
    is the single process's mean; ``dataset_fn(input_context)`` builds a replica's batches; at each epoch's end the
    BatchNorm statistics are averaged across replicas (:func:`batch_norm_statistics`) and ``backup``, a
    models.toolkit.Backup, is written."""
    scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    data = iter(strategy.distribute_datasets_from_function(dataset_fn))

    def replica_step(x):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            terms = pretext_loss_terms(model, logits)
            count = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.size(terms), tf.float32))
            value = tf.reduce_sum(terms) / count
            scaled = optimizer.scale_loss(value) if scaling else value
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables)
        hits = tf.equal(tf.cast(tf.argmax(logits, -1), tf.int32), tf.cast(model.pretext_labels(logits), tf.int32))
        return {"loss": value, "correct": tf.reduce_sum(tf.cast(hits, tf.float32)),
                "count": tf.cast(tf.size(terms), tf.float32)}

    return distribute.run_epochs(distribute.global_step(strategy, replica_step), data, steps, first_epoch, epochs,
                                 distribute.accuracy_and_loss, model=model, optimizer=optimizer,
                                 sync_statistics=replicas.statistics_sync(strategy, batch_norm_statistics(model)),
                                 progress=progress, backup=backup)


def linear_probe_accuracy(backbone: keras.Model, eval_files, image_shape, seed: int = 0) -> float:
    """The standard check of self-supervised features: a multinomial logistic regression on the frozen
    (inference-mode) features of the labeled ``eval_files``, fitted on half of each class and scored on
    the other half (accuracy on the balanced half = its balanced accuracy)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, labels = [], []
    for x, y in inputs.eval_dataset(eval_files, image_shape):
        features.append(ops.convert_to_numpy(backbone(x, training=False)))
        labels.append(y.numpy())
    features, labels = np.concatenate(features), np.concatenate(labels)
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fit[idx[: len(idx) // 2]] = True
    if fit.all() or not fit.any():
        raise ValueError(f"linear probe needs at least 2 validation examples a class, got {np.bincount(labels).tolist()}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    with warnings.catch_warnings():  # this scipy warns about an option sklearn 1.5 passes ("iprint"); harmless
        warnings.filterwarnings("ignore", message="Unknown solver options")
        probe.fit(features[fit], labels[fit])
    return float(probe.score(features[~fit], labels[~fit]))


def pretrain(cfg: SSPConfig, backbone_name: str, image_shape, file_groups, model_run_dir: str, eval_files=None,
             backup_dir: str | None = None, extra_callbacks=(), strategy=None, plan: distribute.Plan | None = None):
    """Pre-train a backbone; return (backbone, summary dict). ``strategy`` / ``plan`` (models/distribute.py): the same
    pre-training data-parallel with :func:`fit_pretext`, ``plan.global_batch_size`` images a step, each worker reading
    its share of the images; the linear probes run on the chief only (``plan.chief``). The backbone returned is float32
    and plain (models.precision.plain_copy) after a strategy or mixed precision, what is exported."""
    keras.utils.set_random_seed(cfg.seed)
    chief = plan is None or plan.chief
    images = image_dataset(file_groups, image_shape)
    num_examples = int(images.reduce(np.int64(0), lambda n, _: n + 1))  # this pass also fills the cache
    global_batch = plan.global_batch_size if plan is not None else cfg.batch_size
    if num_examples < global_batch:
        raise ValueError(f"pre-training set has {num_examples} images, fewer than one (global) batch of {global_batch}")
    steps = num_examples // global_batch
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    hp = cfg.resolved()
    total = cfg.epochs * steps
    warmup = int(round(hp["warmup_fraction"] * total))
    learning_rate = plan.learning_rate if plan is not None else hp["learning_rate"]
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model, backbone = build_pretext_model(cfg, backbone_name, image_shape, num_examples, global_batch)
        optimizer = toolkit.sgd_cosine(learning_rate, total, cfg.momentum, hp["weight_decay"], warmup_steps=warmup)
        # float16 gradients need loss scaling; compile adds it only to a mixed_float16 model, and MoCo itself is float32
        optimizer = precision.loss_scaled(optimizer, keras.config.dtype_policy().name)
        if strategy is not None:
            optimizer.build(model.trainable_variables)

    def exportable():  # a float32 model of plain variables: what is probed and saved
        return precision.float32_copy(backbone) if strategy is None else precision.plain_copy(backbone)

    random_probe = linear_probe_accuracy(exportable(), eval_files, image_shape, cfg.seed) if eval_files and chief else None
    progress = toolkit.EpochProgress(cfg.epochs, prefix=f"[pretrain:{cfg.method}]")
    t0 = time.time()
    if strategy is None:
        model.compile(optimizer)
        callbacks = toolkit.standard_callbacks(progress, model_run_dir, backup_dir, extra=extra_callbacks)
        model.fit(pretext_dataset(cfg, images, image_shape), epochs=cfg.epochs, steps_per_epoch=steps, verbose=0,
                  callbacks=callbacks)
    else:
        def dataset_fn(context):  # examples: worker i of n reads every n-th image; seeds: all, in its own order
            shard = (context.num_input_pipelines, context.input_pipeline_id) \
                if plan.data_sharding == "examples" and context.num_input_pipelines > 1 else None
            return pretext_dataset(cfg, images, image_shape, context.get_per_replica_batch_size(global_batch), shard,
                                   seed_offset=context.input_pipeline_id)

        backup = toolkit.Backup(backup_dir, chief, stage="pretrain") if backup_dir else None
        first = backup.restore(model, optimizer) if backup else 0
        fit_pretext(strategy, model, optimizer, dataset_fn, cfg.epochs, steps, first, progress.report, backup)
        if backup is not None:
            backup.remove()
        # each worker's whole pretext state (MoCo's queue and key encoder too), to check that the replicas agree
        scratch = os.path.join(model_run_dir, cluster.WORKER_DIR, f"worker-{plan.worker_index}")
        os.makedirs(scratch, exist_ok=True)
        np.savez(os.path.join(scratch, PRETEXT_WEIGHTS_FILE), *model.get_weights())
    seconds = time.time() - t0
    history = progress.history
    backbone = exportable()
    probe = linear_probe_accuracy(backbone, eval_files, image_shape, cfg.seed) if eval_files and chief else None
    if chief:
        print(f"[pretrain:{cfg.method}] linear probe {probe} (random init {random_probe})", file=sys.stderr, flush=True)
    summary = {
        "method": cfg.method, "data": cfg.data, "epochs": cfg.epochs, "steps_per_epoch": steps,
        "num_examples": num_examples, "backbone": backbone_name,
        "final_loss": history[-1]["loss"] if history else None,
        "final_pretext_accuracy": history[-1].get("accuracy") if history else None,
        "linear_probe_accuracy": probe, "random_init_probe_accuracy": random_probe,
        "pretrain_seconds": seconds,
        "images_per_second": steps * global_batch * len(history) / seconds if seconds and history else None,
        "resolved": {**hp, "learning_rate": learning_rate}, "queue_size": getattr(model, "queue_size", None),
        "distribute": plan.as_dict() if plan is not None else {
            "strategy": "none", "workers": 1, "replicas": 1,
            "mixed_precision": "none" if keras.config.dtype_policy().name == "float32" else keras.config.dtype_policy().name},
        "config": dataclasses.asdict(cfg), "history": history, "tensorflow": tf.__version__,
    }
    return backbone, summary


def pretrain_backbone(cfg: SSPConfig, backbone_name: str, image_shape, file_groups, model_run_dir: str,
                      weights_dir: str, eval_files=None, backup_dir: str | None = None, strategy=None,
                      plan: distribute.Plan | None = None) -> dict:
    """:func:`pretrain`, then the backbone's weights saved in ``weights_dir`` (what a strict warm start loads) by the
    chief; the summary, with ``backbone_variables`` (how many were saved)."""
    backbone, summary = pretrain(cfg, backbone_name, image_shape, file_groups, model_run_dir, eval_files, backup_dir,
                                 strategy=strategy, plan=plan)
    if plan is None or plan.chief:  # TF's multi-worker rule: one writer
        tf.io.gfile.makedirs(weights_dir)
        summary["backbone_variables"] = len(backbones.save_backbone_weights(backbone, weights_dir))
    return summary


# ---------------------------------------------------------------------------------------------------
# The pre-training Trainer (TFX run_fn) and its workers


def run_fn(fn_args) -> None:
    """TFX entry point of the pre-training Trainer (components.trainer.SSPPretrainer), by the dotted path
    models.ssp.run_fn. custom_config: a models.job.TrainerJob of stage PRETRAIN (pretrain, backbone, image_shape,
    backup_dir, distribute and, from the executor, unlabeled_files). Writes the backbone weights to the serving model
    dir (the Model artifact the supervised Trainer takes as base_model) and ssp_summary.json to the model run dir.

    ``distribute`` (train.distribute, train.local_workers, ...) resolves as the classification Trainer's
    (models.trainer.run_fn): multi_worker trains in fresh worker processes (``python -m models.ssp JOB``, started
    here for train.local_workers > 1, or this process's own task under a TF_CONFIG cluster), mirrored in this
    process, none with Keras' model.fit."""
    job = TrainerJob.from_custom_config(fn_args.custom_config, PRETRAIN)
    how = job.distribute or DistributeConfig()
    distribute.run_or_launch(fn_args, PRETRAIN, how.distribute, how.local_workers, "models.ssp",
                             lambda strategy, tf_config: pretrain_and_export(fn_args, job, strategy, tf_config),
                             f"[pretrain:{job.pretrain.method}] multi-worker pre-training")


def pretrain_and_export(fn_args, job: TrainerJob, strategy, tf_config: dict) -> dict:
    """Pre-train (under ``strategy`` when given, in the job's mixed precision); the chief writes the backbone weights
    and ssp_summary.json, then every worker meets at a barrier (a worker gone while the chief exports reads as
    crashed). The summary."""
    cfg, how = job.pretrain, job.distribute or DistributeConfig()
    how = dataclasses.replace(how, mixed_precision=precision.resolve_mixed_precision(how.mixed_precision)[0])
    groups = [fn_args.train_files]
    if cfg.data == "labeled+unlabeled":
        if not job.unlabeled_files:
            raise ValueError("pretrain.data=labeled+unlabeled but the pre-training Trainer got no unlabeled examples")
        groups.append(job.unlabeled_files)
    plan = distribute.plan_for(strategy, tf_config, cfg.batch_size, cfg.resolved()["learning_rate"], how,
                               distribute.data_sharding_for(how.data_sharding, "instance"), f"[pretrain:{cfg.method}]")
    with precision.training_policy(how.mixed_precision):
        summary = pretrain_backbone(cfg, job.backbone, job.image_shape, groups, fn_args.model_run_dir,
                                    fn_args.serving_model_dir, fn_args.eval_files, job.backup_dir, strategy, plan)
    if plan is None or plan.chief:
        with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, SUMMARY_FILE), "w") as f:
            json.dump(summary, f, indent=2)
    replicas.barrier(strategy)
    return summary


def main(argv=None) -> int:
    """One worker: ``python -m models.ssp JOB.json`` (models.cluster.launch): pre-trains and, on the chief,
    exports."""
    return distribute.worker_main(argv, pretrain_and_export, PRETRAIN)

if __name__ == "__main__":
    sys.exit(main())

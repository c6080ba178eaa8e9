"""Online semi-supervised training: FixMatch (Sohn et al., NeurIPS 2020), optionally with DASO
(Oh, Kim and Kweon, CVPR 2022), Keras 3.

The model, its loss terms and its state (the EMA, DASO's queue and counts): models/fixmatch.py. This module
trains it: the labeled and pool streams, Keras' fit or, under a tf.distribute strategy (train.distribute,
train.local_workers), the custom loop (:func:`fit_distributed`, models.distribute.run_epochs) with each replica's
loss its share of the global batch's mean.

The pool's true classes never enter training: :class:`PoolPseudoLabelMonitor` reads them from the
prepared data's evaluation-only file once an epoch to score the pseudo-labels (recall, precision and
mask rate per class).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from models import distribute, inputs, losses, precision, replicas, toolkit
from models import job as trainer_job
from models.config import FixMatchConfig, SemiConfig, TrainConfig, augment_ops
from models.dotted import get_path
from models.fixmatch import FixMatchModel, dist_temperature_for, warmup_steps_for
from models.metrics import per_class_metrics

# ---------------------------------------------------------------------------------------------- data


def weak_augmenter(augment: str, image_shape):
    """FixMatch's weak view: train.augment's crop and flip (a setting without flip, for data that is not mirror
    symmetric, has none here either); the identity when it names neither."""
    ops = tuple(o for o in augment_ops(augment) if o in ("crop", "flip"))
    return inputs.augmenter(ops, image_shape) or (lambda image: image)


def strong_augmenter(fixmatch: FixMatchConfig, seed: int, weak=inputs.augment):
    """weak view -> RandAugment (2 ops) -> cutout, on uint8-range float images. The layers compute in float32 under
    every dtype policy: the input pipeline's images are float32 (under both mixed policies RandomErasing failed on a 16-bit
    range, e.g. "Unsupported dtype19 for Range[Tidx=DT_HALF]")."""
    rand_augment = keras.layers.RandAugment(value_range=(0, 255), num_ops=fixmatch.randaugment_ops,
                                            factor=fixmatch.randaugment_factor, seed=seed, dtype="float32")
    cutout = keras.layers.RandomErasing(factor=1.0, scale=(0.02, fixmatch.cutout_max_area), fill_value=127.0,
                                        value_range=(0, 255), seed=seed + 1, dtype="float32")

    def strong(image):
        x = tf.cast(weak(image), tf.float32)
        x = cutout(rand_augment(x))
        return tf.clip_by_value(x, 0.0, 255.0) / 255.0

    return strong


def unlabeled_stream(unlabeled_files, image_shape, batch_size: int, fixmatch: FixMatchConfig, seed: int,
                     augment: str = "crop,flip", shard: tuple[int, int] | None = None) -> tf.data.Dataset:
    """Endless batches of (weak, strong) views of the pool's images (read without any label). ``shard`` (n, i):
    every n-th image from the i-th (a worker's part of the pool)."""
    weak = weak_augmenter(augment, image_shape)
    strong = strong_augmenter(fixmatch, seed, weak)
    ds = inputs.read_examples(unlabeled_files, image_shape, with_labels=False)
    if shard is not None:
        ds = ds.shard(*shard)
    ds = ds.cache()
    ds = ds.shuffle(50_000, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(lambda x: (inputs.to_float(weak(x)), strong(x)), num_parallel_calls=inputs.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True)


# ------------------------------------------------------------------------------------ pool evaluation


def load_pool_truth(data_dir: str, manifest_entry: dict, image_shape, limit: int | None = None, seed: int = 0):
    """(dataset of float pool images in record order, their true classes) from the prepared data's
    evaluation-only file, or None when the data was prepared without it. Only for scoring."""
    rel = manifest_entry.get("true_labels_file")
    if not rel:
        return None
    path = os.path.join(data_dir, rel)
    with open(path) as f:  # read here, not by components/data: models/ imports no components/ (components call models)
        truth = json.load(f)
    files = [os.path.join(data_dir, p) for p in truth["files"]]
    labels = np.asarray(truth["labels"], np.int64)
    ds = inputs.read_examples(files, image_shape, with_labels=False).map(lambda x: inputs.to_float(x))
    n = int(ds.reduce(0, lambda count, _: count + 1))
    if n != len(labels):
        raise ValueError(f"{path}: {len(labels)} true labels for {n} pool records in {truth['files']}")
    if limit is not None and limit < n:
        keep = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
        mask = np.zeros(n, bool)
        mask[keep] = True
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(mask)).filter(lambda x, m: m).map(lambda x, m: x)
        labels = labels[keep]
    return ds.apply(tf.data.experimental.assert_cardinality(len(labels))), labels


def score_pseudo_labels(probs: np.ndarray, true_labels: np.ndarray, threshold: float, num_classes: int) -> dict:
    """Per class (of the true class): recall and precision of argmax p (precision None for a class never
    predicted), and the mask rate (share of the class's pool images whose confidence reaches the
    threshold). Images of unknown class (-1) or out of domain (-2) are skipped."""
    known = true_labels >= 0
    probs, true_labels = probs[known], true_labels[known]
    predicted = probs.argmax(1)
    scores = per_class_metrics(true_labels, predicted, num_classes)
    above = probs.max(1) >= threshold
    support = np.bincount(true_labels, minlength=num_classes)
    mask_rate = np.bincount(true_labels, weights=above.astype(np.float64), minlength=num_classes) / np.maximum(support, 1)
    counts = np.bincount(predicted, minlength=num_classes)
    precision = [None if n == 0 else p for p, n in zip(scores["per_class_precision"], counts, strict=True)]  # never predicted
    return {"pseudo_label_recall": scores["per_class_recall"], "pseudo_label_precision": precision,
            "mask_rate": [None if s == 0 else float(r) for r, s in zip(mask_rate, support, strict=True)],
            "accuracy": scores["accuracy"], "overall_mask_rate": float(above.mean()) if len(above) else None,
            "num_scored": int(len(true_labels)),
            "pseudo_label_counts": counts.astype(int).tolist()}


class PoolPseudoLabelMonitor(keras.callbacks.Callback):
    """Once an epoch: the current pseudo-labels of the (un-augmented) pool images, as training would make
    them (DASO-blended once past the warm-up), scored against the pool's true classes. Evaluation only:
    nothing here feeds a gradient."""

    def __init__(self, model: FixMatchModel, pool_images: tf.data.Dataset, pool_labels: np.ndarray, batch_size: int = 512,
                 direct: bool = False):
        super().__init__()
        self.wrapper, self.labels, self.direct = model, pool_labels, direct
        self.images = pool_images.batch(batch_size).prefetch(inputs.AUTOTUNE)
        self.history = []
        # direct: the network called batch by batch (its variables read as they are), not Keras' predict, which under
        # a strategy distributes the batches: a collective every worker would have to join (the chief scores alone)
        self._forward = tf.function(lambda x: model.student(x, training=False)) if direct else None

    def probabilities(self) -> np.ndarray:
        w = self.wrapper
        if self.direct:
            outputs = [self._forward(x) for x in self.images]
            features, logits = (np.concatenate([ops.convert_to_numpy(o[i]) for o in outputs]) for i in (0, 1))
        else:
            features, logits = w.student.predict(self.images, verbose=0)
        probs, _ = w.pseudo_labels(logits, features)
        return ops.convert_to_numpy(probs)

    def on_epoch_end(self, epoch, logs=None):
        scores = score_pseudo_labels(self.probabilities(), self.labels, self.wrapper.fixmatch.threshold,
                                     self.wrapper.num_classes)
        scores["epoch"] = epoch + 1
        self.history.append(scores)
        rec = " ".join("-" if r is None else f"{r:.2f}" for r in scores["pseudo_label_recall"])
        print(f"[trainer:{self.wrapper.method}] epoch {epoch + 1} pool pseudo-labels: accuracy {scores['accuracy']:.3f}, "
              f"mask rate {scores['overall_mask_rate']:.3f}, recall per class [{rec}]", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- training


def semi_batches(labeled: tf.data.Dataset, pool: tf.data.Dataset) -> tf.data.Dataset:
    """({"labeled", "weak", "strong"}, labeled classes) batches: a labeled stream and a pool stream side by side."""
    labeled = labeled.repeat()  # a resampled stream is finite; dropping partial batches may leave it a batch short
    ds = tf.data.Dataset.zip(labeled, pool).map(lambda lab, unl: ({"labeled": lab[0], "weak": unl[0], "strong": unl[1]},
                                                                  lab[1]))
    return ds.prefetch(inputs.AUTOTUNE)


def semi_dataset_fn(cfg: TrainConfig, fixmatch: FixMatchConfig, train_files, unlabeled_files, stats: dict, image_shape,
                    plan):
    """``dataset_fn(input_context)`` for ``distribute_datasets_from_function``: a replica's labeled batch of global /
    replicas images and mu times as many pool images, both streams sharded alike (plan.data_sharding: examples, every
    n-th labeled and pool image from the worker's index; seeds, all of both in the worker's own order)."""
    def make(context):
        per_replica = context.get_per_replica_batch_size(plan.global_batch_size)
        shard = None
        if plan.data_sharding == "examples" and context.num_input_pipelines > 1:
            shard = (context.num_input_pipelines, context.input_pipeline_id)
        labeled, _ = toolkit.labeled_dataset(cfg, train_files, stats, image_shape, cfg.sampler, cfg.epochs,
                                             drop_remainder=True, batch_size=per_replica, shard=shard,
                                             seed_offset=context.input_pipeline_id)
        pool = unlabeled_stream(unlabeled_files, image_shape, fixmatch.mu * per_replica, fixmatch,
                                cfg.seed + context.input_pipeline_id, cfg.augment, shard=shard)
        return semi_batches(labeled, pool)
    return make


def distributed_step(strategy, model: FixMatchModel, optimizer):
    """A ``tf.function(batch)`` (models.distribute.global_step): one training step on every replica on its share of
    a distributed global batch, returning the global batch's loss terms (the replicas' shares summed; daso_on, the
    same everywhere, averaged)."""
    scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    variables = model.trainable_variables

    def replica_step(batch):
        x, y = batch
        with tf.GradientTape() as tape:
            terms = model.terms(x, y, model(x, training=True), training=True)
            scaled = optimizer.scale_loss(terms["loss"]) if scaling else terms["loss"]
        optimizer.apply(tape.gradient(scaled, variables), variables)
        return terms

    return distribute.global_step(strategy, replica_step, mean=("daso_on",))


def fit_distributed(strategy, model: FixMatchModel, optimizer, dataset_fn, epochs: int, steps: int, progress=None,
                    monitor=None, backup=None) -> list:
    """models.distribute.fit for FixMatch / DASO: ``steps`` :func:`distributed_step` an epoch, then BatchNorm's
    statistics (the student's and the EMA's) averaged across the replicas, the pool scored (``monitor``, on the chief)
    and the backup written (:class:`models.toolkit.Backup`: every variable, queue and counts included; resumed
    from when there is one). The EMA is updated once more after the last step. Returns the per-epoch history."""
    first = backup.restore(model, optimizer) if backup is not None else 0
    data = iter(strategy.distribute_datasets_from_function(dataset_fn))

    def report(entry):
        if progress is not None:
            progress(entry)
        if monitor is not None:
            monitor.on_epoch_end(entry["epoch"] - 1)

    history = distribute.run_epochs(distributed_step(strategy, model, optimizer), data, steps, first, epochs,
                                    lambda totals, steps: {k: v / max(steps, 1) for k, v in totals.items()},
                                    model=model, optimizer=optimizer, progress=report, backup=backup,
                                    sync_statistics=replicas.statistics_sync(strategy, model.replica_statistics()))
    tf.function(lambda: strategy.run(model.update_ema))()  # the EMA after the last optimizer step, on every replica
    if backup is not None:
        backup.remove()
    return history


def train_semi(cfg: TrainConfig, semi: SemiConfig, train_files, unlabeled_files, stats: dict, image_shape,
               model_run_dir: str, backup_dir: str | None = None, pool_truth=None, pool_setting: dict | None = None,
               extra_callbacks=(), backbone_weights: str | None = None, strategy=None, plan=None):
    """FixMatch, or FixMatch + DASO when ``semi.mode.daso``. Returns (EMA classifier, epoch history, semi summary).

    ``cfg`` the supervised settings (backbone, schedule, labeled loss, sampler); ``semi`` the mode
    (``semi.method``) and its ``fixmatch`` / ``daso`` sections; ``pool_truth`` (images, true classes) from
    :func:`load_pool_truth`, or None (no scoring). ``backbone_weights``: a self-supervised pre-training to
    warm-start the backbone from (strict, models.toolkit.warm_start); the EMA copy starts from the same weights.
    ``strategy`` / ``plan`` (models/distribute.py): the same training data-parallel, with a custom loop
    (:func:`fit_distributed`); one global batch of ``plan.global_batch_size`` labeled images (and mu times as many
    pool images) a step.
    """
    mode, fixmatch = semi.mode, semi.fixmatch
    if not mode.online_pool:
        raise ValueError(f"train_semi trains the online semi-supervised modes, not semi.method={mode.name}")
    if cfg.drw_epoch is not None or cfg.decoupling != "none":
        raise ValueError(f"train.drw_epoch and train.decoupling are supervised-only stages; not combined with "
                         f"semi.method={mode.name}")
    keras.utils.set_random_seed(cfg.seed)
    num_classes = stats["num_classes"]
    global_batch = plan.global_batch_size if strategy is not None else cfg.batch_size
    steps = toolkit.steps_per_epoch(cfg, stats["num_examples"], global_batch)
    total_steps = cfg.epochs * steps
    warmup, warmup_rule = warmup_steps_for(semi.daso, total_steps)
    t_dist, t_dist_reason = dist_temperature_for(semi.daso, pool_setting)
    prefix = f"[trainer:{mode.name}]"
    weights = losses.class_weights_for(cfg.class_weighting, stats["class_counts"], cfg.effective_number_beta)
    # data-parallel: the model weights the labeled terms itself, over the global batch (the focal loss inside its power)
    applied = strategy is not None and cfg.loss != "focal" and weights is not None

    def build():
        classifier = toolkit.build_model(cfg, image_shape, num_classes)
        toolkit.warm_start(classifier, backbone_weights, prefix)
        ema = toolkit.build_model(cfg, image_shape, num_classes)
        ema.set_weights(classifier.get_weights())
        model = FixMatchModel(classifier, ema, losses.make_loss(cfg, stats, None if applied else weights), fixmatch,
                              num_classes, daso=semi.daso if mode.daso else None, warmup_steps=warmup if mode.daso else 0,
                              dist_temperature=t_dist, method=mode.name, labeled_class_weights=weights if applied else None)
        dummy = np.zeros((1, *image_shape), np.float32)
        model({"labeled": dummy, "weak": dummy, "strong": dummy})  # built before fit (BackupAndRestore needs that)
        return model, ema

    progress = toolkit.EpochProgress(cfg.epochs, prefix=prefix)
    if strategy is None:
        labeled, _ = toolkit.labeled_dataset(cfg, train_files, stats, image_shape, cfg.sampler, cfg.epochs,
                                             drop_remainder=True)
        ds = semi_batches(labeled, unlabeled_stream(unlabeled_files, image_shape, fixmatch.mu * cfg.batch_size, fixmatch,
                                                    cfg.seed, cfg.augment))
        model, ema = build()
        model.compile(toolkit.sgd_for(cfg, total_steps), jit_compile=cfg.jit_compile,
                      steps_per_execution=cfg.steps_per_execution)
        monitor = PoolPseudoLabelMonitor(model, *pool_truth) if pool_truth is not None else None
        callbacks = toolkit.standard_callbacks(progress, model_run_dir, backup_dir,
                                               extra=([monitor] if monitor else []) + list(extra_callbacks))
        model.fit(ds, epochs=cfg.epochs, steps_per_epoch=steps, verbose=0, callbacks=callbacks, shuffle=False)
        model.update_ema()  # the EMA after the last optimizer step
    else:
        with strategy.scope():
            model, ema = build()
            optimizer = toolkit.sgd_cosine(plan.learning_rate, total_steps, cfg.momentum, cfg.weight_decay)
            optimizer = precision.loss_scaled(optimizer, cfg.mixed_precision)
            optimizer.build(model.trainable_variables)
        # the chief scores the pool's pseudo-labels (what the summary reports); the others train only
        monitor = PoolPseudoLabelMonitor(model, *pool_truth, direct=True) if pool_truth is not None and plan.chief else None
        fit_distributed(strategy, model, optimizer,
                        semi_dataset_fn(cfg, fixmatch, train_files, unlabeled_files, stats, image_shape, plan),
                        cfg.epochs, steps, progress=progress.report, monitor=monitor,
                        backup=toolkit.Backup(backup_dir, plan.chief) if backup_dir else None)

    last = monitor.history[-1] if monitor and monitor.history else {}
    summary = {
        "method": mode.name,
        "pseudo_label_recall": last.get("pseudo_label_recall"),
        "pseudo_label_precision": last.get("pseudo_label_precision"),
        "mask_rate": last.get("mask_rate"),
        "threshold": fixmatch.threshold,
        "warmup_steps": warmup if mode.daso else None,
        "warmup_rule": warmup_rule if mode.daso else "FixMatch: no DASO warm-up",
        "dist_temperature": t_dist if mode.daso else None,
        "dist_temperature_reason": t_dist_reason if mode.daso else None,
        "total_steps": total_steps,
        "labeled_batch": global_batch, "unlabeled_batch": fixmatch.mu * global_batch,
        "labeled_loss": cfg.loss, "evaluated_model": "EMA",
        "pool_scoring": ("pool images (un-augmented) scored against the evaluation-only true classes each epoch"
                         if monitor else "no true classes for the pool: pseudo-labels not scored"),
        "settings": {section: dataclasses.asdict(get_path(semi, section.split(".", 1)[1])) for section in mode.settings},
        "pool_history": monitor.history if monitor else [],
    }
    if model.use_daso:
        summary["queue_filled_per_class"] = ops.convert_to_numpy(model.queue.filled).astype(int).tolist()
    return ema, progress.history, summary


def train_online(job: toolkit.TrainingJob) -> toolkit.TrainResult:
    """The ``fixmatch`` and ``daso`` modes: the labeled set and the pool's images, read by the Trainer itself."""
    unlabeled = job.require(trainer_job.UNLABELED_FILES_KEY, "unlabeled_examples input (the pool)")
    truth = job.inputs.get(trainer_job.POOL_TRUTH_KEY)
    scores = truth and (job.plan is None or job.plan.chief)  # data-parallel: the chief scores the pool
    pool_truth = load_pool_truth(truth["data_dir"], truth["unlabeled"], job.image_shape,
                                 job.semi.fixmatch.eval_pool_size, job.train.seed) if scores else None
    model, history, summary = train_semi(job.train, job.semi, job.train_files, unlabeled, job.stats, job.image_shape,
                                         job.model_run_dir, job.backup_dir, pool_truth=pool_truth,
                                         pool_setting=job.inputs.get(trainer_job.POOL_SETTING_KEY),
                                         backbone_weights=job.base_model, strategy=job.strategy, plan=job.plan)
    # labeled + unlabeled images drawn (an unlabeled image counted once, though it passes the network in two views)
    seen = summary["total_steps"] * (summary["labeled_batch"] + summary["unlabeled_batch"])
    return toolkit.TrainResult(model, history, seen, job.stats, backbone_weights=job.base_model,
                               summary={"semi": summary})

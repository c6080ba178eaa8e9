"""Online semi-supervised training: FixMatch (Sohn et al., NeurIPS 2020), optionally with DASO
(Oh, Kim and Kweon, CVPR 2022), Keras 3.

Every step sees B labeled images (the weak view: flip + pad-and-crop) and mu*B unlabeled images in
two views: weak, and strong (weak + keras.layers.RandAugment + a cutout, keras.layers.RandomErasing).
One forward pass of the concatenated batch gives

    L = L_labeled(y, z_l) + lambda_u * mean_i 1[max p_i >= threshold] * CE(argmax p_i, z_strong_i)
        (+ DASO after its warm-up: + L_align(cos(f_weak, mu) / T_proto, cos(f_strong, mu) / T_proto))

with p = softmax(z_weak) for FixMatch; DASO blends p with the prototype similarities
(models.layers.daso.blend_pseudo_labels). L_labeled is any loss of models.losses (make_loss), e.g.
logit adjustment as the DASO paper pairs it with. An EMA copy of the network is kept for evaluation
and export and, for DASO, gives the features of the labeled images fed to the class-balanced queue.

Everything is in keras.ops and Keras' own train_step (the loss in ``compute_loss``, the state in
non-trainable variables), so it trains on the TensorFlow and the JAX backends; tf.data feeds both.
Under a tf.distribute strategy (train.distribute, train.local_workers) the same terms train in a custom loop
(:func:`fit_distributed`, as models.distribute.fit for the supervised Trainers): each replica's loss its share of
the global batch's mean, the EMA and DASO state updated alike on every replica from the gathered global batch
(:class:`FixMatchModel`'s docstring has the measurements).

The pool's true classes never enter training: :class:`PoolPseudoLabelMonitor` reads them from the
prepared data's evaluation-only file once an epoch to score the pseudo-labels (recall, precision and
mask rate per class).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from models import distribute, inputs, losses, precision, replicas, toolkit
from models import job as trainer_job
from models.config import DasoConfig, FixMatchConfig, SemiConfig, TrainConfig, augment_ops, get_path
from models.layers.daso import (
    BalancedFeatureQueue,
    PseudoLabelCountWindow,
    blend_pseudo_labels,
    cosine_similarity_logits,
    semantic_alignment_terms,
)
from models.metrics import per_class_metrics

# DASO's official configuration switches the blending on after 5000 of 250000 steps: 2 % of training.
PAPER_WARMUP_FRACTION = 5000 / 250000


def warmup_steps_for(daso: DasoConfig, total_steps: int) -> tuple[int, str]:
    """(DASO warm-up steps, how they were chosen)."""
    if daso.warmup_steps is not None:
        return int(daso.warmup_steps), "configured (semi.daso.warmup_steps)"
    steps = int(round(PAPER_WARMUP_FRACTION * total_steps))
    return steps, f"2% of the {total_steps} training steps, the paper's 5000 of 250000"


def dist_temperature_for(daso: DasoConfig, pool_setting: dict | None) -> tuple[float, str]:
    """(T_dist, why): the paper's 1.5 when the pool is declared to follow the labeled set's imbalance,
    0.3 when it is declared different (rho_u != rho, or another class order). Uses the declared data
    settings only, never the pool's hidden true classes."""
    if daso.dist_temperature is not None:
        return float(daso.dist_temperature), "configured (semi.daso.dist_temperature)"
    if not pool_setting:
        return 1.5, "pool setting unknown: assumed to match the labeled set"
    rho, rho_u, same_order = pool_setting.get("rho"), pool_setting.get("rho_u"), pool_setting.get("same_order", True)
    if rho_u is not None and (rho is None or not math.isclose(float(rho), float(rho_u))):
        return 0.3, f"pool imbalance rho_u={rho_u} differs from the labeled rho={rho}"
    if not same_order:
        return 0.3, "pool classes in a different order from the labeled set"
    return 1.5, f"pool imbalance rho_u={rho_u} matches the labeled rho={rho}"


def ema_decay_at(decay: float, step):
    """TF's ExponentialMovingAverage(num_updates) rule, min(decay, (1 + n) / (10 + n)): without it a short
    run's EMA would still hold 0.999^n of the random initial weights (25 % after 1400 steps)."""
    step = ops.cast(step, "float32")
    return ops.minimum(decay, (1.0 + step) / (10.0 + step))


class FixMatchModel(keras.Model):
    """The training wrapper: student forward in ``call``, FixMatch/DASO losses and state in ``compute_loss``.

    ``classifier`` is the network trained (image -> logits, its head layer named "classifier");
    ``ema_classifier`` the same architecture, not trained, holding the EMA weights that are exported.
    Inputs: {"labeled", "weak", "strong"} float images; targets: the labeled classes.
    ``labeled_class_weights``: per-class weights the model applies to an unweighted ``labeled_loss`` (the
    data-parallel path's, so the weighted mean is over the global batch); None: the loss weights itself.

    Data-parallel (:func:`train_semi` under a strategy, each replica one share of the global batch): every loss term
    is the replica's share of the global batch's mean (:meth:`global_mean`: the shares add up to it; the optimizer
    sums the replicas' gradients). The state stays replicated, every replica applying the SAME update, that of one
    process over the global batch: the EMA (the student's weights are the same everywhere), the DASO queue (the
    labeled EMA features and labels of every replica gathered, in replica order, before ``enqueue``), the
    pseudo-label counts (each step's class counts summed over the replicas) and the step counter. Measured (Keras
    3.15, TF 2.21, MirroredStrategy over 2 logical CPUs): a Keras non-trainable variable built under the scope is a
    ``MirroredVariable`` with aggregation NONE, synchronization ON_WRITE; ``assign`` inside ``strategy.run`` updates
    only that replica's copy (two replicas adding 1 and 2 held 1 and 2) and a read outside ``strategy.run`` gives
    replica 0's. So the update must be the same on every replica, or the copies drift apart silently; tests/
    test_daso.py checks the 2-replica state against one process over the same global batches. Only BatchNorm's
    moving statistics come from the replica's own batch; :meth:`replica_statistics` lists them for the epoch-end
    average (models.replicas.statistics_sync).
    """

    def __init__(self, classifier: keras.Model, ema_classifier: keras.Model, labeled_loss, fixmatch: FixMatchConfig,
                 num_classes: int, daso: DasoConfig | None = None, warmup_steps: int = 0, dist_temperature: float = 1.5,
                 method: str = "semi", labeled_class_weights=None, **kwargs):
        super().__init__(**kwargs)
        head = classifier.get_layer("classifier")
        self.student = keras.Model(classifier.input, [head.input, classifier.output], name="student")
        ema_classifier.trainable = False
        self.ema_classifier = ema_classifier
        self.ema_features = keras.Model(ema_classifier.input, ema_classifier.get_layer("classifier").input, name="ema_features")
        self.labeled_loss, self.fixmatch, self.daso, self.num_classes = labeled_loss, fixmatch, daso, int(num_classes)
        self.use_daso, self.method = daso is not None, method  # method: the mode's name, for progress lines
        self.warmup_steps, self.dist_temperature = int(warmup_steps), float(dist_temperature)
        self.labeled_class_weights = (None if labeled_class_weights is None
                                      else np.asarray(labeled_class_weights, np.float32))
        self.step_counter = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False, name="step_counter")
        if self.use_daso:
            self.queue = BalancedFeatureQueue(num_classes, daso.queue_size, name="daso_queue")
            self.queue.build(head.input.shape)  # the head's input: the features the queue holds
            self.pl_counts = PseudoLabelCountWindow(num_classes, daso.count_window, name="daso_pl_counts")
            self.pl_counts.build()
        # Metric attributes are tracked by Keras: they appear in self.metrics and the fit logs
        self.trackers = {n: keras.metrics.Mean(name=n) for n in
                         ("labeled_loss", "consistency_loss", "alignment_loss", "mask_rate", "daso_on")}
        # pairs (ema, student) in build order: the two networks are built by the same function
        self._ema_pairs = list(zip(ema_classifier.weights, classifier.weights, strict=True))

    def call(self, inputs, training=False):
        x = ops.concatenate([inputs["labeled"], inputs["weak"], inputs["strong"]], axis=0)
        features, logits = self.student(x, training=training)
        return {"features": features, "logits": logits}

    def update_ema(self):
        decay = ema_decay_at(self.fixmatch.ema_decay, self.step_counter)
        for ema_var, var in self._ema_pairs:
            value = ops.stop_gradient(ops.cast(var, ema_var.dtype))
            # BatchNorm statistics are copied, as the FixMatch reference implementations do
            ema_var.assign(decay * ema_var + (1.0 - decay) * value if var.trainable else value)

    def replica_statistics(self) -> list:
        """The variables a replica updates from its own batch: the student's BatchNorm moving statistics and their
        EMA copies (everything else is updated the same way on every replica)."""
        pairs = [(e, v) for e, v in self._ema_pairs if not v.trainable and "float" in str(v.dtype)]
        return [v for _, v in pairs] + [e for e, _ in pairs]

    @staticmethod
    def global_mean(terms, weights=None):
        """sum_i w_i t_i / sum_i w_i over the batch (w = 1 when None); inside one of several replicas the replica's
        share of the global batch's mean: the denominator summed over the replicas."""
        terms = ops.cast(terms, "float32")
        if not replicas.replicated():
            return ops.mean(terms) if weights is None else ops.sum(terms * weights) / ops.maximum(ops.sum(weights), 1e-12)
        weights = ops.ones_like(terms) if weights is None else ops.cast(weights, "float32")
        return ops.sum(terms * weights) / ops.maximum(replicas.sum_replicas(ops.sum(weights)), 1e-12)

    def labeled_term(self, y, labeled_logits):
        """The labeled loss: the loss itself in one process; inside several replicas its per-example terms averaged
        over the global batch (weighted by ``labeled_class_weights`` when given, as models.distribute.fit does)."""
        if not replicas.replicated() and self.labeled_class_weights is None:
            return self.labeled_loss(y, labeled_logits)
        y = ops.cast(ops.reshape(y, (-1,)), "int32")
        weights = None if self.labeled_class_weights is None else ops.take(self.labeled_class_weights, y)
        return self.global_mean(self.labeled_loss.call(y, labeled_logits), weights)

    def daso_active(self):
        return ops.cast(self.step_counter >= self.warmup_steps, "float32")

    def pseudo_labels(self, weak_logits, weak_features):
        """(probabilities, semantic similarity logits or None): the linear softmax, blended with the
        prototype similarities once DASO is past its warm-up."""
        probs = ops.softmax(ops.cast(ops.stop_gradient(weak_logits), "float32"), axis=-1)
        if not self.use_daso:
            return probs, None
        sim_weak = cosine_similarity_logits(ops.cast(ops.stop_gradient(weak_features), "float32"), self.queue.prototypes(),
                                            self.daso.proto_temperature)
        blended = blend_pseudo_labels(probs, ops.softmax(sim_weak, axis=-1), self.pl_counts.counts(), self.dist_temperature)
        on = self.daso_active()
        return on * blended + (1.0 - on) * probs, sim_weak

    def terms(self, x, y, y_pred, training=True) -> dict:
        """The loss ("loss") and its parts, updating the EMA and the DASO state when training (see the class)."""
        n_l, n_u = x["labeled"].shape[0], x["weak"].shape[0]
        logits, features = y_pred["logits"], y_pred["features"]
        labeled_logits, weak_logits, strong_logits = logits[:n_l], logits[n_l:n_l + n_u], logits[n_l + n_u:]
        labeled_loss = self.labeled_term(y, labeled_logits)
        if training:
            self.update_ema()
            if self.use_daso:  # the EMA network's features of the (global batch's) labeled images feed the queue
                ema_features = ops.cast(self.ema_features(x["labeled"], training=False), "float32")
                self.queue.enqueue(replicas.gather_replicas(ema_features), replicas.gather_replicas(y))
        probs, sim_weak = self.pseudo_labels(weak_logits, features[n_l:n_l + n_u])
        confidence, targets = ops.max(probs, axis=-1), ops.argmax(probs, axis=-1)
        mask = ops.cast(confidence >= self.fixmatch.threshold, "float32")
        strong_log_probs = ops.log_softmax(ops.cast(strong_logits, "float32"), axis=-1)
        ce = -ops.take_along_axis(strong_log_probs, ops.cast(targets, "int32")[:, None], axis=-1)[:, 0]
        consistency = self.global_mean(mask * ce)  # averaged over all unlabeled images, masked ones count as 0
        total = labeled_loss + self.fixmatch.lambda_u * consistency
        alignment, on = ops.zeros(()), ops.zeros(())
        if self.use_daso:
            on = self.daso_active()
            sim_strong = cosine_similarity_logits(ops.cast(features[n_l + n_u:], "float32"), self.queue.prototypes(),
                                                  self.daso.proto_temperature)
            alignment = on * self.global_mean(semantic_alignment_terms(sim_weak, sim_strong))
            total = total + self.daso.align_weight * alignment
            if training:  # the global batch's pseudo-label counts
                self.pl_counts.update_counts(replicas.sum_replicas(self.pl_counts.step_counts(targets)))
        if training:
            self.step_counter.assign(self.step_counter + 1)
        return {"loss": total, "labeled_loss": labeled_loss, "consistency_loss": consistency,
                "alignment_loss": alignment, "mask_rate": self.global_mean(mask), "daso_on": on}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self.terms(x, y, y_pred, training)
        for name, tracker in self.trackers.items():
            tracker.update_state(terms[name])
        return terms["loss"]

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return self.get_metrics_result()


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
    """A ``tf.function(iterator)`` (models.distribute.global_step): one training step on every replica on its share
    of the iterator's next global batch, returning the global batch's loss terms (the replicas' shares summed;
    daso_on, the same everywhere, averaged)."""
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

"""Self-supervised pre-training (SSP) of the backbone: rotation prediction and MoCo v2.

"Rethinking the Value of Labels for Improving Class-Imbalanced Learning" (Yang & Xu, NeurIPS 2020):
pre-train the backbone on the training images WITHOUT their labels, then train any supervised method
from it (models.toolkit.warm_start loads the backbone strictly and the head starts fresh). Settings taken from the
official code (YyzHarry/imbalanced-semi-self):

* rotation (its pretrain_rot.py): a 4-way linear head on the pooled backbone features, cross-entropy;
  SGD momentum 0.9, lr 0.1, weight decay 2e-4, batch 128, 200 epochs, linear warm-up over the first
  5 epochs; crop + flip augmentation. It rotates each image by one random k; here every image is
  shown at all four angles (RotNet's form, four times the signal per image read).
* MoCo v2 (its pretrain_moco.py, moco/builder.py): a 2-layer MLP projection head (hidden width = the
  backbone's feature width) to 128-d, L2-normalised; the key encoder an exponential moving average of
  the query encoder (m = 0.999); a FIFO queue of K negatives; temperature 0.2; InfoNCE; SGD lr 0.015
  at batch 128, weight decay 1e-4, cosine schedule, 200 epochs; views: random resized crop (scale
  0.2-1), colour jitter 0.4 with p=0.8, Gaussian blur sigma 0.1-2 with p=0.5, horizontal flip.

One device here, so MoCo's shuffle-BN across GPUs becomes: the key batch is randomly permuted and
encoded in ``key_bn_groups`` separate sub-batches, each with its own BatchNorm statistics, then put
back in order; a key's BN statistics then come from a random subset, not the query's batch (batch
statistics shared by a query and its positive let the model find the positive without looking at
the image). The key encoder keeps batch-statistics BN as in MoCo (its own moving statistics follow
from its forward passes; the EMA covers the parameters, as MoCo's does).

The queue and the key encoder are non-trainable variables assigned inside ``call(training=True)``, as
BatchNormalization assigns its moving statistics: Keras's JAX trainer carries such assignments as
state, so the same code trains on TensorFlow and JAX.

Under a strategy (``train.distribute``, models/distribute.py) the pre-training runs the custom loop
:func:`fit_pretext` (Keras 3's ``model.fit`` fails under MultiWorkerMirroredStrategy): each replica's loss
is its terms' sum over the global batch's count, the images are sharded across workers, the chief exports.
Measured here (Keras 3.15, TF 2.21, MirroredStrategy over 2 logical CPUs): a Keras variable created under the
scope is a MirroredVariable, ON_WRITE, aggregation NONE (trainable or not, BatchNorm's statistics too), and
``assign`` in a replica context neither fails nor communicates: each replica's copy takes its own replica's
value (with aggregation ``only_first_replica`` replica 0's value is copied to all). So MoCo stays one model on
every replica with no extra collective for its state: the key encoder's EMA is computed on each replica from
the same query weights (the optimizer applies the all-reduced gradients everywhere), hence the same; the keys
of the global batch are gathered across replicas (models.replicas.gather_replicas, MoCo's ``concat_all_gather``)
before each replica enqueues them, so every replica's queue is the one a single process would hold after the
same global batches. Only BatchNorm's moving statistics differ (each replica normalises by its own batch, as
the classification loop): they are averaged across replicas at each epoch's end.

MoCo's shuffle-BN (keys' BN statistics from another GPU's batch) is not needed under a strategy: the
project's backbone keeps per-replica BatchNorm (no SyncBN, models.distribute.fit), so each replica's keys
and queries already see BN statistics of that replica's batch only, and within it the random key sub-batches
above (``key_bn_groups``, sub-batches of at least 8) give each key statistics of a random subset, as in one
process; shuffling across replicas would only exchange one random subset for another at the cost of two
more collectives a step. Under mixed precision the encoders compute in 16 bits, while MoCo itself is a float32 layer: the
queries and keys are normalised, the logits computed, the EMA and the queue updated in float32 (a mixed
layer would read its variables cast to 16 bits inside ``call``).
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
from keras import layers, ops

from models import backbones, cluster, distribute, inputs, precision, replicas, toolkit
from models.config import DistributeConfig, SSPConfig
from models.job import PRETRAIN, TrainerJob

SUMMARY_FILE = "ssp_summary.json"
PRETEXT_WEIGHTS_FILE = "pretext.weights.npz"  # a worker's final pretext model, in its scratch folder


def queue_size_for(num_examples: int, batch_size: int, requested: int | None = None) -> int:
    """MoCo's K: as requested, else half the pre-training images capped at 4096 (MoCo's CIFAR-scale
    queue; the official 65536 is about half of ImageNet-LT). A multiple of the batch, so each batch of
    keys replaces one whole block of the queue."""
    k = requested if requested is not None else max(batch_size, min(4096, num_examples // 2) // batch_size * batch_size)
    if k <= 0 or k % batch_size:
        raise ValueError(f"pretrain.moco.queue_size {k} must be a positive multiple of pretrain.batch_size {batch_size}")
    return k


# ---------------------------------------------------------------------------------------------------
# Rotation prediction (Gidaris et al., ICLR 2018)


def rotations(images):
    """All four rotations of a batch (B, H, W, C): (4B, H, W, C) with block k = np.rot90(image, k)
    on the height/width axes (counter-clockwise), and the labels k (4B,) int32, block by block."""
    if images.shape[1] is not None and images.shape[1] != images.shape[2]:
        raise ValueError(f"rotation pre-training needs square images, got {images.shape[1]}x{images.shape[2]}")
    rotated = ops.concatenate([ops.rot90(images, k=k, axes=(1, 2)) for k in range(4)], axis=0)
    return rotated, rotation_labels(ops.shape(images)[0])


def rotation_labels(batch_size):
    return ops.repeat(ops.arange(4, dtype="int32"), batch_size)


class RotationPretext(keras.Model):
    """Backbone + a 4-way linear head. ``call(images)`` rotates the batch four ways and returns the
    (4B, 4) logits; the loss is cross-entropy against the rotation index:
    L = -1/(4B) sum_{i,k} log softmax(f(rot_k(x_i)))_k."""

    def __init__(self, backbone: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = layers.Dense(4, name="rotation_head")
        self.pretext_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def call(self, images, training=False):
        rotated, _ = rotations(images)
        return self.head(self.backbone(rotated, training=training))

    def pretext_labels(self, logits):
        """The rotation index of each of the (4B, 4) logits' rows."""
        return rotation_labels(ops.shape(logits)[0] // 4)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(pretext_loss_terms(self, y_pred))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.pretext_accuracy.update_state(self.pretext_labels(y_pred), y_pred)
        return self.get_metrics_result()


# ---------------------------------------------------------------------------------------------------
# MoCo v2 (He et al., CVPR 2020; Chen et al., 2020)


def projection_head(width: int, dim: int, name: str) -> keras.Model:
    """MoCo v2's MLP: Dense(width) -> ReLU -> Dense(dim)."""
    inputs = keras.Input((width,), name=f"{name}_in")
    hidden = layers.Dense(width, activation="relu", name=f"{name}_hidden")(inputs)
    return keras.Model(inputs, layers.Dense(dim, name=f"{name}_out")(hidden), name=name)


def _l2_normalize(x):
    """x / ||x|| in float32 (under mixed precision the projections arrive in 16 bits; the queue holds float32)."""
    x = ops.cast(x, "float32")
    return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)


def pretext_loss_terms(model, logits):
    """The per-example cross-entropy terms of a pretext model's logits against its ``pretext_labels``, in float32;
    the loss is their mean over the (global) batch."""
    labels = model.pretext_labels(logits)
    return ops.cast(keras.losses.sparse_categorical_crossentropy(labels, ops.cast(logits, "float32"), from_logits=True),
                    "float32")


class MoCo(keras.Model):
    """Momentum contrast. Input: (B, 2, H, W, C), two augmented views of each image. Output: logits
    (B, 1+K) = [q.k+, q.queue^T] / T with q, k the normalised projections of view 0 (query encoder)
    and view 1 (key encoder); the positive is column 0, so the loss is InfoNCE:
    L = -1/B sum_i log( exp(q_i.k_i/T) / (exp(q_i.k_i/T) + sum_j exp(q_i.n_j/T)) ).

    In ``call(training=True)``, before the keys are computed: theta_k <- m theta_k + (1-m) theta_q for
    every key-encoder parameter; after the logits: the batch's keys replace the oldest B rows of the
    queue (FIFO, pointer advancing by B modulo K). Under a strategy B is the global batch: each replica
    enqueues every replica's keys (models.replicas.gather_replicas), see the module docstring.
    """

    def __init__(self, query_backbone: keras.Model, key_backbone: keras.Model, dim: int = 128, queue_size: int = 4096,
                 momentum: float = 0.999, temperature: float = 0.2, seed: int = 0, key_bn_groups: int = 4, **kwargs):
        # float32 itself whatever the global policy: a mixed layer reads its float variables cast to 16 bits inside
        # call (Keras' autocast scope), which would run the EMA (m = 0.999 is 1.0 in bfloat16) and the queue in 16 bits;
        # the encoders it holds keep the global (mixed) policy and compute in 16 bits
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        width = int(query_backbone.output.shape[-1])
        self.query_backbone, self.key_backbone = query_backbone, key_backbone
        self.query_head = projection_head(width, dim, "query_projection")
        self.key_head = projection_head(width, dim, "key_projection")
        self.momentum, self.temperature, self.queue_size, self.dim = float(momentum), float(temperature), int(queue_size), dim
        self.key_bn_groups = int(key_bn_groups)
        pairs = list(zip(query_backbone.weights + self.query_head.weights, key_backbone.weights + self.key_head.weights,
                         strict=True))
        for q, k in pairs:
            if tuple(q.shape) != tuple(k.shape):
                raise ValueError(f"query/key encoders differ: {q.path} {q.shape} vs {k.path} {k.shape}")
            k.assign(np.array(ops.convert_to_numpy(q)))  # the key encoder starts as a copy (own buffer: JAX donates both)
            # No gradient reaches the key encoder; its layers stay trainable so its BatchNorm uses batch statistics.
            k.trainable = False
        self._pairs = [(q, k) for q, k in pairs if q.trainable]  # the EMA covers the parameters
        self.seed_generator = keras.random.SeedGenerator(seed)
        rng = np.random.default_rng(seed)
        start = rng.standard_normal((self.queue_size, dim)).astype("float32")
        start /= np.linalg.norm(start, axis=1, keepdims=True)  # random unit vectors, as the official queue starts
        self.queue = self.add_weight(shape=(self.queue_size, dim), name="queue", trainable=False,
                                     initializer=keras.initializers.Constant(start))
        self.queue_pointer = self.add_weight(shape=(), name="queue_pointer", dtype="int32", trainable=False,
                                             initializer="zeros")
        self.contrast_accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def momentum_update(self):
        m = self.momentum
        for q, k in self._pairs:
            k.assign(m * k.value + (1.0 - m) * ops.stop_gradient(q.value))

    def enqueue(self, keys):
        batch = keys.shape[0]
        if batch is None or self.queue_size % batch:
            raise ValueError(f"MoCo queue size {self.queue_size} is not a multiple of the batch {batch}")
        pointer = self.queue_pointer.value
        start = ops.stack([pointer, ops.zeros_like(pointer)])
        self.queue.assign(ops.slice_update(self.queue.value, start, ops.cast(keys, self.queue.dtype)))
        self.queue_pointer.assign((pointer + batch) % self.queue_size)

    def encode_query(self, images, training=False):
        return _l2_normalize(self.query_head(self.query_backbone(images, training=training), training=training))

    def encode_key(self, images, training=False):
        """Normalised keys; in training, BN statistics per random sub-batch (see the module docstring)."""
        batch = images.shape[0]
        groups = self.key_bn_groups if training and batch and batch % self.key_bn_groups == 0 and \
            batch // self.key_bn_groups >= 8 else 1
        if not training or groups == 1:
            k = self.key_head(self.key_backbone(images, training=training), training=training)
            return ops.stop_gradient(_l2_normalize(k))
        order = keras.random.shuffle(ops.arange(batch), seed=self.seed_generator)
        shuffled, size = ops.take(images, order, axis=0), batch // groups
        k = ops.concatenate([self.key_head(self.key_backbone(shuffled[g * size:(g + 1) * size], training=True), training=True)
                             for g in range(groups)], axis=0)
        return ops.stop_gradient(_l2_normalize(ops.take(k, ops.argsort(order), axis=0)))

    def call(self, views, training=False):
        q = self.encode_query(views[:, 0], training=training)
        if training:
            self.momentum_update()
        k = self.encode_key(views[:, 1], training=training)
        negatives = self.queue.value  # read before this batch's keys enter it
        positive = ops.sum(q * k, axis=-1, keepdims=True)
        logits = ops.concatenate([positive, ops.matmul(q, ops.transpose(negatives))], axis=-1) / self.temperature
        if training:
            self.enqueue(replicas.gather_replicas(k))
        return logits

    def pretext_labels(self, logits):
        """The positive's column (0) for each row of the logits."""
        return ops.zeros((ops.shape(logits)[0],), dtype="int32")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(pretext_loss_terms(self, y_pred))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.contrast_accuracy.update_state(self.pretext_labels(y_pred), y_pred)
        return self.get_metrics_result()


def build_pretext_model(cfg: SSPConfig, backbone_name: str, image_shape, num_examples: int,
                        global_batch: int | None = None):
    """(pretext model, the backbone it trains). The backbone comes from models.backbones.build_backbone,
    the same builder the supervised Trainer uses, so its layer names match for the warm start. ``global_batch``: the
    batch a step enqueues (MoCo's queue is a multiple of it); None: pretrain.batch_size."""
    backbone = backbones.build_backbone(backbone_name, image_shape)
    if cfg.method == "rotation":
        model = RotationPretext(backbone, name="rotation_pretext")
        model(np.zeros((1, *image_shape), "float32"))  # built before fit (BackupAndRestore needs it)
    elif cfg.method == "moco":
        key = backbones.build_backbone(backbone_name, image_shape, model_name=f"{backbone.name}_key")
        k = queue_size_for(num_examples, global_batch or cfg.batch_size, cfg.moco.queue_size)
        model = MoCo(backbone, key, cfg.moco.dim, k, cfg.moco.momentum, cfg.moco.temperature, cfg.seed, name="moco")
        model(np.zeros((1, 2, *image_shape), "float32"))
    else:
        raise ValueError(f"no pretext model for ssp={cfg.method!r}")
    return model, backbone


def batch_norm_statistics(model: keras.Model) -> list:
    """The BatchNorm moving statistics of every encoder in ``model``: the only state a replica updates from its own
    batch (MoCo's queue and key encoder are the same on every replica; see the module docstring)."""
    return [v for layer in model._flatten_layers() if isinstance(layer, layers.BatchNormalization)
            for v in (layer.moving_mean, layer.moving_variance)]


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

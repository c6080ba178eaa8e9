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
"""

from __future__ import annotations

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

from models import backbones, inputs, toolkit
from models.config import SSP_METHODS, SSPConfig
from models.job import PRETRAIN, TrainerJob

METHODS = SSP_METHODS
SUMMARY_FILE = "ssp_summary.json"


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

    def _labels(self, logits):
        return rotation_labels(ops.shape(logits)[0] // 4)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        ce = keras.losses.sparse_categorical_crossentropy(self._labels(y_pred), y_pred, from_logits=True)
        return ops.mean(ce)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.pretext_accuracy.update_state(self._labels(y_pred), y_pred)
        return self.get_metrics_result()


# ---------------------------------------------------------------------------------------------------
# MoCo v2 (He et al., CVPR 2020; Chen et al., 2020)


def projection_head(width: int, dim: int, name: str) -> keras.Model:
    """MoCo v2's MLP: Dense(width) -> ReLU -> Dense(dim)."""
    inputs = keras.Input((width,), name=f"{name}_in")
    hidden = layers.Dense(width, activation="relu", name=f"{name}_hidden")(inputs)
    return keras.Model(inputs, layers.Dense(dim, name=f"{name}_out")(hidden), name=name)


def _l2_normalize(x):
    return x / ops.maximum(ops.norm(x, axis=-1, keepdims=True), 1e-12)


class MoCo(keras.Model):
    """Momentum contrast. Input: (B, 2, H, W, C), two augmented views of each image. Output: logits
    (B, 1+K) = [q.k+, q.queue^T] / T with q, k the normalised projections of view 0 (query encoder)
    and view 1 (key encoder); the positive is column 0, so the loss is InfoNCE:
    L = -1/B sum_i log( exp(q_i.k_i/T) / (exp(q_i.k_i/T) + sum_j exp(q_i.n_j/T)) ).

    In ``call(training=True)``, before the keys are computed: theta_k <- m theta_k + (1-m) theta_q for
    every key-encoder parameter; after the logits: the batch's keys replace the oldest B rows of the
    queue (FIFO, pointer advancing by B modulo K).
    """

    def __init__(self, query_backbone: keras.Model, key_backbone: keras.Model, dim: int = 128, queue_size: int = 4096,
                 momentum: float = 0.999, temperature: float = 0.2, seed: int = 0, key_bn_groups: int = 4, **kwargs):
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
        batch = int(keys.shape[0])
        if self.queue_size % batch:
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
            self.enqueue(k)
        return logits

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels = ops.zeros((ops.shape(y_pred)[0],), dtype="int32")
        return ops.mean(keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.contrast_accuracy.update_state(ops.zeros((ops.shape(y_pred)[0],), dtype="int32"), y_pred)
        return self.get_metrics_result()


def build_pretext_model(cfg: SSPConfig, backbone_name: str, image_shape, num_examples: int):
    """(pretext model, the backbone it trains). The backbone comes from models.backbones.build_backbone,
    the same builder the supervised Trainer uses, so its layer names match for the warm start."""
    backbone = backbones.build_backbone(backbone_name, image_shape)
    if cfg.method == "rotation":
        model = RotationPretext(backbone, name="rotation_pretext")
        model(np.zeros((1, *image_shape), "float32"))  # built before fit (BackupAndRestore needs it)
    elif cfg.method == "moco":
        key = backbones.build_backbone(backbone_name, image_shape, model_name=f"{backbone.name}_key")
        k = queue_size_for(num_examples, cfg.batch_size, cfg.moco.queue_size)
        model = MoCo(backbone, key, cfg.moco.dim, k, cfg.moco.momentum, cfg.moco.temperature, cfg.seed, name="moco")
        model(np.zeros((1, 2, *image_shape), "float32"))
    else:
        raise ValueError(f"no pretext model for ssp={cfg.method!r}")
    return model, backbone


# ---------------------------------------------------------------------------------------------------
# Training (tf.data input, like models.training)


def image_dataset(file_groups, image_shape):
    """The decoded uint8 images of every file pattern in ``file_groups``, cached; labels are not parsed."""
    ds = None
    for files in file_groups:
        part = inputs.read_examples(files, image_shape, with_labels=False).map(lambda image: image)
        ds = part if ds is None else ds.concatenate(part)
    return ds.cache()


def pretext_dataset(cfg: SSPConfig, images, image_shape):
    """Batches for the pretext task: crop+flip images (rotation) or two MoCo v2 views stacked on axis 1."""

    ds = images.shuffle(50_000, seed=cfg.seed, reshuffle_each_iteration=True).repeat()
    if cfg.method == "rotation":
        ds = ds.map(lambda x: inputs.to_float(inputs.augment(x)), num_parallel_calls=inputs.AUTOTUNE)
    else:
        ds = ds.map(lambda x: tf.stack([inputs.contrastive_view(x), inputs.contrastive_view(x)]),
                    num_parallel_calls=inputs.AUTOTUNE)
    return ds.batch(cfg.batch_size, drop_remainder=True).prefetch(inputs.AUTOTUNE)


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
             backup_dir: str | None = None, extra_callbacks=()):
    """Pre-train a backbone; return (backbone, summary dict)."""
    keras.utils.set_random_seed(cfg.seed)
    images = image_dataset(file_groups, image_shape)
    num_examples = int(images.reduce(np.int64(0), lambda n, _: n + 1))  # this pass also fills the cache
    if num_examples < cfg.batch_size:
        raise ValueError(f"pre-training set has {num_examples} images, fewer than one batch of {cfg.batch_size}")
    steps = num_examples // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    model, backbone = build_pretext_model(cfg, backbone_name, image_shape, num_examples)
    random_probe = linear_probe_accuracy(backbone, eval_files, image_shape, cfg.seed) if eval_files else None
    hp = cfg.resolved()
    total = cfg.epochs * steps
    warmup = int(round(hp["warmup_fraction"] * total))
    model.compile(toolkit.sgd_cosine(hp["learning_rate"], total, cfg.momentum, hp["weight_decay"], warmup_steps=warmup))
    progress = toolkit.EpochProgress(cfg.epochs, prefix=f"[pretrain:{cfg.method}]")
    callbacks = toolkit.standard_callbacks(progress, model_run_dir, backup_dir, extra=extra_callbacks)
    t0 = time.time()
    model.fit(pretext_dataset(cfg, images, image_shape), epochs=cfg.epochs, steps_per_epoch=steps, verbose=0,
              callbacks=callbacks)
    seconds = time.time() - t0
    history = progress.history
    probe = linear_probe_accuracy(backbone, eval_files, image_shape, cfg.seed) if eval_files else None
    print(f"[pretrain:{cfg.method}] linear probe {probe} (random init {random_probe})", file=sys.stderr, flush=True)
    summary = {
        "method": cfg.method, "data": cfg.data, "epochs": cfg.epochs, "steps_per_epoch": steps,
        "num_examples": num_examples, "backbone": backbone_name,
        "final_loss": history[-1]["loss"] if history else None,
        "final_pretext_accuracy": history[-1].get("accuracy") if history else None,
        "linear_probe_accuracy": probe, "random_init_probe_accuracy": random_probe,
        "pretrain_seconds": seconds,
        "images_per_second": steps * cfg.batch_size * len(history) / seconds if seconds and history else None,
        "resolved": hp, "queue_size": getattr(model, "queue_size", None),
        "config": dataclasses.asdict(cfg), "history": history, "tensorflow": tf.__version__,
    }
    return backbone, summary


def pretrain_backbone(cfg: SSPConfig, backbone_name: str, image_shape, file_groups, model_run_dir: str,
                      weights_dir: str, eval_files=None, backup_dir: str | None = None) -> dict:
    """:func:`pretrain`, then the backbone's weights saved in ``weights_dir`` (what a strict warm start loads);
    the summary, with ``backbone_variables`` (how many were saved)."""
    backbone, summary = pretrain(cfg, backbone_name, image_shape, file_groups, model_run_dir, eval_files, backup_dir)
    tf.io.gfile.makedirs(weights_dir)
    summary["backbone_variables"] = len(backbones.save_backbone_weights(backbone, weights_dir))
    return summary


def run_fn(fn_args) -> None:
    """TFX entry point of the pre-training Trainer (components.trainer.SSPPretrainer), by the dotted path
    models.ssp.run_fn. custom_config: a models.job.TrainerJob of stage PRETRAIN (pretrain, backbone, image_shape,
    backup_dir and, from the executor, unlabeled_files). Writes the backbone weights to the serving model dir (the
    Model artifact the supervised Trainer takes as base_model) and ssp_summary.json to the model run dir."""
    job = TrainerJob.from_custom_config(fn_args.custom_config, PRETRAIN)
    cfg = job.pretrain
    groups = [fn_args.train_files]
    if cfg.data == "labeled+unlabeled":
        if not job.unlabeled_files:
            raise ValueError("pretrain.data=labeled+unlabeled but the pre-training Trainer got no unlabeled examples")
        groups.append(job.unlabeled_files)
    summary = pretrain_backbone(cfg, job.backbone, job.image_shape, groups, fn_args.model_run_dir,
                                fn_args.serving_model_dir, fn_args.eval_files, job.backup_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2)


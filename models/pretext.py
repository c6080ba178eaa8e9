"""The pretext tasks of the self-supervised pre-training (models/ssp.py trains them): rotation prediction and MoCo v2,
as the official code of "Rethinking the Value of Labels" (YyzHarry/imbalanced-semi-self) sets them:

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

import keras
import numpy as np
from keras import layers, ops

from models import backbones, replicas
from models.config import SSPConfig


def queue_size_for(num_examples: int, batch_size: int, requested: int | None = None) -> int:
    """MoCo's K: as requested, else half the pre-training images capped at 4096 (MoCo's CIFAR-scale
    queue; the official 65536 is about half of ImageNet-LT). A multiple of the batch, so each batch of
    keys replaces one whole block of the queue."""
    k = requested if requested is not None else max(batch_size, min(4096, num_examples // 2) // batch_size * batch_size)
    if k <= 0 or k % batch_size:
        raise ValueError(f"pretrain.moco.queue_size {k} must be a positive multiple of pretrain.batch_size {batch_size}")
    return k


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

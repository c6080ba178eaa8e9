"""DASO: Distribution-Aware Semantics-Oriented pseudo-labels (Oh, Kim and Kweon, CVPR 2022).

FixMatch's linear pseudo-labels are biased toward the head classes. DASO blends them with
*semantic* pseudo-labels, a softmax over the cosine similarities between an unlabeled image's
feature and class prototypes (per-class means of a class-balanced queue of labeled features),
and trusts the semantic side more for a class the more often the linear classifier predicts it:

    q_k = (s_k / T_proto),  s_k = cos(z, mu_k)                 cosine_similarity_logits
    p_hat = N_hat ** (1 / T_dist) / sum(...), w = p_hat / max p_hat   distribution_aware_weights
    p = (1 - w_c) * p_linear + w_c * softmax(q),  c = argmax p_linear  blend_pseudo_labels
    L_align = -sum softmax(q_weak) * log softmax(q_strong)     semantic_alignment_loss

N_hat are the counts of the (final) pseudo-labels over recent training steps
(:class:`PseudoLabelCountWindow`). All state lives in non-trainable variables updated with
``assign`` (as BatchNormalization's moving statistics), so the layers run on TensorFlow and JAX.
The state is float32 (or int32) under every dtype policy and never autocast: under mixed_bfloat16 a
bfloat16 bank would round features to 8 significant bits and counts above 256 to even numbers.
Under a data-parallel strategy every replica holds its own copy and applies the same update
(models.fixmatch.FixMatchModel gathers the global batch first; models/distribute.py).
Defaults follow the official code (ytaek-oh/daso): queue of 256 features a class, T_proto 0.05,
counts over 100 steps.
"""

from __future__ import annotations

from keras import layers, ops, saving

_EPS = 1e-12


@saving.register_keras_serializable(package="longtail")
class BalancedFeatureQueue(layers.Layer):
    """A class-balanced FIFO memory: for every class the ``size_per_class`` most recent features.

    ``enqueue(features, labels)`` writes each class's new features at that class's ring position
    (oldest overwritten first); when a batch holds more than ``size_per_class`` of a class only its
    last ``size_per_class`` are kept. ``prototypes()`` is the (num_classes, feature_dim) per-class
    mean of what is queued, zeros for a class with nothing queued yet.

    >>> q = BalancedFeatureQueue(2, size_per_class=2)
    >>> q.build((None, 3))  # the features' width; a call builds it too
    >>> q.enqueue(np.eye(3, dtype="float32"), np.array([0, 0, 1]))
    >>> q.prototypes()  # [[0.5, 0.5, 0], [0, 0, 1]]
    """

    def __init__(self, num_classes: int, size_per_class: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.size_per_class = int(num_classes), int(size_per_class)
        self.feature_dim = None  # from the features' last axis (build)

    def build(self, input_shape):
        self.feature_dim = int(input_shape[-1])
        c, s, d = self.num_classes, self.size_per_class, self.feature_dim
        # one flat (C * S, D) bank: slot c * S + j is the j-th ring slot of class c
        self.bank = self.add_weight(shape=(c * s, d), initializer="zeros", dtype="float32", trainable=False,
                                    autocast=False, name="bank")
        self.filled = self.add_weight(shape=(c,), initializer="zeros", dtype="int32", trainable=False, autocast=False,
                                      name="filled")
        self.write_pos = self.add_weight(shape=(c,), initializer="zeros", dtype="int32", trainable=False, autocast=False,
                                         name="write_pos")

    def enqueue(self, features, labels):
        c, s = self.num_classes, self.size_per_class
        features = ops.cast(ops.stop_gradient(features), self.bank.dtype)
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        one_hot = ops.one_hot(labels, c, dtype="int32")  # (B, C)
        per_class = ops.sum(one_hot, axis=0)  # (C,)
        # rank of each example among the batch's examples of its class (0 for the first)
        rank = ops.sum((ops.cumsum(one_hot, axis=0) - one_hot) * one_hot, axis=1)
        count_of_own = ops.take(per_class, labels)
        keep = rank >= count_of_own - s  # only the last S of a class survive (FIFO)
        slot = ops.mod(ops.take(self.write_pos, labels) + rank, s)
        flat = labels * s + slot
        # each kept example writes a distinct slot, so a one-hot matmul is an exact scatter on every backend
        writes = ops.one_hot(flat, c * s, dtype=self.bank.dtype) * ops.cast(keep, self.bank.dtype)[:, None]  # (B, C*S)
        written = ops.minimum(ops.sum(writes, axis=0), 1.0)[:, None]
        self.bank.assign(self.bank * (1.0 - written) + ops.matmul(ops.transpose(writes), features))
        self.write_pos.assign(ops.mod(self.write_pos + per_class, s))
        self.filled.assign(ops.minimum(self.filled + per_class, s))

    def prototypes(self):
        c, s, d = self.num_classes, self.size_per_class, self.feature_dim
        bank = ops.reshape(self.bank, (c, s, d))
        # slots fill from 0 upward and the ring only wraps once full, so slots < filled are the valid ones
        valid = ops.cast(ops.arange(s)[None, :] < self.filled[:, None], bank.dtype)  # (C, S)
        total = ops.sum(bank * valid[:, :, None], axis=1)
        return total / ops.maximum(ops.cast(self.filled, bank.dtype), 1.0)[:, None]

    def call(self, features, labels=None, training=None):
        """Enqueue when training with labels; return the prototypes."""
        if training and labels is not None:
            self.enqueue(features, labels)
        return self.prototypes()

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "size_per_class": self.size_per_class}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("feature_dim", None)  # a model saved while the width was an argument: build() reads it now
        return cls(**config)


@saving.register_keras_serializable(package="longtail")
class PseudoLabelCountWindow(layers.Layer):
    """Per-class counts of the pseudo-labels of the last ``window`` training steps (a ring of per-step
    counts). The official code refreshes a block count every 100 steps; a sliding window gives the same
    100-step counts without leaving them empty or stale when DASO switches on after a short warm-up."""

    def __init__(self, num_classes: int, window: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.window = int(num_classes), int(window)

    def build(self, input_shape=None):
        """The state does not depend on an input: the owner builds the window before its first update."""
        self.ring = self.add_weight(shape=(self.window, self.num_classes), initializer="zeros", dtype="float32",
                                    trainable=False, autocast=False, name="ring")
        self.step = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False, autocast=False,
                                    name="step")

    def step_counts(self, pseudo_labels):
        """The per-class counts of one step's pseudo-labels, (num_classes,) float32."""
        return ops.sum(ops.one_hot(ops.cast(ops.reshape(pseudo_labels, (-1,)), "int32"), self.num_classes,
                                   dtype=self.ring.dtype), axis=0)

    def update(self, pseudo_labels):
        self.update_counts(self.step_counts(pseudo_labels))

    def update_counts(self, step_counts):
        """Record one step's per-class counts (:meth:`step_counts`, or their sum over the replicas)."""
        step_counts = ops.cast(step_counts, self.ring.dtype)
        row = ops.cast(ops.arange(self.window) == ops.mod(self.step, self.window), self.ring.dtype)[:, None]
        self.ring.assign(self.ring * (1.0 - row) + row * step_counts[None, :])
        self.step.assign(self.step + 1)

    def counts(self):
        return ops.sum(self.ring, axis=0)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "window": self.window}


def cosine_similarity_logits(features, prototypes, temperature: float = 0.05):
    """cos(z_i, mu_k) / T, shape (batch, num_classes). A zero prototype (an empty class) has
    similarity 0, not NaN: both norms are clamped away from 0."""
    z = features / ops.maximum(ops.norm(features, axis=-1, keepdims=True), _EPS)
    mu = prototypes / ops.maximum(ops.norm(prototypes, axis=-1, keepdims=True), _EPS)
    return ops.matmul(z, ops.transpose(mu)) / temperature


def distribution_aware_weights(pseudo_label_counts, temperature: float = 1.5):
    """w = p^(1/T) / sum p^(1/T), divided by its maximum, with p = counts / sum(counts).

    The most predicted class gets weight 1 (its pseudo-labels are taken from the semantic side),
    rare predictions keep most of their linear pseudo-label. T > 1 flattens the weights, T < 1
    sharpens them. All-zero counts (nothing gathered yet) give all-zero weights: no blending.
    """
    counts = ops.cast(pseudo_label_counts, "float32")
    p = counts / ops.maximum(ops.sum(counts), _EPS)
    sharpened = ops.power(p, 1.0 / temperature)
    sharpened = sharpened / ops.maximum(ops.sum(sharpened), _EPS)
    return sharpened / ops.maximum(ops.max(sharpened), _EPS)


def blend_pseudo_labels(linear_probs, semantic_probs, pseudo_label_counts, temperature: float = 1.5):
    """(1 - w) * linear + w * semantic, w the distribution-aware weight of each example's argmax linear class."""
    weights = distribution_aware_weights(pseudo_label_counts, temperature)
    w = ops.take(weights, ops.argmax(linear_probs, axis=-1))[:, None]
    return (1.0 - w) * linear_probs + w * semantic_probs


def semantic_alignment_terms(weak_logits, strong_logits):
    """Per example -sum_k softmax(weak)_k * log_softmax(strong)_k; the weak side is a constant target."""
    target = ops.stop_gradient(ops.softmax(ops.cast(weak_logits, "float32"), axis=-1))
    return -ops.sum(target * ops.log_softmax(ops.cast(strong_logits, "float32"), axis=-1), axis=-1)


def semantic_alignment_loss(weak_logits, strong_logits):
    """Batch mean of :func:`semantic_alignment_terms`."""
    return ops.mean(semantic_alignment_terms(weak_logits, strong_logits))

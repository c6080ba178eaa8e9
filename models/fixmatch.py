"""FixMatch (Sohn et al., NeurIPS 2020), optionally with DASO (Oh, Kim and Kweon, CVPR 2022): the Keras 3 model and
its loss terms (models/semi.py trains it).

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
Under a tf.distribute strategy (models.semi.fit_distributed) the EMA and DASO state are updated alike on every
replica from the gathered global batch (:class:`FixMatchModel`'s docstring has the measurements).
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from models import replicas
from models.config import DasoConfig, FixMatchConfig
from models.layers.daso import (
    BalancedFeatureQueue,
    PseudoLabelCountWindow,
    blend_pseudo_labels,
    cosine_similarity_logits,
    semantic_alignment_terms,
)

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

"""Feature Distribution Smoothing (FDS; Yang et al., "Delving into Deep Imbalanced Regression", ICML 2021).

Features of examples whose targets are close should be distributed alike. FDS keeps, per target
bucket b, a running mean mu_b and variance s2_b of the features, smooths them along the bucket axis
with a kernel k (reflect padding at both ends),

    mu~_b = sum_j k(j) mu_{b+j},    s2~_b = sum_j k(j) s2_{b+j},

and, while training, re-calibrates each feature z of an example in bucket b to

    z~ = (z - mu_b) * sqrt(clip(s2~_b / s2_b, 0.1, 10)) + mu~_b.

The statistics are updated once per epoch from the features of the whole training set (the
:class:`FDSUpdate` callback), with momentum; at inference the layer is the identity.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from models.density import _raw_window


def fds_kernel_window(kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0) -> np.ndarray:
    """FDS window: the kernel of size ``ks`` divided by its sum (smoothing keeps the scale)."""
    window = _raw_window(kernel, ks, sigma)
    return window / window.sum()


def calibrate_mean_var(x, m1, v1, m2, v2, clip_min: float = 0.1, clip_max: float = 10.0):
    """(x - m1) * sqrt(clip(v2 / v1, clip_min, clip_max)) + m2, feature by feature.

    Dimensions with v1 = 0 are left unchanged, and x is returned as is where v1 sums to ~0 (no
    statistics yet). m1, v1, m2, v2 broadcast against x: (D,) for one bucket, or (N, D) per row.
    """
    x, m1, v1, m2, v2 = (ops.convert_to_tensor(t, "float32") for t in (x, m1, v1, m2, v2))
    valid = ops.not_equal(v1, 0.0)
    factor = ops.clip(v2 / ops.where(valid, v1, 1.0), clip_min, clip_max)
    calibrated = ops.where(valid, (x - m1) * ops.sqrt(factor) + m2, x)
    no_stats = ops.sum(v1, axis=-1, keepdims=True) < 1e-10
    return ops.where(no_stats, x, calibrated)


@keras.saving.register_keras_serializable(package="longtail")
class FeatureDistributionSmoothing(keras.layers.Layer):
    """Per-bucket feature statistics, smoothed across neighbouring buckets, re-calibrating features.

    Args:
      bucket_num, bucket_start: buckets [bucket_start, bucket_num) are tracked; a bucket id below
        (above) is pooled into the first (last) tracked bucket, as the paper's code groups labels.
      kernel, ks, sigma: the smoothing window (:func:`fds_kernel_window`).
      momentum: weight of the old statistics in the per-epoch update; None: a running average by
        example count. The update at epoch ``start_update`` replaces the statistics (factor 0).
      start_update: first epoch whose features update the statistics.
      start_smooth: first epoch at which training features are calibrated.

    State (non-trainable variables made by :meth:`build` from the features' width D, saved with the model), each
    (bucket_num - bucket_start, D):
    ``running_mean``, ``running_var``, ``running_mean_last_epoch``, ``running_var_last_epoch``,
    ``smoothed_mean_last_epoch``, ``smoothed_var_last_epoch``; plus ``epoch`` (last epoch whose
    statistics were frozen), ``current_epoch`` (set by :class:`FDSUpdate`) and
    ``num_samples_tracked``.

    Example::

        fds = FeatureDistributionSmoothing(bucket_num=100)
        z = fds(features, bucket_ids, training=True)   # identity with training=False; builds on the first call
        fds.build((None, 64))                          # or before it, to update statistics first
    """

    def __init__(self, bucket_num: int, bucket_start: int = 0, kernel: str = "gaussian", ks: int = 5, sigma: float = 2.0,
                 momentum: float | None = 0.9, start_update: int = 0, start_smooth: int = 1, **kwargs):
        super().__init__(**kwargs)
        if bucket_num - bucket_start < 1:
            raise ValueError(f"no bucket to track: bucket_num {bucket_num}, bucket_start {bucket_start}")
        self.bucket_num, self.bucket_start = int(bucket_num), int(bucket_start)
        self.kernel, self.ks, self.sigma = kernel, int(ks), float(sigma)
        self.momentum = None if momentum is None else float(momentum)
        self.start_update, self.start_smooth = int(start_update), int(start_smooth)
        self.kernel_window = fds_kernel_window(kernel, ks, sigma).astype("float32")
        self.half_ks = (self.ks - 1) // 2
        self.feature_dim = None  # D, from the features' last axis (build)

    def build(self, features_shape, bucket_ids_shape=None):
        self.feature_dim = int(features_shape[-1])
        shape = (self.bucket_num - self.bucket_start, self.feature_dim)

        def state(name, value, s=shape, dtype="float32"):
            return self.add_weight(name=name, shape=s, initializer=keras.initializers.Constant(value), trainable=False,
                                   dtype=dtype)

        self.running_mean = state("running_mean", 0.0)
        self.running_var = state("running_var", 1.0)
        self.running_mean_last_epoch = state("running_mean_last_epoch", 0.0)
        self.running_var_last_epoch = state("running_var_last_epoch", 1.0)
        self.smoothed_mean_last_epoch = state("smoothed_mean_last_epoch", 0.0)
        self.smoothed_var_last_epoch = state("smoothed_var_last_epoch", 1.0)
        self.num_samples_tracked = state("num_samples_tracked", 0.0, (shape[0],))
        self.epoch = state("epoch", self.start_update, (), "int32")
        self.current_epoch = state("current_epoch", 0, (), "int32")

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("feature_dim", None)  # a model saved while the width was an argument: build() reads it now
        return cls(**config)

    def _bucket(self, bucket_ids):
        ids = ops.cast(ops.reshape(bucket_ids, (-1,)), "int32") - self.bucket_start
        return ops.clip(ids, 0, self.bucket_num - self.bucket_start - 1)

    def smooth(self, stats):
        """Convolve (B, D) statistics along B with the window, reflect-padded by (ks - 1) / 2."""
        padded = ops.pad(stats, [[self.half_ks, self.half_ks], [0, 0]], mode="reflect")
        n = stats.shape[0]
        # ks shifted slices, weighted: a 1-D convolution along the bucket axis, per feature.
        return sum(float(w) * padded[j:j + n] for j, w in enumerate(self.kernel_window))

    def update_last_epoch_stats(self, epoch: int) -> None:
        """Freeze the running statistics of the epoch just finished and smooth them (once per epoch).

        The last-epoch statistics are a copy taken here. (The paper's code assigns the running
        tensors themselves, so its later in-place running updates also change the "last epoch"
        copy; we follow the copy, which is what the method describes.)
        """
        if epoch != int(ops.convert_to_numpy(self.epoch)) + 1:
            return
        self.epoch.assign(epoch)
        mean, var = self.running_mean.value, self.running_var.value
        self.running_mean_last_epoch.assign(mean)
        self.running_var_last_epoch.assign(var)
        self.smoothed_mean_last_epoch.assign(self.smooth(mean))
        self.smoothed_var_last_epoch.assign(self.smooth(var))

    def update_running_stats(self, features, bucket_ids, epoch: int, all_reduce=None) -> None:
        """Update the per-bucket mean and unbiased variance (biased for a single example) from the
        features of the training set, with momentum; buckets without examples keep theirs.

        ``all_reduce``: under a tf.distribute strategy, a function that sums a list of tensors across the replicas,
        each replica passing its own share of the epoch's features (:meth:`epoch_moments`); the update is then one
        process's over all of them. This method assigns the variables, so under a strategy it runs in the
        cross-replica context: compute :meth:`epoch_moments` in the replicas and :meth:`apply_moments` here."""
        self.apply_moments(*self.epoch_moments(features, bucket_ids, all_reduce), epoch)

    def epoch_moments(self, features, bucket_ids, all_reduce=None):
        """(count (B,), sum (B, D), centred sum of squares (B, D)) per bucket: the sufficient statistics of
        :meth:`apply_moments`, in float32 whatever the features' dtype (mixed precision).

        Two passes, each an exact SUM across replicas when ``all_reduce`` (list of tensors -> their sums over the
        replicas) is given: count and sum, hence the global bucket means; then the squared deviations from those
        means. Centring on the global mean is the two-pass variance (no cancellation of sum(x^2) - n mean^2), and
        equal to one process's computation over the union of the replicas' features, up to float summation order."""
        features = ops.cast(ops.convert_to_tensor(features), "float32")
        if features.shape[-1] != self.feature_dim:
            raise ValueError(f"features have {features.shape[-1]} dimensions, the layer tracks {self.feature_dim}")
        reduce = all_reduce or (lambda tensors: tensors)
        ids = self._bucket(bucket_ids)
        onehot = ops.one_hot(ids, self.bucket_num - self.bucket_start, dtype="float32")  # (N, B)
        count, total = reduce([ops.sum(onehot, axis=0), ops.matmul(ops.transpose(onehot), features)])  # (B,), (B, D)
        mean = total / ops.maximum(count, 1.0)[:, None]
        centred = features - ops.take(mean, ids, axis=0)
        (squares,) = reduce([ops.matmul(ops.transpose(onehot), centred * centred)])
        return count, total, squares

    def apply_moments(self, count, total, squares, epoch: int) -> None:
        """The per-epoch update from :meth:`epoch_moments`: bucket mean sum / n, unbiased variance squares / (n - 1)
        (squares / 1 = 0 for one example), mixed into the running statistics with momentum."""
        if epoch < int(ops.convert_to_numpy(self.epoch)):
            return
        count, total, squares = (ops.cast(ops.convert_to_tensor(t), "float32") for t in (count, total, squares))
        mean = total / ops.maximum(count, 1.0)[:, None]
        var = squares / ops.where(count > 1, count - 1.0, 1.0)[:, None]
        tracked = self.num_samples_tracked.value + count
        if epoch == self.start_update:
            factor = ops.zeros_like(count)
        elif self.momentum is None:
            factor = 1.0 - count / ops.maximum(tracked, 1.0)
        else:
            factor = ops.full_like(count, self.momentum)
        present = (count > 0)[:, None]
        factor = factor[:, None]
        self.num_samples_tracked.assign(tracked)
        old_mean, old_var = self.running_mean.value, self.running_var.value
        self.running_mean.assign(ops.where(present, (1 - factor) * mean + factor * old_mean, old_mean))
        self.running_var.assign(ops.where(present, (1 - factor) * var + factor * old_var, old_var))

    def call(self, features, bucket_ids=None, training=None):
        if not training or bucket_ids is None:
            return features  # identity at inference: nothing of this layer is traced into serving
        ids = self._bucket(bucket_ids)
        def rows(stat):
            return ops.take(stat.value, ids, axis=0)

        calibrated = calibrate_mean_var(features, rows(self.running_mean_last_epoch), rows(self.running_var_last_epoch),
                                        rows(self.smoothed_mean_last_epoch), rows(self.smoothed_var_last_epoch))
        # A new tensor, never an in-place write into ``features`` (which broke gradients in the paper's code).
        return ops.where(self.current_epoch.value >= self.start_smooth, calibrated, features)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "bucket_num": self.bucket_num, "bucket_start": self.bucket_start,
                "kernel": self.kernel, "ks": self.ks, "sigma": self.sigma, "momentum": self.momentum,
                "start_update": self.start_update, "start_smooth": self.start_smooth}


class FDSUpdate(keras.callbacks.Callback):
    """End-of-epoch FDS updates over the training set's features (the paper's train loop).

    ``encode(x)`` returns the features the layer sees (before calibration) for a batch of inputs;
    ``batches`` yields (inputs, bucket_ids) over the whole training set in any order.
    """

    def __init__(self, layer: FeatureDistributionSmoothing, encode, batches):
        super().__init__()
        self.layer, self.encode, self.batches = layer, encode, batches

    def on_epoch_begin(self, epoch, logs=None):
        self.layer.current_epoch.assign(epoch)

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.layer.start_update:
            return
        feats, ids = [], []
        for inputs, bucket_ids in self.batches:
            feats.append(ops.convert_to_numpy(self.encode(inputs)))
            ids.append(np.asarray(bucket_ids).reshape(-1))
        self.layer.update_last_epoch_stats(epoch)
        self.layer.update_running_stats(np.concatenate(feats), np.concatenate(ids), epoch)

"""FDS beyond one process: the per-epoch statistics summed across replicas (models.replicas.replica_sums) equal one
process's over the same features, and stay float32 under mixed precision (issue #31)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

from models.layers.fds import FeatureDistributionSmoothing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE = ("running_mean", "running_var", "running_mean_last_epoch", "running_var_last_epoch", "smoothed_mean_last_epoch",
         "smoothed_var_last_epoch", "num_samples_tracked", "epoch")

# A fresh process: the two logical CPU devices must exist before TensorFlow initialises. Each epoch, 61 features (an
# offset of 1000, where sum(x^2) - n mean^2 in float32 would lose the variance) go half to each replica (31 and 30
# rows) of a layer built under MirroredStrategy, and whole to a layer built without a strategy.
TWO_REPLICAS = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from models import distribute, replicas
from models.layers.fds import FeatureDistributionSmoothing
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
def make():
    layer = FeatureDistributionSmoothing(8, 1, ks=5, sigma=2.0, momentum=0.9)
    layer.build((None, 3))  # under the strategy's scope for the mirrored one: its state is mirrored
    return layer
with strategy.scope():
    two = make()
one = make()
rng = np.random.default_rng(0)
epochs, shares = [], []
for epoch in range(3):
    ids = rng.integers(0, 10, size=61).astype("int32")
    feats = rng.normal(loc=1000.0 + ids[:, None] * 0.5, scale=1.0 + ids[:, None] * 0.1, size=(61, 3)).astype("float32")
    epochs.append({"ids": ids.tolist(), "feats": feats.tolist()})
    shares.append(int(replicas.replica_sums(strategy, lambda f, i, all_reduce: tf.shape(f)[0], feats, ids)))
    for layer in (one, two):
        layer.update_last_epoch_stats(epoch)
    one.update_running_stats(feats, ids, epoch)
    two.apply_moments(*replicas.replica_sums(strategy, two.epoch_moments, feats, ids), epoch)
    if epoch == 0:
        first_var = np.asarray(two.running_var.value).tolist()
names = %r
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "shares": shares, "first": epochs[0], "first_var": first_var,
                  "one": {k: np.asarray(getattr(one, k).value).tolist() for k in names},
                  "two": {k: [np.asarray(v).tolist() for v in strategy.experimental_local_results(getattr(two, k).value)]
                          for k in names},
                  "dtypes": sorted({getattr(two, k).dtype for k in names if k != "epoch"})}))
"""


def test_statistics_summed_over_two_replicas_equal_one_process_over_all_features():
    env = dict(os.environ, PYTHONPATH=ROOT, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", TWO_REPLICAS % (STATE,)], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["shares"] == [31, 31, 31]  # the first replica's share: half of 61 rows
    assert out["dtypes"] == ["float32"]
    for k in STATE:
        for copy in out["two"][k]:  # every replica's copy: the same statistics, one process's
            np.testing.assert_allclose(copy, out["one"][k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert np.sum(out["one"]["num_samples_tracked"]) == 3 * 61 and out["one"]["epoch"] == 2
    # and numerically sound at a mean of 1000: epoch 0 (start_update) replaced the statistics by its own, whose
    # variances (the buckets pooled below 1 and above 7) are NumPy's in float64
    ids, feats = np.clip(np.asarray(out["first"]["ids"]), 1, 7), np.asarray(out["first"]["feats"], np.float64)
    var = np.stack([feats[ids == b].var(0, ddof=1) for b in range(1, 8)])
    np.testing.assert_allclose(out["first_var"], var, rtol=1e-3)


def test_statistics_stay_float32_under_mixed_bfloat16_and_update_as_float32_features():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 6, 40).astype("int32")
    feats = rng.normal(loc=ids[:, None], size=(40, 4)).astype("float32")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = FeatureDistributionSmoothing(6, ks=3, sigma=1.0, start_smooth=0)
        mixed.build((None, 4))
    finally:
        keras.config.set_dtype_policy(previous)
    plain = FeatureDistributionSmoothing(6, ks=3, sigma=1.0, start_smooth=0)
    plain.build((None, 4))
    assert mixed.compute_dtype == "bfloat16"
    assert {v.dtype for v in mixed.variables} == {"float32", "int32"}  # the epochs are int32, every statistic float32
    low = keras.ops.cast(feats, "bfloat16")  # what a bfloat16 encoder hands the layer
    moments = mixed.epoch_moments(low, ids)
    assert [keras.backend.standardize_dtype(m.dtype) for m in moments] == ["float32"] * 3
    for epoch in range(2):
        mixed.update_last_epoch_stats(epoch)
        mixed.update_running_stats(low, ids, epoch)
        plain.update_last_epoch_stats(epoch)
        plain.update_running_stats(keras.ops.convert_to_numpy(keras.ops.cast(low, "float32")), ids, epoch)
    for k in STATE:
        assert keras.backend.standardize_dtype(getattr(mixed, k).dtype) == ("int32" if k == "epoch" else "float32")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(getattr(mixed, k)),
                                   keras.ops.convert_to_numpy(getattr(plain, k)), rtol=1e-6, atol=1e-6, err_msg=k)
    out = keras.ops.convert_to_numpy(keras.ops.cast(mixed(low, ids, training=True), "float32"))
    assert np.isfinite(out).all() and not np.allclose(out, keras.ops.convert_to_numpy(keras.ops.cast(low, "float32")))

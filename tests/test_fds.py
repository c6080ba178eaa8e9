"""FeatureDistributionSmoothing against a plain NumPy loop, on the active Keras backend (and the
whole module again under JAX, in a subprocess)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from models.layers.fds import FDSUpdate, FeatureDistributionSmoothing, calibrate_mean_var, fds_kernel_window

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATS = ("running_mean", "running_var", "running_mean_last_epoch", "running_var_last_epoch",
         "smoothed_mean_last_epoch", "smoothed_var_last_epoch")


class NumpyFDS:
    """The statistics of the method, bucket by bucket in loops (reference for the layer)."""

    def __init__(self, d, bucket_num, bucket_start, window, momentum, start_update):
        b = bucket_num - bucket_start
        self.s = {"running_mean": np.zeros((b, d)), "running_var": np.ones((b, d)),
                  "running_mean_last_epoch": np.zeros((b, d)), "running_var_last_epoch": np.ones((b, d)),
                  "smoothed_mean_last_epoch": np.zeros((b, d)), "smoothed_var_last_epoch": np.ones((b, d))}
        self.start, self.last, self.window, self.momentum = bucket_start, bucket_num - 1, window, momentum
        self.start_update, self.epoch, self.half = start_update, start_update, (len(window) - 1) // 2

    def _smooth(self, a):
        out = np.zeros_like(a)
        for f in range(a.shape[1]):
            padded = np.pad(a[:, f], self.half, mode="reflect")
            for b in range(a.shape[0]):
                out[b, f] = sum(self.window[j] * padded[b + j] for j in range(len(self.window)))
        return out

    def update_last(self, epoch):
        if epoch == self.epoch + 1:
            self.epoch = epoch
            self.s["running_mean_last_epoch"] = self.s["running_mean"].copy()
            self.s["running_var_last_epoch"] = self.s["running_var"].copy()
            self.s["smoothed_mean_last_epoch"] = self._smooth(self.s["running_mean"])
            self.s["smoothed_var_last_epoch"] = self._smooth(self.s["running_var"])

    def update_running(self, feats, labels, epoch):
        if epoch < self.epoch:
            return
        for label in np.unique(labels):
            if label < self.start or label > self.last:
                continue
            mask = labels <= label if label == self.start else labels >= label if label == self.last else labels == label
            x = feats[mask]
            mean, var = x.mean(0), x.var(0, ddof=1 if len(x) > 1 else 0)
            factor = 0.0 if epoch == self.start_update else self.momentum
            i = label - self.start
            self.s["running_mean"][i] = (1 - factor) * mean + factor * self.s["running_mean"][i]
            self.s["running_var"][i] = (1 - factor) * var + factor * self.s["running_var"][i]


def state(layer):
    return {k: keras.ops.convert_to_numpy(getattr(layer, k)) for k in STATS}


def test_window_normalised_by_sum():
    np.testing.assert_allclose(fds_kernel_window("triang", 5, 2.0), np.array([1, 2, 3, 2, 1]) / 9)
    assert fds_kernel_window("gaussian", 5, 2.0).sum() == pytest.approx(1.0)


def test_calibrate_mean_var_by_hand():
    x = np.array([[1.0, 2.0, 3.0]])
    m1, v1 = np.array([1.0, 0.0, 1.0]), np.array([4.0, 0.0, 1.0])
    m2, v2 = np.array([2.0, 5.0, 0.0]), np.array([1.0, 9.0, 1000.0])
    # dim 0: (1-1)*sqrt(1/4)+2 = 2; dim 1: v1 = 0, unchanged; dim 2: factor clipped to 10: 2*sqrt(10)
    out = keras.ops.convert_to_numpy(calibrate_mean_var(x, m1, v1, m2, v2))
    np.testing.assert_allclose(out, [[2.0, 2.0, 2 * np.sqrt(10)]], rtol=1e-6)
    out = keras.ops.convert_to_numpy(calibrate_mean_var(x, m1, np.zeros(3), m2, v2))
    np.testing.assert_allclose(out, x)  # no statistics yet: x itself


@pytest.mark.parametrize("momentum,bucket_start", [(0.9, 0), (0.5, 2)])
def test_statistics_match_a_numpy_loop_over_epochs(momentum, bucket_start):
    rng = np.random.default_rng(0)
    d, bucket_num = 3, 8
    layer = FeatureDistributionSmoothing(bucket_num, bucket_start, kernel="gaussian", ks=5, sigma=2.0, momentum=momentum)
    layer.build((None, d))  # the statistics are updated before any call
    ref = NumpyFDS(d, bucket_num, bucket_start, fds_kernel_window("gaussian", 5, 2.0), momentum, 0)
    for epoch in range(4):
        labels = rng.integers(0, bucket_num + 2, size=60)
        labels[:2] = [bucket_start, bucket_num - 1]  # the edge buckets occur, so pooling is as the paper's
        labels[2] = 4 if epoch != 2 else 5  # bucket 4 is empty in epoch 2 in most draws: kept as it was
        feats = rng.normal(loc=labels[:, None] * 0.5, scale=1.0 + labels[:, None] * 0.1, size=(60, d))
        layer.update_last_epoch_stats(epoch)
        layer.update_running_stats(feats, labels, epoch)
        ref.update_last(epoch)
        ref.update_running(feats, labels, epoch)
        got = state(layer)
        for k in STATS:
            np.testing.assert_allclose(got[k], ref.s[k], rtol=1e-4, atol=1e-5, err_msg=f"{k} after epoch {epoch}")
    assert int(keras.ops.convert_to_numpy(layer.epoch)) == 3
    layer.update_running_stats(feats, labels, 1)  # an earlier epoch than the frozen one: ignored
    np.testing.assert_allclose(state(layer)["running_mean"], ref.s["running_mean"], rtol=1e-4, atol=1e-5)


def test_call_calibrates_only_while_training_from_start_smooth():
    rng = np.random.default_rng(1)
    layer = FeatureDistributionSmoothing(4, start_smooth=1, ks=3, sigma=1.0)
    layer.build((None, 2))
    for epoch in range(2):
        layer.update_last_epoch_stats(epoch)
        layer.update_running_stats(rng.normal(size=(40, 2)) * 3 + 1, rng.integers(0, 4, 40), epoch)
    x, ids = rng.normal(size=(5, 2)).astype("float32"), np.array([0, 1, 2, 3, 9])
    s = state(layer)
    b = np.clip(ids, 0, 3)
    factor = np.clip(s["smoothed_var_last_epoch"][b] / s["running_var_last_epoch"][b], 0.1, 10)
    expected = (x - s["running_mean_last_epoch"][b]) * np.sqrt(factor) + s["smoothed_mean_last_epoch"][b]
    layer.current_epoch.assign(1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x, ids, training=True)), expected, rtol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, ids, training=False)), x)
    layer.current_epoch.assign(0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x, ids, training=True)), x)


def _grad_of_sum(layer, x, ids):
    if keras.backend.backend() == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: layer(v, ids, training=True).sum())(x))
    import tensorflow as tf

    v = tf.Variable(x)
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(layer(v, ids, training=True))
    return tape.gradient(y, v).numpy()


def test_gradient_flows_through_the_calibration():
    layer = FeatureDistributionSmoothing(3, ks=3, sigma=1.0, start_smooth=0)
    layer.build((None, 2))
    layer.running_var_last_epoch.assign(np.full((3, 2), 4.0, "float32"))
    layer.smoothed_var_last_epoch.assign(np.full((3, 2), 1.0, "float32"))
    x = np.ones((4, 2), "float32")
    np.testing.assert_allclose(_grad_of_sum(layer, x, np.array([0, 1, 2, 1])), np.full((4, 2), 0.5), rtol=1e-6)


def test_fit_with_the_callback_updates_stats_from_encodings_and_saves_them(tmp_path):
    rng = np.random.default_rng(2)
    keras.utils.set_random_seed(0)
    n, buckets = 64, 6
    x = rng.normal(size=(n, 4)).astype("float32")
    ids = rng.integers(0, buckets, n).astype("int32")
    ids[:2] = [0, buckets - 1]
    y = ids.astype("float32") + 0.1 * x[:, 0]
    features_in, bucket_in = keras.Input((4,), name="x"), keras.Input((), dtype="int32", name="bucket")
    hidden = keras.layers.Dense(3, activation="relu", name="hidden")(features_in)
    fds = FeatureDistributionSmoothing(buckets, ks=3, sigma=1.0, name="fds")  # built by the call, 3 features wide
    out = keras.layers.Dense(1, name="out")(fds(hidden, bucket_in))
    model = keras.Model({"x": features_in, "bucket": bucket_in}, out)
    encoder = keras.Model(features_in, hidden)
    seen = []

    def encode(batch):
        z = keras.ops.convert_to_numpy(encoder(batch, training=False))
        seen[-1].append(z)
        return z

    class Recorder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([])

    batches = [(x[i:i + 16], ids[i:i + 16]) for i in range(0, n, 16)]
    model.compile(keras.optimizers.Adam(0.01), "mae")
    model.fit({"x": x, "bucket": ids}, y, batch_size=16, epochs=3, verbose=0,
              callbacks=[Recorder(), FDSUpdate(fds, encode, batches)])
    ref = NumpyFDS(3, buckets, 0, fds_kernel_window("gaussian", 3, 1.0), 0.9, 0)
    for epoch, chunks in enumerate(seen):
        ref.update_last(epoch)
        ref.update_running(np.concatenate(chunks), ids, epoch)
    for k in STATS:
        np.testing.assert_allclose(state(fds)[k], ref.s[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert int(keras.ops.convert_to_numpy(fds.current_epoch)) == 2
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for k in STATS:
        np.testing.assert_array_equal(state(loaded.get_layer("fds"))[k], state(fds)[k])
    pred = keras.ops.convert_to_numpy(loaded({"x": x, "bucket": np.zeros(n, "int32")}, training=False))
    expected = keras.ops.convert_to_numpy(model.get_layer("out")(encoder(x)))
    np.testing.assert_allclose(pred, expected, rtol=1e-5)  # inference ignores the bucket: identity


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="runs the module again under JAX")
def test_module_under_jax():
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-x"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "1 skipped" in proc.stdout

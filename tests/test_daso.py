"""DASO layers against hand-computed values; the queue's FIFO behaviour (runs under TF and JAX)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from models.layers.daso import (
    BalancedFeatureQueue,
    PseudoLabelCountWindow,
    blend_pseudo_labels,
    cosine_similarity_logits,
    distribution_aware_weights,
    semantic_alignment_loss,
)


def _np(x):
    return ops.convert_to_numpy(x)


def test_cosine_similarity_logits_and_zero_prototype():
    features = np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)
    prototypes = np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 3.0]], np.float32)  # class 1: nothing queued yet
    out = _np(cosine_similarity_logits(features, prototypes, temperature=0.5))
    r = math.sqrt(0.5) / 0.5
    np.testing.assert_allclose(out, [[2.0, 0.0, 0.0], [r, 0.0, r]], rtol=1e-6, atol=1e-6)
    assert np.isfinite(_np(cosine_similarity_logits(np.zeros((2, 2), np.float32), prototypes))).all()


@pytest.mark.parametrize("temperature,expected", [
    (1.0, [0.5, 1 / 6, 0.0, 1.0]),
    (0.5, [0.25, 1 / 36, 0.0, 1.0]),
    (1.5, [0.5 ** (2 / 3), (1 / 6) ** (2 / 3), 0.0, 1.0]),  # w_k = (p_k / p_max)^(1/T)
])
def test_distribution_aware_weights(temperature, expected):
    out = _np(distribution_aware_weights(np.array([30, 10, 0, 60]), temperature))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


def test_distribution_aware_weights_without_counts_is_zero():
    np.testing.assert_array_equal(_np(distribution_aware_weights(np.zeros(3))), [0.0, 0.0, 0.0])


def test_blend_pseudo_labels():
    linear = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], np.float32)
    semantic = np.array([[0.1, 0.1, 0.8], [0.2, 0.2, 0.6]], np.float32)
    # weights at T=1: [1, 0, 0.5]; example 0 predicts class 0 (w=1), example 1 class 2 (w=0.5)
    out = _np(blend_pseudo_labels(linear, semantic, np.array([60.0, 0.0, 30.0]), temperature=1.0))
    np.testing.assert_allclose(out, [[0.1, 0.1, 0.8], [0.15, 0.25, 0.6]], rtol=1e-6)


def test_semantic_alignment_loss():
    weak = np.array([[0.0, 0.0], [math.log(3.0), 0.0]], np.float32)
    strong = np.array([[math.log(3.0), 0.0], [0.0, 0.0]], np.float32)
    row0 = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    row1 = math.log(2.0)
    np.testing.assert_allclose(float(_np(semantic_alignment_loss(weak, strong))), (row0 + row1) / 2, rtol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="gradient check written with tf.GradientTape")
def test_semantic_alignment_loss_treats_weak_side_as_constant():
    import tensorflow as tf

    weak, strong = tf.Variable([[1.0, 2.0]]), tf.Variable([[0.5, -0.5]])
    with tf.GradientTape() as tape:
        loss = semantic_alignment_loss(weak, strong)
    g_weak, g_strong = tape.gradient(loss, [weak, strong])
    assert g_weak is None or np.allclose(g_weak.numpy(), 0.0)
    assert np.abs(g_strong.numpy()).sum() > 0


def test_queue_is_fifo_per_class():
    q = BalancedFeatureQueue(num_classes=3, size_per_class=2)
    q.build((None, 1))  # enqueued into before any call
    np.testing.assert_array_equal(_np(q.prototypes()), np.zeros((3, 1)))
    q.enqueue(np.array([[1.0], [2.0], [3.0]], np.float32), np.array([0, 0, 0]))  # 3 > size: the oldest is dropped
    np.testing.assert_allclose(_np(q.prototypes())[:, 0], [2.5, 0.0, 0.0])
    q.enqueue(np.array([[10.0]], np.float32), np.array([0]))  # replaces 2, the oldest
    np.testing.assert_allclose(_np(q.prototypes())[:, 0], [6.5, 0.0, 0.0])
    q.enqueue(np.array([[4.0]], np.float32), np.array([1]))
    np.testing.assert_allclose(_np(q.prototypes())[:, 0], [6.5, 4.0, 0.0])
    q.enqueue(np.array([[20.0], [30.0], [5.0]], np.float32), np.array([0, 0, 1]))
    np.testing.assert_allclose(_np(q.prototypes())[:, 0], [25.0, 4.5, 0.0])
    np.testing.assert_array_equal(_np(q.filled), [2, 2, 0])


def test_queue_prototypes_are_means_of_vectors():
    q = BalancedFeatureQueue(2, size_per_class=4)  # the first call builds it, 3 features wide
    out = q(np.eye(3, dtype="float32"), np.array([0, 0, 1]), training=True)
    np.testing.assert_allclose(_np(out), [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    q(np.ones((1, 3), "float32"), np.array([1]), training=False)  # not training: nothing enqueued
    np.testing.assert_allclose(_np(q.prototypes()), [[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    assert all(not v.trainable for v in q.weights)
    restored = BalancedFeatureQueue.from_config(q.get_config())
    restored.build_from_config(q.get_build_config())  # as keras.saving does
    assert (restored.num_classes, restored.feature_dim, restored.size_per_class) == (2, 3, 4)
    assert [v.shape for v in restored.weights] == [v.shape for v in q.weights]
    older = BalancedFeatureQueue.from_config({**q.get_config(), "feature_dim": 3})  # saved when the width was an argument
    assert older.size_per_class == 4 and not older.built


def test_pseudo_label_count_window():
    w = PseudoLabelCountWindow(num_classes=3, window=2)
    w.build()
    w.update(np.array([0, 0, 1]))
    np.testing.assert_allclose(_np(w.counts()), [2, 1, 0])
    w.update(np.array([2]))
    np.testing.assert_allclose(_np(w.counts()), [2, 1, 1])
    w.update(np.array([2, 2]))  # the first step leaves the window
    np.testing.assert_allclose(_np(w.counts()), [0, 0, 3])


# ------------------------------------------------------------------------------ data-parallel and mixed precision

# Two replicas (MirroredStrategy over 2 logical CPUs, set before TensorFlow initialises: a fresh process) train the
# real FixMatchModel step (models.semi.distributed_step) on halves of 3 global batches, one process trains
# (train_on_batch, Keras' own step) on the whole batches; the DASO state, the weights, the EMA and the losses must
# agree, and both replicas must hold the same copies. A Dense net (no BatchNorm: its batch statistics would differ
# between 4 and 8 images), threshold 0 (every pseudo-label counts), DASO on after one step (the counts steer the
# blended pseudo-labels), a queue of 4 a class (it wraps), class weights (the weighted mean over the global batch).
TWO_REPLICAS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, numpy as np
from models import fixmatch, losses, semi
from models.config import DasoConfig, FixMatchConfig

C, B, MU, STEPS, W = 3, 8, 2, 3, np.array([0.5, 1.0, 2.0], np.float32)
rng = np.random.default_rng(0)
images = lambda n: rng.random((n, 6, 6, 1)).astype(np.float32)
batches = [({"labeled": images(B), "weak": images(MU * B), "strong": images(MU * B)}, rng.integers(0, C, B))
           for _ in range(STEPS)]
keras.utils.set_random_seed(0)
inp = keras.Input((6, 6, 1))
net = keras.Model(inp, keras.layers.Dense(C, name="classifier")(keras.layers.Dense(5, activation="relu")(
    keras.layers.Flatten()(inp))))
initial = net.get_weights()

def build(weighted_loss):
    nets = [keras.models.clone_model(net) for _ in range(2)]
    for n in nets:
        n.set_weights(initial)
    model = fixmatch.FixMatchModel(nets[0], nets[1], losses.CrossEntropyLoss(W if weighted_loss else None),
                               FixMatchConfig(threshold=0.0, ema_decay=0.9), C,
                               daso=DasoConfig(queue_size=4, count_window=2), warmup_steps=1,
                               labeled_class_weights=None if weighted_loss else W)
    model({k: v[:1] for k, v in batches[0][0].items()})
    return model

one = build(True)
one.compile(keras.optimizers.SGD(0.5))
one_losses = [float(one.train_on_batch(x, y, return_dict=True)["loss"]) for x, y in batches]

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    two = build(False)
    optimizer = keras.optimizers.SGD(0.5)
    optimizer.build(two.trainable_variables)
step = semi.distributed_step(strategy, two, optimizer)
two_losses = []
for x, y in batches:
    half = lambda v, r: v[r * len(v) // 2:(r + 1) * len(v) // 2]
    batch = strategy.experimental_distribute_values_from_function(
        lambda ctx: ({k: half(v, ctx.replica_id_in_sync_group) for k, v in x.items()}, half(y, ctx.replica_id_in_sync_group)))
    two_losses.append(float(step(batch)["loss"]))

out = {"one_losses": np.array(one_losses), "two_losses": np.array(two_losses)}
for i, (a, b) in enumerate(zip(one.weights, two.weights, strict=True)):  # the same build order
    assert (a.name, a.shape) == (b.name, b.shape), (a.path, b.path)
    path = f"{i:02d}/" + a.path.split("/", 1)[-1]  # without the wrapper's own name (fix_match_model, ..._1)
    copies = [c.numpy() for c in strategy.experimental_local_results(b.value)]
    out[f"one/{path}"], out[f"r0/{path}"], out[f"r1/{path}"] = a.numpy(), copies[0], copies[-1]
np.savez(sys.argv[1], **out)
"""


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute strategies run on the TensorFlow backend")
def test_two_replicas_hold_the_daso_state_of_one_process_over_the_global_batches(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "two_replicas.py"
    script.write_text(TWO_REPLICAS)
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("TF_CONFIG", None)
    subprocess.run([sys.executable, str(script), str(tmp_path / "out.npz")], env=env, cwd=root, check=True, timeout=300)
    out = np.load(tmp_path / "out.npz")
    paths = [k[len("one/"):] for k in out.files if k.startswith("one/")]
    state = [p for p in paths if p.split("/")[-1] in ("bank", "filled", "write_pos", "ring", "step")]
    assert sorted(p.split("/")[-1] for p in state) == ["bank", "filled", "ring", "step", "write_pos"]
    assert any(p.endswith("step_counter") for p in paths) and len(paths) > len(state) + 8  # weights, EMA, counter
    for p in paths:
        np.testing.assert_array_equal(out[f"r0/{p}"], out[f"r1/{p}"], err_msg=f"replicas differ: {p}")
        np.testing.assert_allclose(out[f"r0/{p}"], out[f"one/{p}"], rtol=1e-5, atol=1e-6, err_msg=p)
    by_name = {p.split("/")[-1]: out[f"one/{p}"] for p in state}
    assert by_name["filled"].sum() > 0 and by_name["ring"].sum() == 2 * 16  # the window holds the last 2 global steps
    assert (by_name["filled"] == 4).any()  # a class's ring wrapped: the FIFO order of the global batch mattered
    np.testing.assert_allclose(out["two_losses"], out["one_losses"], rtol=1e-5)


def test_daso_state_stays_float32_under_mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        q = BalancedFeatureQueue(num_classes=2, size_per_class=2)
        q.build((None, 2))
        w = PseudoLabelCountWindow(num_classes=2, window=2)
        w.build()
        assert q.dtype_policy.name == w.dtype_policy.name == "mixed_bfloat16"
        assert {v.name: v.dtype for v in q.weights + w.weights} == {
            "bank": "float32", "filled": "int32", "write_pos": "int32", "ring": "float32", "step": "int32"}
        fine = 1.0 + 2.0 ** -10  # bfloat16 (8 significant bits) rounds it to 1.0
        q.enqueue(np.full((1, 2), fine, np.float32), np.array([0]))
        # through the layer's __call__ (Keras' autocast scope, inputs cast to bfloat16): the bank is read unrounded
        prototypes = q(np.full((1, 2), 2.0, np.float32), np.array([1]), training=True)
        assert prototypes.dtype == "float32"
        np.testing.assert_array_equal(_np(prototypes), [[fine, fine], [2.0, 2.0]])
        w.update(np.zeros(301, np.int32))  # 301 is no bfloat16 number (its neighbours are 300 and 302)
        assert _np(w.counts()).dtype == np.float32 and _np(w.counts())[0] == 301.0
        # one training step of the FixMatch + DASO wrapper (Keras' own step) computing in bfloat16
        from models import fixmatch, losses
        from models.config import DasoConfig, FixMatchConfig

        inp = keras.Input((6, 6, 1))
        nets = [keras.Model(inp, keras.layers.Dense(3, name="classifier")(keras.layers.Dense(5)(keras.layers.Flatten()(inp))))
                for _ in range(2)]
        model = fixmatch.FixMatchModel(nets[0], nets[1], losses.CrossEntropyLoss(), FixMatchConfig(threshold=0.0), 3,
                                   daso=DasoConfig(queue_size=4, count_window=2), warmup_steps=0)
        rng = np.random.default_rng(0)
        x = {k: rng.random((n, 6, 6, 1)).astype(np.float32) for k, n in (("labeled", 4), ("weak", 8), ("strong", 8))}
        model.compile(keras.optimizers.SGD(0.1))
        logs = model.train_on_batch(x, np.array([0, 1, 2, 0]), return_dict=True)
        assert np.isfinite(logs["loss"]) and nets[0].layers[-1].compute_dtype == "bfloat16"
        assert {v.dtype for v in model.queue.weights + model.pl_counts.weights} == {"float32", "int32"}
        np.testing.assert_array_equal(_np(model.queue.filled), [2, 1, 1])
        assert _np(model.pl_counts.counts()).sum() == 8 and _np(model.queue.bank).dtype == np.float32
    finally:
        keras.config.set_dtype_policy(previous)

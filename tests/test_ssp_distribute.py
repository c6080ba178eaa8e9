"""The self-supervised pre-training Trainer under a strategy (models/ssp.py: fit_pretext, run_fn's workers): MoCo's
queue and key encoder on two replicas against one process over the same global batches, and one pipeline run whose
pre-training trains on a 2-worker cluster.

TensorFlow only (tf.distribute), so it is not among the files tests/test_backends.py runs under JAX."""

import glob
import json
import os
import subprocess
import sys
import textwrap

import numpy as np

from components.data.longtail import SplitSpec
from components.data.prepare import prepare_from_source
from tests.conftest import ROOT, load_metrics, smoke_cli

# A fresh process (logical devices must be set before TensorFlow initialises): the same MoCo, from the same weights,
# trained 4 steps of a 16-image global batch by Keras' model.fit in one process (the single-process path of
# models.ssp.pretrain) and by models.ssp.fit_pretext on two replicas, 8 images each, in order. Its encoders have no
# BatchNorm: BN normalises by each replica's own half batch, the one thing that differs by design
# (models/distribute.py). The queue (48 = 3 global batches) wraps once; the key encoder follows the query encoder's EMA.
EQUIVALENCE = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from keras import layers
    from models import pretext, ssp

    def encoder(name):
        inputs = keras.Input((8, 8, 1))
        x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
        return keras.Model(inputs, layers.GlobalAveragePooling2D(name="pool")(x), name=name)

    def moco():
        keras.utils.set_random_seed(0)
        return pretext.MoCo(encoder("q"), encoder("k"), dim=3, queue_size=48, momentum=0.9, temperature=0.2)

    GLOBAL, STEPS = 16, 4
    views = np.random.default_rng(0).random((GLOBAL * STEPS, 2, 8, 8, 1)).astype("float32")
    one = moco()
    start = one.get_weights()
    one.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    one_loss = one.fit(views, batch_size=GLOBAL, epochs=1, shuffle=False, verbose=0).history["loss"]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        two = moco()
        two.set_weights(start)
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        optimizer.build(two.trainable_variables)

    def dataset_fn(context):  # one input pipeline: replica 0 takes the first half of each global batch, replica 1 the rest
        return tf.data.Dataset.from_tensor_slices(views).batch(context.get_per_replica_batch_size(GLOBAL),
                                                               drop_remainder=True)

    two_loss = [h["loss"] for h in ssp.fit_pretext(strategy, two, optimizer, dataset_fn, 1, STEPS)]

    def state(model):
        return {"queue": model.queue, "pointer": model.queue_pointer,
                **{f"key{i}": k for i, (_, k) in enumerate(model._pairs)},
                **{f"query{i}": q for i, (q, _) in enumerate(model._pairs)}}

    out = {"one_loss": np.asarray(one_loss), "two_loss": np.asarray(two_loss),
           "start_queue": start[[w.path for w in one.weights].index(one.queue.path)]}
    for name, v in state(one).items():
        out[f"one/{name}"] = np.asarray(v)
    for name, v in state(two).items():
        for r, value in enumerate(strategy.experimental_local_results(v.value)):
            out[f"replica{r}/{name}"] = np.asarray(value)
    np.savez(sys.argv[1], **out)
""")


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    return env


def test_moco_on_two_replicas_holds_the_queue_and_key_encoder_of_one_process(tmp_path):
    script, out = tmp_path / "moco.py", tmp_path / "state.npz"
    script.write_text(EQUIVALENCE)
    subprocess.run([sys.executable, str(script), str(out)], cwd=ROOT, env=_env(), check=True, timeout=300)
    r = np.load(out)
    names = sorted(k.split("/", 1)[1] for k in r.files if k.startswith("one/"))
    assert len(names) == 2 + 2 * 6  # queue, pointer; conv 2 + MLP 4 parameters in each encoder
    assert int(r["one/pointer"]) == 4 * 16 % 48  # the pointer advanced by the global batch, not by a replica's
    assert not np.allclose(r["one/queue"], r["start_queue"])
    for name in names:
        # every replica holds the same state, bit for bit (the same EMA of the same weights, the same gathered keys) ...
        np.testing.assert_array_equal(r[f"replica0/{name}"], r[f"replica1/{name}"], err_msg=name)
        # ... and it is the one process's over the same global batches, to float rounding
        np.testing.assert_allclose(r[f"replica0/{name}"], r[f"one/{name}"], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(r["two_loss"], r["one_loss"], rtol=1e-5)


def test_moco_pretrains_on_two_local_workers_and_the_final_model_warm_starts_and_is_pushed(tmp_path, fashion_mnist_dir):
    """pretrain.method=moco with train.local_workers=2: the SSPPretrainer starts a 2-worker MultiWorkerMirroredStrategy
    cluster (python -m models.ssp), both workers end with one model (MoCo's queue and key encoder included), the
    chief's backbone is what the final Trainer (2 workers too) warm-starts from strictly, and its model is pushed."""
    data = str(tmp_path / "data")
    prepare_from_source("fashion_mnist", SplitSpec(rho=100, n_max=200, class_order="shuffle", val_per_class=20,
                                                   unlabeled_size=0, seed=1), data, fashion_mnist_dir)
    proc = smoke_cli(tmp_path, "ssp-dist", data, str(tmp_path / "out"), "pretrain.method=moco", "train.local_workers=2")
    m = load_metrics(str(tmp_path / "out"))
    assert "[pretrain:moco] multi-worker pre-training: 2 local worker process(es) of a 2-worker cluster" in proc.stderr
    s = m["ssp"]
    d = s["distribute"]
    assert (d["strategy"], d["workers"], d["replicas"], d["chief"]) == ("MultiWorkerMirroredStrategy", 2, 2, True)
    assert (d["global_batch_size"], d["per_replica_batch_size"], d["data_sharding"]) == (32, 16, "examples")
    assert s["method"] == "moco" and np.isfinite(s["final_loss"]) and s["queue_size"] == 224  # 492 images, batch 32
    scratch = glob.glob(str(tmp_path / "runs" / "_tfx" / "ssp-dist" / "root" / "SSPPretrainer" / "model_run" / "*"
                            / "distributed"))
    assert len(scratch) == 1
    w0, w1 = (np.load(os.path.join(scratch[0], f"worker-{i}", "pretext.weights.npz")) for i in (0, 1))
    assert len(w0.files) > 90  # both encoders, both projection heads, the queue and its pointer
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key])
    assert s["warm_start"]["variables"] == s["backbone_variables"] == 45  # every resnet8 backbone variable
    assert m["training"]["distribute"]["strategy"] == "MultiWorkerMirroredStrategy"
    assert m["blessed"] is True and m["pushed"] is True
    assert os.path.exists(os.path.join(m["pushed_model_dir"], "saved_model.pb"))
    summary = json.load(open(os.path.join(os.path.dirname(scratch[0]), "ssp_summary.json")))
    assert summary["distribute"] == d
    assert "Pre-trained in MultiWorkerMirroredStrategy: 2 worker(s), 2 replica(s)" in open(tmp_path / "out" / "report.md").read()

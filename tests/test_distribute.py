"""Training beyond one process (models/distribute.py): the settings' rules, two real worker processes on
localhost (TF_CONFIG, two ports, MultiWorkerMirroredStrategy with ring all-reduce) against one process on the
union of their shards, the Trainer's run_fn starting its own peer worker and exporting one SavedModel, resume
under a strategy, and mixed precision with a float32 export."""

import glob
import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf

from models import cluster, distribute, precision, toolkit
from models.config import CalibrationConfig, SemiConfig, SSPConfig, TrainConfig
from models.job import TrainerJob

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------- the rules


def test_auto_resolves_from_the_cluster_the_local_workers_and_the_gpus():
    two = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.resolve("auto", 1, two) == "multi_worker"
    assert distribute.resolve("auto", 2, {}) == "multi_worker"
    assert distribute.resolve("auto", 1, {}, gpus=2) == "mirrored"
    assert distribute.resolve("auto", 1, {}, gpus=1) == "none"
    assert distribute.resolve("multi_worker", 1, two) == "multi_worker"


@pytest.mark.parametrize("setting,workers,tf_config,needle", [
    ("multi_worker", 1, {}, "needs a cluster: TF_CONFIG"),
    ("mirrored", 2, {}, "train.local_workers=2 needs train.distribute=multi_worker or auto"),
    ("auto", 2, {"cluster": {"worker": ["a:1"]}}, "TF_CONFIG already names 1 worker"),
    ("horovod", 1, {}, "train.distribute='horovod'"),
    ("auto", 0, {}, "train.local_workers=0"),
])
def test_a_setting_that_cannot_run_is_an_error_naming_it(setting, workers, tf_config, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        distribute.resolve(setting, workers, tf_config)


def test_chief_and_worker_ranks_follow_tf_config():
    with_chief = {"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]}}
    assert cluster.is_chief({**with_chief, "task": {"type": "chief", "index": 0}})
    assert not cluster.is_chief({**with_chief, "task": {"type": "worker", "index": 0}})
    assert cluster.worker_index({**with_chief, "task": {"type": "worker", "index": 1}}) == 2
    assert cluster.cluster_workers(with_chief) == 3
    plain = {"cluster": {"worker": ["w:1", "w:2"]}, "task": {"type": "worker", "index": 0}}
    assert cluster.is_chief(plain) and cluster.is_chief({})
    with pytest.raises(ValueError, match="TF_CONFIG is not JSON"):
        cluster.read_tf_config({"TF_CONFIG": "{cluster"})


def test_global_batch_learning_rate_scaling_and_sharding():
    assert distribute.batch_and_lr(128, 0.05, 2) == (128, 64, 0.05)
    assert distribute.batch_and_lr(128, 0.05, 2, "per_replica", "linear") == (256, 128, 0.1)
    assert distribute.batch_and_lr(128, 0.05, 4, "per_replica", "sqrt")[2] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="does not split across 3 replicas"):
        distribute.batch_and_lr(128, 0.05, 3)
    assert distribute.data_sharding_for("auto", "instance") == "examples"
    assert distribute.data_sharding_for("auto", "class_balanced") == "seeds"
    with pytest.raises(ValueError, match="data_sharding=examples with train.sampler=sqrt"):
        distribute.data_sharding_for("examples", "sqrt")


def test_configuring_a_run_refuses_what_is_not_data_parallel():
    from pipeline.configs import load_config

    cfg = load_config("smoke", {"train.local_workers": "2", "train.mixed_precision": "mixed_bfloat16"})
    assert cfg.train.local_workers == 2
    # the pseudo-label base and final Trainers (semi.method=pseudo_label, and auto: the default preset's)
    assert load_config("default", {"train.local_workers": "2"}).train.local_workers == 2
    assert load_config("smoke", {"semi.method": "pseudo_label", "train.mixed_precision": "mixed_float16",
                                 "train.distribute": "multi_worker", "train.local_workers": "2"}).semi.method == "pseudo_label"
    # FixMatch and DASO (models.semi.fit_distributed)
    assert load_config("smoke", {"semi.method": "fixmatch", "train.local_workers": "2"}).semi.method == "fixmatch"
    assert load_config("smoke", {"semi.method": "daso", "train.mixed_precision": "mixed_bfloat16"}).semi.method == "daso"
    assert distribute.data_parallel_modes() == ["auto", "daso", "fixmatch", "pseudo_label", "supervised"]
    # the regression Trainer (models/regression.py), its task reading the settings (pipeline/tasks.py)
    from pipeline.tasks import for_config

    for_config(load_config("regression-smoke", {"train.local_workers": "2", "train.mixed_precision": "mixed_bfloat16",
                                                "train.distribute": "multi_worker", "train.lr_scaling": "sqrt"}))
    with pytest.raises(ValueError, match="train.data_sharding does not apply to task=regression"):
        for_config(load_config("regression-smoke", {"train.data_sharding": "seeds"}))
    with pytest.raises(ValueError, match="train.mixed_precision='fp8'"):
        load_config("smoke", {"train.mixed_precision": "fp8"})
    assert load_config("smoke", {"semi.method": "fixmatch", "train.mixed_precision": "auto"}).train.mixed_precision == "auto"


def test_mixed_precision_auto_is_bfloat16_only_on_a_cpu_that_has_it(tmp_path):
    assert precision.resolve_mixed_precision("auto", {"fpu", "avx512f", "avx512_bf16"}, gpus=0)[0] == "mixed_bfloat16"
    assert precision.resolve_mixed_precision("auto", {"amx_bf16", "amx_tile"}, gpus=0)[0] == "mixed_bfloat16"
    policy, why = precision.resolve_mixed_precision("auto", {"avx2", "fma"}, gpus=0)  # bf16 would be emulated
    assert policy == "none" and "avx512_bf16" in why and "emulated" in why
    assert precision.resolve_mixed_precision("auto", {"avx512_bf16"}, gpus=1)[0] == "none"
    assert precision.resolve_mixed_precision("mixed_float16", set(), gpus=0) == ("mixed_float16", "")  # as asked
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert {"avx512_bf16", "fpu"} <= precision.cpu_flags(str(cpuinfo))
    assert precision.cpu_flags(str(tmp_path / "absent")) == set()


# ----------------------------------------------------------------------------------------- real workers


# One process of the loop test: the same seed, model and data; worker i of n reads every n-th example in order (no
# shuffle), so the two workers' first batches are together the single process's first batch.
LOOP = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    from models import cluster, distribute
    tf_config = cluster.read_tf_config()
    strategy = distribute.make_strategy("multi_worker" if tf_config else "mirrored")  # before any other TF op
    import keras, tensorflow as tf
    from models import backbones, losses
    data = np.load(sys.argv[1])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = backbones.build_classifier(backbones.build_backbone("resnet8", (28, 28, 1)), 10)
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        optimizer.build(model.trainable_variables)
    def dataset_fn(context):
        ds = tf.data.Dataset.from_tensor_slices((data["x"], data["y"]))
        ds = ds.shard(context.num_input_pipelines, context.input_pipeline_id)
        return ds.repeat().batch(context.get_per_replica_batch_size(32), drop_remainder=True)
    history = distribute.fit(strategy, model, optimizer, losses.CrossEntropyLoss(), dataset_fn, 2, 3,
                             class_weights=np.linspace(0.5, 2.0, 10))
    index = cluster.worker_index(tf_config)
    np.savez(sys.argv[2] + f"-{index}.npz", *model.get_weights())
    json.dump(history, open(sys.argv[2] + f"-{index}.json", "w"))
""")


def _env(tf_config=None):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def test_two_workers_on_localhost_train_identical_weights_with_the_loss_of_one_process(tiny, tmp_path):
    files, _ = tiny
    images, labels = [], []
    for record in tf.data.TFRecordDataset(files):
        ex = tf.io.parse_single_example(record, {"image": tf.io.FixedLenFeature([], tf.string),
                                                 "label": tf.io.FixedLenFeature([], tf.int64)})
        images.append(tf.io.decode_png(ex["image"], 1).numpy().astype(np.float32) / 255.0)
        labels.append(int(ex["label"]))
    np.savez(tmp_path / "data.npz", x=np.stack(images), y=np.asarray(labels))
    script = tmp_path / "loop.py"
    script.write_text(LOOP)
    args = [sys.executable, str(script), str(tmp_path / "data.npz")]
    workers = [subprocess.Popen(args + [str(tmp_path / "two")], env=_env(c), cwd=ROOT)
               for c in cluster.local_cluster(2)]
    assert [p.wait(timeout=300) for p in workers] == [0, 0]
    subprocess.run(args + [str(tmp_path / "one")], env=_env(), cwd=ROOT, check=True, timeout=300)

    w0, w1, single = (np.load(tmp_path / f"{name}.npz") for name in ("two-0", "two-1", "one-0"))
    assert len(w0.files) == len(single.files) > 40
    for key in w0.files:  # every variable, the BatchNorm statistics included
        np.testing.assert_array_equal(w0[key], w1[key])
    h0, h1, h_single = (json.load(open(tmp_path / f"{name}.json")) for name in ("two-0", "two-1", "one-0"))
    assert [h["loss"] for h in h0] == [h["loss"] for h in h1]
    # the union of the shards is the single process's batch; only BatchNorm's batch statistics (16 vs 32 images)
    # differ, so the losses agree closely, not bit for bit
    np.testing.assert_allclose([h["loss"] for h in h0], [h["loss"] for h in h_single], rtol=0.03)
    assert h0[-1]["loss"] < h0[0]["loss"]


def _fn_args(tmp_path, files, stats, **train):
    stats_path = tmp_path / "label_stats.json"
    stats_path.write_text(json.dumps(stats))
    config = TrainerJob(train=TrainConfig(**{"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3, **train}),
                        semi=SemiConfig(), pretrain=SSPConfig(), calibration=CalibrationConfig(),
                        image_shape=[28, 28, 1], backup_dir=str(tmp_path / "backup"),
                        label_stats_path=str(stats_path)).to_custom_config()
    os.makedirs(tmp_path / "serving", exist_ok=True)
    os.makedirs(tmp_path / "run", exist_ok=True)
    return types.SimpleNamespace(train_files=files, eval_files=None, serving_model_dir=str(tmp_path / "serving"),
                                 model_run_dir=str(tmp_path / "run"), custom_config=config, base_model=None)


PREDICT = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    pngs = [tf.io.encode_png(tf.cast(tf.fill([28, 28, 1], v), tf.uint8)) for v in (0, 90, 200)]
    out = model.signatures["serving_default"](images=tf.stack(pngs))
    print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))
""")


@pytest.mark.parametrize("settings", [{"loss": "ldam", "drw_epoch": 1},  # DRW's switch mid-training, cosine head
                                      {"loss": "focal", "class_weighting": "inverse", "mixed_precision": "mixed_float16"}])
def test_the_trainer_starts_its_peer_worker_and_only_the_chief_exports(tiny, tmp_path, settings):
    from models import trainer

    files, stats = tiny
    fn_args = _fn_args(tmp_path, files, stats, local_workers=2, **settings)  # train.distribute=auto, the default
    trainer.run_fn(fn_args)

    scratch = os.path.join(fn_args.model_run_dir, cluster.WORKER_DIR)
    w0, w1 = (np.load(os.path.join(scratch, f"worker-{i}", "final.weights.npz")) for i in (0, 1))
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key])
    assert glob.glob(os.path.join(fn_args.serving_model_dir, "saved_model.pb"))
    summary = json.load(open(os.path.join(fn_args.model_run_dir, "training_summary.json")))
    d = summary["distribute"]
    assert (d["strategy"], d["workers"], d["replicas"], d["chief"]) == ("MultiWorkerMirroredStrategy", 2, 2, True)
    assert (d["global_batch_size"], d["per_replica_batch_size"], d["data_sharding"]) == (32, 16, "examples")
    assert [h["epoch"] for h in summary["history"]] == [1, 2] and all(np.isfinite(h["loss"]) for h in summary["history"])
    assert d["mixed_precision"] == settings.get("mixed_precision", "none")
    assert not os.listdir(tmp_path / "backup"), "the backup outlived a finished training"
    # the one SavedModel, in a fresh process, equals the chief's Keras model
    import keras

    model = keras.models.load_model(os.path.join(fn_args.model_run_dir, "model.keras"), compile=False)
    proc = subprocess.run([sys.executable, "-c", PREDICT, fn_args.serving_model_dir], capture_output=True, text=True,
                          cwd=ROOT, env=_env(), check=True, timeout=300)
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    pixels = np.stack([np.full([28, 28, 1], v, np.uint8) for v in (0, 90, 200)]).astype(np.float32) / 255.0
    np.testing.assert_allclose(served["logits"], model(pixels, training=False).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(w0[w0.files[0]], model.get_weights()[0])


def test_a_failing_worker_stops_the_others_and_is_named(tiny, tmp_path):
    files, stats = tiny
    fn_args = _fn_args(tmp_path, files, stats, local_workers=2, distribute="multi_worker")
    job = {"fn_args": {**vars(fn_args), "train_files": [str(tmp_path / "missing-*.tfrecord")]}}
    with pytest.raises(RuntimeError, match=r"failed on \d of 2 workers: worker \d"):
        cluster.launch(job, cluster.local_cluster(2), str(tmp_path / "scratch"), timeout_s=240)


class _Stop(Exception):
    pass


def test_training_under_a_strategy_resumes_from_its_backup(tiny, tmp_path, monkeypatch):
    from models import training

    files, stats = tiny
    cfg = TrainConfig(epochs=3, batch_size=32, max_steps_per_epoch=2, sampler="sqrt", class_weighting="inverse")
    strategy = distribute.make_strategy("mirrored")
    plan = distribute.Plan("MirroredStrategy", 1, 1, 0, True, 32, 32, "global", 0.05, "none", "seeds", "none")
    backup = str(tmp_path / "backup")
    real_save = toolkit.Backup.save

    def save_then_stop(self, model, optimizer, epoch):
        real_save(self, model, optimizer, epoch)
        if epoch == 2:
            raise _Stop("simulated kill after epoch 2")

    monkeypatch.setattr(toolkit.Backup, "save", save_then_stop)
    with pytest.raises(_Stop):
        training.train(cfg, files, stats, [28, 28, 1], str(tmp_path / "run1"), backup, strategy=strategy, plan=plan)
    monkeypatch.setattr(toolkit.Backup, "save", real_save)
    saved = np.load(os.path.join(backup, f"train-{toolkit.BACKUP_FILE}"))
    assert int(saved["epoch"]) == 2
    model, history = training.train(cfg, files, stats, [28, 28, 1], str(tmp_path / "run2"), backup,
                                    strategy=strategy, plan=plan)
    assert [h["epoch"] for h in history] == [3]  # epochs 1 and 2 came from the backup
    assert not os.listdir(backup)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16", "auto"])
def test_mixed_precision_trains_and_exports_float32(tiny, tmp_path, policy):
    import keras

    from models import trainer

    files, stats = tiny
    fn_args = _fn_args(tmp_path, files, stats, mixed_precision=policy, loss="logit_adjusted")
    trainer.run_fn(fn_args)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is put back
    summary = json.load(open(os.path.join(fn_args.model_run_dir, "training_summary.json")))
    resolved, why = precision.resolve_mixed_precision(policy)  # auto: this machine's answer, and the summary says why
    assert summary["distribute"]["mixed_precision"] == resolved and summary["mixed_precision_reason"] == why
    assert all(np.isfinite(h["loss"]) for h in summary["history"])
    proc = subprocess.run([sys.executable, "-c", PREDICT, fn_args.serving_model_dir], capture_output=True, text=True,
                          cwd=ROOT, env=_env(), check=True, timeout=300)
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.sum(served["probabilities"], axis=1), 1.0, rtol=1e-5)
    exported = keras.models.load_model(os.path.join(fn_args.model_run_dir, "model.keras"), compile=False)
    assert {layer.dtype_policy.compute_dtype for layer in exported.layers} == {"float32"}


@pytest.mark.parametrize("decoupling", ["crt", "lws", "tau_norm"])
def test_decoupling_stages_train_under_a_strategy_and_export_a_plain_copy(tiny, tmp_path, decoupling):
    import keras

    from models import training
    from models.export import export_serving_model

    files, stats = tiny
    cfg = TrainConfig(epochs=1, batch_size=32, max_steps_per_epoch=2, decoupling=decoupling, decoupling_epochs=1)
    strategy = distribute.make_strategy("mirrored")
    plan = distribute.Plan("MirroredStrategy", 1, 1, 0, True, 32, 32, "global", 0.05, "none", "examples", "none")
    model, history = training.train(cfg, files, stats, [28, 28, 1], str(tmp_path), strategy=strategy, plan=plan)
    assert [h.get("stage") for h in history] == [None] + ([decoupling] if decoupling != "tau_norm" else [])
    copy = precision.plain_copy(model)
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(copy(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-5)
    export_serving_model(copy, str(tmp_path / "export"), [28, 28, 1])
    assert tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"] is not None
    assert isinstance(copy, keras.Model)

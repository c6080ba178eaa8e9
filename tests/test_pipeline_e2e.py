"""End-to-end LocalDagRunner runs of the whole pipeline (smoke preset, Beam in memory), through
the real CLI, on a small Fashion-MNIST-LT subset."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import models.layers.batch_norm  # noqa: F401  (registers the layer the saved model.keras names)
from components.data.longtail import SplitSpec
from components.data.prepare import prepare_from_source
from tests.conftest import load_metrics, smoke_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture
def smoke(smoke_runs):
    """The session's two smoke runs (tests/conftest.py)."""
    return smoke_runs


def test_run_writes_metrics_report_and_pushes(smoke):
    out = str(smoke["tmp"] / "out1")
    assert smoke["first"].stdout.strip().splitlines()[-1] == out  # last line: the output directory
    m = load_metrics(out)
    for key in ("balanced_accuracy", "macro_f1", "per_class_recall", "per_class_precision", "many_shot_accuracy",
                "medium_shot_accuracy", "few_shot_accuracy", "blessed", "pushed_model_dir", "seed", "config"):
        assert key in m, key
    assert len(m["per_class_recall"]) == 10 and 0.0 <= m["balanced_accuracy"] <= 1.0
    assert m["balanced_accuracy"] == pytest.approx(np.mean(m["per_class_recall"]))
    assert m["test"]["num_examples"] == 10000 and m["gate"]["candidate"]["num_examples"] == 200
    assert m["blessed"] is True and m["pushed"] is True
    pushed = m["pushed_model_dir"]
    assert os.path.exists(os.path.join(pushed, "saved_model.pb"))
    assert os.path.dirname(pushed) == str(smoke["tmp"] / "serving" / "longtail-smoke")  # serving/<model>/<version>/
    assert os.path.basename(pushed).isdigit()
    assert os.path.exists(os.path.join(out, "report.md")) and os.path.getsize(os.path.join(out, "per_class.png")) > 1000
    schema_files = glob.glob(os.path.join(smoke["tmp"], "runs", "_tfx", "smoke", "root", "LabeledSchemaGen", "schema",
                                          "*", "schema.pbtxt"))
    assert schema_files and "max: 9" in open(schema_files[0]).read() and "is_categorical: true" in open(schema_files[0]).read()
    report = open(os.path.join(out, "report.md")).read()
    assert "BLESSED" in report and "augmentation crop + flip" in report  # Fashion-MNIST's auto augmentation
    assert os.path.getsize(os.path.join(out, "confusion.png")) > 1000 and "![test confusion matrix](confusion.png)" in report
    assert m["label_stats"]["class_counts"] == json.load(open(os.path.join(smoke["data"], "manifest.json")))[
        "splits"]["labeled"]["per_class_counts"]
    assert m["unlabeled"]["examples"] == 200
    assert glob.glob(os.path.join(m["model_run_dir"], "tensorboard", "*"))
    assert glob.glob(os.path.join(m["model_run_dir"], "checkpoints", "epoch-001.weights.h5"))
    assert "gate: BLESSED" in smoke["first"].stdout
    # the shift report: no blessed model yet, so this run's training set is the reference; the pool's class shares
    # estimated by EM-BCTS from the model's predictions on the 200 pool images
    shift = m["shift"]
    assert shift["reference"]["source"].startswith("this run's training set")
    assert shift["reference"]["counts"] == m["label_stats"]["class_counts"] and shift["newest_labeled"]["l1"] == 0.0
    pool = shift["pool"]
    assert pool["method"] == "em_bcts" and pool["pool_examples"] == 200 and len(pool["shares"]) == 10
    assert sum(pool["shares"]) == pytest.approx(1.0) and pool["l1"] == pytest.approx(
        np.abs(np.asarray(pool["shares"]) - np.asarray(shift["reference"]["shares"])).sum())
    assert pool["validation_per_class"] == [20] * 10 and pool["interval_covers"] is True
    assert "## Shift" in report and "| class | reference share | newest labeled share | pool share (estimated)" in report
    assert shift["shifted"] == bool(shift["messages"]) == (pool["l1"] > shift["max_l1"])
    # every component's seconds from MLMD, in the order they ran, and the Beam arguments it got (set: no auto reason)
    components = [c["component"] for c in m["timings"]["components"]]
    assert components[0] == "LabeledExampleGen" and components[-1] == "LongTailPusher" and "PerClassEvaluator" in components
    assert all(c["state"] == "COMPLETE" and c["seconds"] >= 0 for c in m["timings"]["components"])
    assert "| component | state | seconds |" in report and "| PerClassEvaluator | complete |" in report
    assert "--direct_running_mode=in_memory" in m["beam"]["args"] and m["beam"]["reason"] is None


def test_rerun_reuses_cached_outputs_and_compares_with_last_blessed(smoke):
    m = load_metrics(str(smoke["tmp"] / "out2"))
    states = m["executions"]
    for component in ("tfx.components.example_gen.import_example_gen.component.ImportExampleGen",
                      "components.label_stats_gen.LabelStatsGen", "components.trainer.LongTailTrainer"):
        assert states[component] == "CACHED", (component, states)
    first = load_metrics(str(smoke["tmp"] / "out1"))
    assert m["gate"]["baseline_model_uri"] is not None
    assert m["gate"]["baseline"]["balanced_accuracy"] == pytest.approx(first["gate"]["candidate"]["balanced_accuracy"])
    # report.md sets the two models' per-class recall side by side on the same gate images
    report = open(str(smoke["tmp"] / "out2" / "report.md")).read()
    assert "Side by side with the last blessed model" in report and "| last blessed recall | change |" in report
    # the shift report's reference is now the blessed model's training set (its serving metadata)
    assert m["shift"]["reference"]["source"] == "last blessed model's training set"
    assert m["shift"]["reference"]["counts"] == first["label_stats"]["class_counts"]
    # the cached model is blessed again but not copied to a second serving version
    assert m["pushed"] is True and m["already_serving"] is True and first["already_serving"] is False
    assert m["pushed_model_dir"] == first["pushed_model_dir"]
    assert os.listdir(smoke["tmp"] / "serving" / "longtail-smoke") == [os.path.basename(first["pushed_model_dir"])]


def test_model_failing_the_gate_is_not_pushed_and_the_run_exits_5(smoke):
    tmp = smoke["tmp"]
    before = sorted(os.listdir(tmp / "serving" / "longtail-smoke"))
    proc = smoke_cli(tmp, "smoke", smoke["data"], str(tmp / "out3"), "gate.min_per_class_recall=0.99", check=False)
    assert proc.returncode == 5, proc.stderr[-3000:]  # pipeline/cli.py EXIT_NOT_PUSHED: a scheduler sees the refusal
    assert proc.stdout.strip().splitlines()[-1] == str(tmp / "out3")  # the last line is still the output folder
    assert "error: the gate refused the model (every class recall >= floor); nothing was pushed" in proc.stderr
    m = load_metrics(str(tmp / "out3"))
    assert m["blessed"] is False and m["pushed"] is False and m["pushed_model_dir"] is None
    assert [c["check"] for c in m["gate"]["checks"] if not c["passed"]] == ["every class recall >= floor"]
    assert sorted(os.listdir(tmp / "serving" / "longtail-smoke")) == before  # nothing new was pushed
    assert "NOT BLESSED" in proc.stdout and "pushed: no" in proc.stdout
    # --allow-unblessed: the same refusal (every component cached), exit 0
    again = smoke_cli(tmp, "smoke", smoke["data"], str(tmp / "out3b"), "gate.min_per_class_recall=0.99",
                      flags=("--allow-unblessed",))
    assert load_metrics(str(tmp / "out3b"))["blessed"] is False and "exit 0: --allow-unblessed" in again.stderr
    assert sorted(os.listdir(tmp / "serving" / "longtail-smoke")) == before


SERVE_SCRIPT = r"""
import json, sys
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
images = [open(p, 'rb').read() for p in sys.argv[2:]]
out = model.signatures['serving_default'](images=tf.constant(images))
print(json.dumps({'probabilities': out['probabilities'].numpy().tolist(), 'class_id': out['class_id'].numpy().tolist()}))
"""


def served_in_a_fresh_process(m: dict, data: str, tmp_path, n: int):
    """(the first n test images as uint8, the pushed model's serving_default outputs for their PNGs in a new process,
    the Keras model.keras of the same run)."""
    import keras
    import tensorflow as tf

    from models.inputs import read_examples

    files = sorted(glob.glob(os.path.join(data, "test", "*.tfrecord")))
    images, paths = [], []
    for i, (image, _) in enumerate(read_examples(files, [28, 28, 1]).take(n)):
        images.append(image.numpy())
        paths.append(str(tmp_path / f"{i}.png"))
        tf.io.write_file(paths[-1], tf.io.encode_png(image))
    proc = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, m["pushed_model_dir"], *paths],
                          capture_output=True, text=True, check=True)
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    model = keras.saving.load_model(os.path.join(m["model_run_dir"], "model.keras"), compile=False)
    return np.stack(images).astype("float32") / 255.0, served, model


def keras_logits(m: dict, model, images):
    """The logits the run's served model should give, from its Keras model: with train.test_time_flip=on (what the
    serving metadata also says) the mean of the images' and their mirror images' logits."""
    import keras

    from models.export import serving_metadata

    flip = m["config"]["train"]["test_time_flip"] == "on"
    assert serving_metadata(m["pushed_model_dir"])["test_time_flip"] is flip
    logits = keras.ops.convert_to_numpy(model(images))
    return 0.5 * (logits + keras.ops.convert_to_numpy(model(images[:, :, ::-1, :]))) if flip else logits


def test_pushed_savedmodel_in_a_fresh_process_matches_keras(smoke, tmp_path):
    import keras

    m = load_metrics(str(smoke["tmp"] / "out1"))
    assert m["config"]["train"]["test_time_flip"] == "on"  # Fashion-MNIST: crop,flip, so the flip path is what runs
    images, served, model = served_in_a_fresh_process(m, smoke["data"], tmp_path, 48)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(keras_logits(m, model, images)))
    np.testing.assert_allclose(np.array(served["probabilities"]), expected, atol=1e-5)
    assert served["class_id"] == expected.argmax(1).tolist()


def test_negative_label_stops_the_run_with_the_anomaly_named(smoke, tmp_path):
    import tensorflow as tf

    from components.data.prepare import encode_png

    data = str(tmp_path / "data")
    shutil.copytree(smoke["data"], data)
    with tf.io.TFRecordWriter(os.path.join(data, "labeled", "extra.tfrecord")) as w:
        feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_png(np.zeros((28, 28, 1), np.uint8))])),
                   "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[-3]))}
        w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    proc = smoke_cli(tmp_path, "smoke-anomaly", data, str(tmp_path / "out"), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "labeled examples: failed schema validation" in proc.stderr
    assert "feature 'label'" in proc.stderr and "split train" in proc.stderr
    assert not os.path.exists(tmp_path / "out" / "metrics.json")


def test_semi_daso_run_on_two_local_workers_pushes_and_reports_pseudo_labels(smoke, tmp_path):
    """semi=daso with train.local_workers=2: the Trainer trains FixMatch + DASO on a 2-worker
    MultiWorkerMirroredStrategy cluster (models.semi.fit_distributed), the chief scores the pool, exports, and the
    model is blessed and pushed. The chief's queue holds every labeled image of every global batch (both workers'
    halves: the features are gathered before the enqueue). 2 steps of 32 + 64 images: the fewest that show it."""
    data, out = smoke["data"], str(tmp_path / "out")  # the session's smoke folder (rho 100, a 200-image pool)
    proc = smoke_cli(tmp_path, "smoke-daso", data, out, "semi=daso", "train.local_workers=2", "train.batch_size=32",
                     "train.max_steps_per_epoch=2")
    m = load_metrics(out)
    assert proc.stderr.count("multi-worker training: 2 local worker process(es) of a 2-worker cluster") == 1
    d = m["training"]["distribute"]
    assert (d["strategy"], d["workers"], d["replicas"], d["global_batch_size"], d["per_replica_batch_size"]) == (
        "MultiWorkerMirroredStrategy", 2, 2, 32, 16)
    assert m["blessed"] is True and m["pushed"] is True
    assert os.path.exists(os.path.join(m["pushed_model_dir"], "saved_model.pb"))
    scratch = os.path.join(m["model_run_dir"], "distributed")
    w0, w1 = (np.load(os.path.join(scratch, f"worker-{i}", "final.weights.npz")) for i in (0, 1))
    for key in w0.files:  # the exported EMA model, BatchNorm statistics included, is one model on both workers
        np.testing.assert_array_equal(w0[key], w1[key])
    semi = m["semi"]
    assert semi["total_steps"] == 2 and sum(semi["queue_filled_per_class"]) == 2 * 32  # both workers' labeled images
    assert semi["method"] == "daso" and semi["threshold"] == 0.95 and semi["dist_temperature"] == 0.3  # rho_u=1 != rho
    assert semi["warmup_steps"] == 0 and "2%" in semi["warmup_rule"]  # 2% of the smoke run's 4 steps
    for key in ("pseudo_label_recall", "pseudo_label_precision", "mask_rate"):
        assert len(semi[key]) == 10, key
    assert len(semi["per_epoch"]) == 1 and semi["unlabeled_batch"] == 2 * m["config"]["train"]["batch_size"]
    assert m["config"]["semi"]["method"] == "daso"
    assert "## Semi-supervised training" in open(os.path.join(out, "report.md")).read()
    assert "pool pseudo-labels" in proc.stderr
    assert sum(semi["per_epoch"][0]["pseudo_label_counts"]) == 200  # every pool image scored against its true class


@pytest.fixture(scope="module")
def ssp_runs(smoke_runs):
    """ssp=rotation on the session's smoke folder (ssp1), then a change of the supervised training only (ssp2: the
    learning rate, and per-class logit offsets fitted after training), which re-trains from the cached
    pre-training and is calibrated; ssp2 pushes to a serving root of its own."""
    tmp = smoke_runs["tmp"]
    first = smoke_cli(tmp, "smoke", smoke_runs["data"], str(tmp / "ssp1"), "ssp=rotation")
    second = smoke_cli(tmp, "smoke", smoke_runs["data"], str(tmp / "ssp2"), "ssp=rotation", "train.learning_rate=0.02",
                       "calibration.method=class_offsets", f"serving_root={tmp}/serving-cal")
    return {"first": first, "second": second, "ssp1": tmp / "ssp1", "ssp2": tmp / "ssp2"}


def test_ssp_rotation_warm_starts_pushes_and_is_reused_when_only_training_changes(smoke, ssp_runs):
    tmp = smoke["tmp"]
    none_block = load_metrics(str(tmp / "out1"))["ssp"]
    assert none_block["method"] == "none" and none_block["linear_probe_accuracy"] is None
    first = ssp_runs["first"]
    m = load_metrics(str(tmp / "ssp1"))
    s = m["ssp"]
    assert {"method", "epochs", "data", "final_loss", "linear_probe_accuracy", "random_init_probe_accuracy"} <= set(s)
    assert (s["method"], s["epochs"], s["data"]) == ("rotation", 1, "labeled")
    assert np.isfinite(s["final_loss"]) and 0.0 <= s["linear_probe_accuracy"] <= 1.0
    assert 0.0 <= s["random_init_probe_accuracy"] <= 1.0
    assert s["num_examples"] == sum(m["label_stats"]["class_counts"])  # the labeled images, labels unused
    assert s["warm_start"]["variables"] == s["backbone_variables"] == 45  # every resnet8 backbone variable
    assert m["executions"]["components.trainer.SSPPretrainer"] == "COMPLETE"
    assert m["pushed"] is True and os.path.exists(os.path.join(m["pushed_model_dir"], "saved_model.pb"))
    assert "self-supervised pre-training: rotation" in first.stdout
    report = open(tmp / "ssp1" / "report.md").read()
    assert "## Self-supervised pre-training" in report and "ssp_loss.png" in report
    assert os.path.getsize(tmp / "ssp1" / "ssp_loss.png") > 1000
    # a supervised-only change re-trains from the cached pre-training
    m2 = load_metrics(str(tmp / "ssp2"))
    assert m2["executions"]["components.trainer.SSPPretrainer"] == "CACHED"
    assert m2["executions"]["components.trainer.LongTailTrainer"] == "COMPLETE"
    assert m2["timings"]["pretrain_cached"] is True
    assert m2["ssp"]["warm_start"]["base_model"] == s["warm_start"]["base_model"]
    assert m2["ssp"]["linear_probe_accuracy"] == s["linear_probe_accuracy"]


def test_ssp_on_labeled_and_unlabeled_needs_an_unlabeled_pool(tmp_path, fashion_mnist_dir):
    data = str(tmp_path / "data")
    prepare_from_source("fashion_mnist", SplitSpec(rho=10, n_max=40, val_per_class=4, unlabeled_size=0, seed=4),
                        data, fashion_mnist_dir)
    proc = smoke_cli(tmp_path, "smoke-ssp-nopool", data, str(tmp_path / "out"), "ssp=rotation",
                   "ssp_data=labeled+unlabeled", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "unlabeled: pretrain.data=labeled+unlabeled but the unlabeled pool is empty" in proc.stderr


def test_calibrated_model_is_gated_on_the_half_its_offsets_were_not_fitted_on(smoke, ssp_runs, tmp_path):
    """calibration.method=class_offsets (the ssp2 run): the Trainer fits per-class offsets on one half of the eval
    split and exports them in the SavedModel; the gate judges the other half only; metrics.json and report.md carry
    the offsets, both halves' sizes and the test split with and without them."""
    import tensorflow as tf

    from models import calibration
    from models.export import serving_metadata

    m = load_metrics(str(ssp_runs["ssp2"]))
    cal = m["calibration"]
    val_files = sorted(glob.glob(os.path.join(smoke["data"], "validation", "*.tfrecord")))
    images = [tf.io.parse_single_example(r, {"image": tf.io.FixedLenFeature([], tf.string)})["image"]
              for r in tf.data.TFRecordDataset(val_files)]
    buckets = calibration.holdout_bucket(tf.stack(images)).numpy()
    assert cal["method"] == "class_offsets" and cal["fit_examples"] == int((buckets == calibration.FIT_BUCKET).sum())
    assert m["gate"]["candidate"]["num_examples"] == cal["gate_num_examples"] == int((buckets != calibration.FIT_BUCKET).sum())
    assert cal["fit_examples"] + cal["gate_num_examples"] == 200 and "gate half" in m["gate"]["examples"]
    assert len(cal["offsets"]) == 10 and cal["objective_after"] >= cal["objective_before"]
    assert cal["test_uncalibrated"]["per_class_recall"] and m["test"]["num_examples"] == 10000
    meta = serving_metadata(m["pushed_model_dir"])
    np.testing.assert_allclose(meta["calibration_offsets"], cal["offsets"], atol=1e-6)
    report = open(ssp_runs["ssp2"] / "report.md").read()
    assert "## Calibration (per-class logit offsets)" in report and "the half calibration did not fit on" in report
    # the pushed model in a fresh process serves the Keras model's logits plus the offsets
    import keras

    images, served, model = served_in_a_fresh_process(m, smoke["data"], tmp_path, 16)
    logits = keras_logits(m, model, images) + np.asarray(cal["offsets"])
    np.testing.assert_allclose(np.array(served["probabilities"]), keras.ops.convert_to_numpy(keras.ops.softmax(logits)),
                               atol=1e-5)


def test_rollback_serves_the_earlier_version_again_and_the_next_gate_compares_with_it(smoke, ssp_runs):
    """After ssp1 pushed a second version over out1's: ``rollback`` serves out1's model again as a new highest version,
    un-blesses every newer model of the pipeline in MLMD (ssp1's, ssp2's), and the next run's gate baseline is out1's
    model, not ssp1's; that run's identical candidate is then already serving."""
    from components.pusher import saved_model_digest

    tmp = smoke["tmp"]
    base = tmp / "serving" / "longtail-smoke"
    first, ssp1 = load_metrics(str(tmp / "out1")), load_metrics(str(ssp_runs["ssp1"]))
    v1, v2 = os.path.basename(first["pushed_model_dir"]), os.path.basename(ssp1["pushed_model_dir"])
    assert sorted(os.listdir(base), key=int) == [v1, v2] and ssp1["already_serving"] is False
    args = [sys.executable, "-m", "pipeline", "rollback", "--model", "longtail-smoke", "--serving-root", str(tmp / "serving"),
            "--runs-root", str(tmp / "runs")]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    v3 = os.path.basename(proc.stdout.strip().splitlines()[-1])
    assert sorted(os.listdir(base), key=int) == [v1, v2, v3] and int(v3) > int(v2)
    assert saved_model_digest(str(base / v3)) == saved_model_digest(str(base / v1))
    assert f"version {v1} is served again as version {v3} (was {v2}); 2 newer model(s) no longer blessed" in proc.stderr
    out1_model = os.path.join(os.path.dirname(os.path.dirname(first["model_run_dir"])), "model",
                              os.path.basename(first["model_run_dir"]))
    assert out1_model in proc.stderr
    # nothing left to roll back to but ssp1's: rolling back twice in a row is refused by name, not guessed
    again = subprocess.run(args + ["--to", "1"], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=ROOT))
    assert again.returncode == 2 and f"has no version 1; it has {v1}, {v2}, {v3}" in again.stderr
    # the next run (out1's settings, its Trainer cached) is gated against out1's model and pushes nothing new
    smoke_cli(tmp, "smoke", smoke["data"], str(tmp / "out5"))
    m = load_metrics(str(tmp / "out5"))
    assert m["gate"]["baseline_model_uri"] == out1_model
    assert m["blessed"] is True and m["already_serving"] is True and m["pushed_model_dir"] == str(base / v3)

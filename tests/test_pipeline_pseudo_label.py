"""End-to-end semi=pseudo_label and semi=auto runs (smoke preset, Beam in memory, the real CLI):
BaseTrainer -> PseudoLabeler -> final Trainer -> gate -> push; a small pool under semi=auto (the planner
chooses SSP, which the final Trainer runs); and an empty pool under semi=auto."""

import glob
import os

import numpy as np
import pytest

from components.data.longtail import SplitSpec
from components.data.prepare import prepare_from_source
from tests.conftest import load_metrics, smoke_cli

pytestmark = pytest.mark.slow
BASE, LABELER = "components.trainer.PseudoLabelBaseTrainer", "components.pseudo_labeler.PseudoLabeler"
TRAINER = "components.trainer.LongTailTrainer"


@pytest.fixture(scope="module")
def pseudo_run(tmp_path_factory, fashion_mnist_dir):
    tmp = tmp_path_factory.mktemp("pl")
    data = str(tmp / "data")
    prepare_from_source("fashion_mnist", SplitSpec(rho=100, n_max=200, class_order="shuffle", val_per_class=20,
                                                   unlabeled_size=200, seed=1), data, fashion_mnist_dir)
    proc = smoke_cli(tmp, "pl", data, str(tmp / "out"), "semi=pseudo_label", "semi.pseudo_label.init=base",
                   "semi.pseudo_label.final_epochs=2", "semi.pseudo_label.prior=em_bcts")
    return {"tmp": tmp, "data": data, "proc": proc, "metrics": load_metrics(str(tmp / "out"))}


def test_pseudo_label_run_pushes_and_writes_plan_and_pseudo_labels(pseudo_run):
    m, out = pseudo_run["metrics"], str(pseudo_run["tmp"] / "out")
    assert m["executions"][BASE] == "COMPLETE" and m["executions"][LABELER] == "COMPLETE"
    assert m["executions"][TRAINER] == "COMPLETE"
    assert m["blessed"] is True and m["pushed"] is True
    assert os.path.exists(os.path.join(m["pushed_model_dir"], "saved_model.pb"))
    plan, pl = m["plan"], m["pseudo_labels"]
    assert set(plan) >= {"choice", "reasons", "estimates"} and plan["trained_with"] == "pseudo_label"
    assert plan["semi"] == "pseudo_label" and plan["estimates"]["pool_size"] == 200
    for key in ("threshold", "per_class_predicted", "per_class_accepted", "estimated_class_distribution",
                "estimated_rho_u", "estimated_relevance"):
        assert key in pl, key
    assert pl["threshold"] == 0.0 and sum(pl["per_class_predicted"]) == 200 and pl["num_accepted"] == 200
    assert pl["used_for_training"] is True and len(pl["estimated_class_distribution"]) == 10
    # the final Trainer read the labeled split and the accepted pseudo-labels, counted per class
    training = m["training"]
    assert training["training_files"]["pseudo_labeled"] and training["training_class_counts"] == [
        a + b for a, b in zip(m["label_stats"]["class_counts"], pl["per_class_accepted"])]
    assert m["semi"]["method"] == "pseudo_label"
    report = open(os.path.join(out, "report.md")).read()
    assert "## Semi-supervised plan" in report and "**Decision:**" in report
    assert "semi.method=pseudo_label was set" in report or "retrained on the labeled images plus" in report
    assert "plan (semi.method=pseudo_label)" in pseudo_run["proc"].stdout


def test_em_bcts_prior_labels_the_pool_and_is_reported(pseudo_run):
    """semi.pseudo_label.prior=em_bcts: the PseudoLabeler estimates the pool's prior on the pipeline's own eval split
    (20 a class) and the pool's 200 images, labels by the adjusted posterior, and metrics.json and report.md say so."""
    m, out = pseudo_run["metrics"], str(pseudo_run["tmp"] / "out")
    prior = m["pseudo_labels"]["prior_adjustment"]
    assert prior["setting"] == "em_bcts" and prior["method"] == "em_bcts" and prior["pool_examples"] == 200
    assert prior["validation_per_class"] == [20] * 10 and abs(sum(prior["prior"]) - 1) < 1e-6
    assert all(0 <= lo <= hi <= 1 for lo, hi in prior["interval"])
    assert sum(prior["per_class_labeled"]) == 200 and prior["per_class_labeled"] == m["pseudo_labels"]["per_class_accepted"]
    assert m["config"]["semi"]["pseudo_label"]["prior"] == "em_bcts"
    report = open(os.path.join(out, "report.md")).read()
    assert "Prior adjustment em_bcts: BCTS on 200 validation images" in report and "EM on 200 pool images" in report
    assert "EM-BCTS prior [95% interval]" in report


def test_final_model_starts_from_the_base_model(pseudo_run):
    """semi.pseudo_label.init=base: the BaseTrainer writes its classifier's every weight beside its SavedModel, the
    final Trainer loads them all (head included) through its init_model input. Every Trainer keeps the file, so the pushed
    model has it too: a later retrain can start from a served version (train.warm_start=serving/NAME/VERSION)."""
    m = pseudo_run["metrics"]
    init = m["pseudo_labels"]["init"]
    assert init["from"] == "base" and init["variables"] == 47  # resnet8: 45 backbone variables + the head's 2
    base_dir = os.path.join(m["pseudo_labels"]["base_model_uri"], "Format-Serving")
    assert init["model"] == base_dir and os.path.exists(os.path.join(base_dir, "classifier.weights.npz"))
    assert os.path.exists(os.path.join(m["pushed_model_dir"], "classifier.weights.npz"))
    assert f"starts from the classifier in {base_dir}: 47 variables, head included" in pseudo_run["proc"].stderr
    report = open(os.path.join(str(pseudo_run["tmp"] / "out"), "report.md")).read()
    assert "The final model started from the base model's weights (47 variables, head included" in report
    # semi.pseudo_label.final_epochs=2: the final Trainer trains 2 epochs, the base model train.epochs (1)
    assert m["training"]["epochs"] == 2 and len(m["training"]["history"]) == 2
    assert m["training"]["config"]["epochs"] == 2 and m["config"]["train"]["epochs"] == 1
    assert "2 epochs (the pseudo-labelling base model 1)" in report


def test_two_local_workers_train_the_base_and_the_final_model_which_is_blessed_and_pushed(pseudo_run):
    """train.local_workers=2 under semi=pseudo_label (the default preset's path): the BaseTrainer and the final
    Trainer each start a 2-worker MultiWorkerMirroredStrategy cluster; the final model starts from the base model in
    every worker, trains on the labeled and pseudo-labeled examples, and is gated and pushed."""
    tmp = pseudo_run["tmp"]
    proc = smoke_cli(tmp, "pl-dist", pseudo_run["data"], str(tmp / "dist"), "semi=pseudo_label",
                     "semi.pseudo_label.init=base", "semi.pseudo_label.final_epochs=2", "train.local_workers=2")
    m = load_metrics(str(tmp / "dist"))
    assert proc.stderr.count("multi-worker training: 2 local worker process(es) of a 2-worker cluster") == 2
    d = m["training"]["distribute"]
    assert (d["strategy"], d["workers"], d["replicas"], d["chief"]) == ("MultiWorkerMirroredStrategy", 2, 2, True)
    assert m["executions"][BASE] == m["executions"][TRAINER] == "COMPLETE"
    assert m["plan"]["trained_with"] == "pseudo_label" and m["training"]["training_files"]["pseudo_labeled"]
    assert m["pseudo_labels"]["init"]["from"] == "base" and m["pseudo_labels"]["init"]["variables"] == 47
    assert len(m["training"]["history"]) == 2
    assert m["blessed"] is True and m["pushed"] is True
    assert os.path.exists(os.path.join(m["pushed_model_dir"], "saved_model.pb"))
    assert "trainer: MultiWorkerMirroredStrategy: 2 worker(s), 2 replica(s)" in open(tmp / "dist" / "report.md").read()


def test_no_true_pool_label_reaches_a_training_example(pseudo_run):
    """Every pseudo-labeled example holds only image, label, confidence, origin, and its label is the base
    model's prediction (recomputed here: the served logits adjusted to the recorded EM-BCTS prior, as
    semi.pseudo_label.prior=em_bcts asks), not the pool's evaluation-only true class; the final Trainer read
    nothing but the labeled split and these examples."""
    import tensorflow as tf

    from models.class_prior import bcts_log_probabilities, prior_adjusted_log_probabilities

    m = pseudo_run["metrics"]
    pl = m["pseudo_labels"]
    files = sorted(tf.io.gfile.glob(os.path.join(pl["examples_uri"], "Split-train", "*")))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    assert len(records) == pl["num_accepted"] == 200
    examples = [tf.train.Example.FromString(r) for r in records]
    assert all(sorted(e.features.feature.keys()) == ["confidence", "image", "label", "origin"] for e in examples)
    labels = np.array([e.features.feature["label"].int64_list.value[0] for e in examples])
    confidence = np.array([e.features.feature["confidence"].float_list.value[0] for e in examples])
    base = tf.saved_model.load(os.path.join(pl["base_model_uri"], "Format-Serving"))
    out = base.signatures["serving_tf_example"](examples=tf.constant(records))
    prior = pl["prior_adjustment"]
    adjusted = np.exp(prior_adjusted_log_probabilities(
        bcts_log_probabilities(out["logits"].numpy(), prior["temperature"], prior["bias"]), prior["source_prior"],
        prior["prior"]))
    np.testing.assert_array_equal(labels, adjusted.argmax(axis=1))
    np.testing.assert_allclose(confidence, adjusted.max(axis=1), rtol=1e-5)
    # the labeled split's and the pseudo-labeled artifact's files only: no pool split, no truth file
    read = m["training"]["training_files"]
    assert all(pl["examples_uri"] in f for f in read["pseudo_labeled"])
    assert not any("unlabeled" in f.lower() or pseudo_run["data"] in f for f in read["labeled"] + read["pseudo_labeled"])


def test_auto_with_an_empty_pool_runs_supervised_only_and_says_so(tmp_path, fashion_mnist_dir):
    """An empty pool: no unlabeled branch is built, the planner says why, and the run trains, gates and pushes the
    supervised model."""
    data = str(tmp_path / "data")
    prepare_from_source("fashion_mnist", SplitSpec(rho=100, n_max=200, class_order="shuffle", val_per_class=20,
                                                   unlabeled_size=0, seed=1), data, fashion_mnist_dir)
    proc = smoke_cli(tmp_path, "auto-empty", data, str(tmp_path / "out"), "semi=auto")
    m = load_metrics(str(tmp_path / "out"))
    assert BASE not in m["executions"] and LABELER not in m["executions"]
    assert not any("Unlabeled" in k for k in m["executions"])
    assert m["unlabeled"]["examples"] == 0 and "supervised-only" in m["unlabeled"]["note"]
    assert m["plan"]["choice"] == "supervised" and m["plan"]["trained_with"] == "supervised"
    assert "empty" in m["plan"]["reasons_text"][0] and m["plan"]["reasons"][0]["code"] == "pool_empty"
    assert m["pseudo_labels"] is None
    assert m["pushed"] is True and not m["training"]["training_files"]["pseudo_labeled"]
    report = open(os.path.join(tmp_path / "out", "report.md")).read()
    assert "Trained on the labeled images only, because there is no unlabeled pool." in report
    assert "supervised-only" in proc.stderr
    assert glob.glob(os.path.join(m["model_run_dir"], "training_summary.json"))


def test_auto_with_a_small_pool_runs_ssp_inside_the_trainer_and_says_so(tmp_path, fashion_mnist_dir):
    """200 pool images for about 500 labeled ones: too few in-domain images, so the planner chooses SSP;
    the final Trainer pre-trains (rotation, smoke settings), warm-starts strictly and reports it. Asked for two
    workers, the base model trains on them, and the final Trainer, whose inline SSP pre-trains in one process,
    trains in one process and says why."""
    data = str(tmp_path / "data")
    prepare_from_source("fashion_mnist", SplitSpec(rho=100, n_max=200, class_order="shuffle", val_per_class=20,
                                                   unlabeled_size=200, seed=1), data, fashion_mnist_dir)
    proc = smoke_cli(tmp_path, "auto-ssp", data, str(tmp_path / "out"), "semi=auto", "train.local_workers=2")
    m = load_metrics(str(tmp_path / "out"))
    assert proc.stderr.count("multi-worker training: 2 local worker process(es)") == 1  # the BaseTrainer's
    d = m["training"]["distribute"]
    assert d["strategy"] == "none" and "the planner chose inline SSP" in d["reason"]
    assert "the planner chose inline SSP, which pre-trains in one process" in proc.stderr
    assert m["executions"][BASE] == "COMPLETE" and m["executions"][LABELER] == "COMPLETE"
    plan = m["plan"]
    assert plan["choice"] == "ssp" and plan["trained_with"] == "ssp" and plan["inline_ssp"] == "rotation"
    assert m["pseudo_labels"]["used_for_training"] is False and not m["training"]["training_files"]["pseudo_labeled"]
    ssp, warm = m["ssp"], m["training"]["warm_start"]
    assert ssp["method"] == "rotation" and ssp["data"] == "labeled" and "final Trainer" in ssp["run_by"]
    assert ssp["epochs"] == 1 and ssp["steps_per_epoch"] == 3 and ssp["linear_probe_accuracy"] is not None
    # the strict warm start loaded every backbone variable the pre-training saved
    assert warm["variables"] == ssp["backbone_variables"] > 0 and warm["base_model"].startswith(m["model_run_dir"])
    assert m["pushed"] is True
    report = open(os.path.join(tmp_path / "out", "report.md")).read()
    assert "ran rotation self-supervised pre-training on the labeled images" in report
    assert "run by the final Trainer (the planner chose SSP)" in report and "ssp_loss.png" in report

"""FixMatch / DASO training on real Fashion-MNIST images (models/semi.py); also run under JAX."""

import json
import math
import os

import keras
import numpy as np
import pytest
from keras import ops

from components.data.longtail import SplitSpec
from components.data.prepare import prepare_from_source
from models.config import DasoConfig, FixMatchConfig, SemiConfig, TrainConfig
from models.dotted import from_dict
from models.fixmatch import dist_temperature_for, ema_decay_at, warmup_steps_for
from models.label_stats import derive_label_stats
from models.semi import load_pool_truth, score_pseudo_labels, train_semi


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, fashion_mnist_dir):
    out = str(tmp_path_factory.mktemp("semi") / "data")
    manifest = prepare_from_source("fashion_mnist", SplitSpec(rho=10, n_max=100, class_order="shuffle", val_per_class=5,
                                                              unlabeled_size=600, seed=3), out, fashion_mnist_dir)
    stats = derive_label_stats(manifest["splits"]["labeled"]["per_class_counts"], manifest["class_names"])
    return out, manifest, stats


def _train(tiny, tmp_path, cfg, semi, **kwargs):
    out, manifest, stats = tiny
    truth = load_pool_truth(out, manifest["splits"]["unlabeled"], manifest["image_shape"])
    return train_semi(cfg, semi, os.path.join(out, "labeled", "*"), os.path.join(out, "unlabeled", "*"), stats,
                      manifest["image_shape"], str(tmp_path), pool_truth=truth, **kwargs)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the 50-step run once (TF); the short one runs on JAX")
def test_daso_50_steps_finite_losses_and_falling_consistency(tiny, tmp_path):
    # threshold 0: every pseudo-label counts from the first step, so the consistency loss measures the agreement of
    # the strong view with the weak view's pseudo-label (at 0.95 it starts at 0 and rises as images pass the threshold).
    # A small learning rate: at 0.05 the labeled loss moves the targets so fast in 50 steps that the term oscillates.
    cfg = TrainConfig(epochs=5, batch_size=32, max_steps_per_epoch=10, learning_rate=0.003)
    semi = SemiConfig(method="daso", fixmatch=FixMatchConfig(threshold=0.0), daso=DasoConfig(warmup_steps=0))
    ema, history, summary = _train(tiny, tmp_path, cfg, semi)
    assert len(history) == 5
    for h in history:
        for key in ("loss", "labeled_loss", "consistency_loss", "alignment_loss"):
            assert math.isfinite(h[key]), (h["epoch"], key)
        assert h["daso_on"] == 1.0 and h["alignment_loss"] > 0
    consistency = [h["consistency_loss"] for h in history]  # epoch means, 10 steps each
    assert consistency[-1] < consistency[0] and np.mean(consistency[1:]) < 0.8 * consistency[0], consistency
    assert sum(summary["queue_filled_per_class"]) > 0
    assert len(summary["pool_history"]) == 5 and len(summary["pseudo_label_recall"]) == 10
    assert all(np.isfinite(w).all() for w in ema.get_weights())


def test_fixmatch_short_run_exports_ema_and_reports(tiny, tmp_path):
    out, manifest, _ = tiny
    cfg = TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=3, loss="logit_adjusted",
                      jit_compile=keras.backend.backend() == "jax")
    ema, history, summary = _train(tiny, tmp_path, cfg, SemiConfig(method="fixmatch"), backup_dir=str(tmp_path / "backup"),
                                   pool_setting={"rho": manifest["rho"], "rho_u": manifest["rho_u"]})
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h[k]) for h in history for k in ("loss", "labeled_loss", "consistency_loss"))
    assert summary["method"] == "fixmatch" and summary["threshold"] == 0.95 and summary["warmup_steps"] is None
    assert summary["unlabeled_batch"] == 2 * 16 and summary["total_steps"] == 6
    for key in ("pseudo_label_recall", "pseudo_label_precision", "mask_rate"):
        assert len(summary[key]) == 10
    assert all(0.0 <= r <= 1.0 for r in summary["mask_rate"])
    logits = ops.convert_to_numpy(ema(np.zeros((2, 28, 28, 1), np.float32), training=False))
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_daso_short_run_switches_on_after_warmup(tiny, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, max_steps_per_epoch=3, jit_compile=keras.backend.backend() == "jax")
    _, history, summary = _train(tiny, tmp_path, cfg, SemiConfig(method="daso", daso=DasoConfig(warmup_steps=3)))
    assert [h["daso_on"] for h in history] == [0.0, 1.0]
    assert history[0]["alignment_loss"] == 0.0 and history[1]["alignment_loss"] > 0
    assert summary["warmup_steps"] == 3 and summary["dist_temperature"] == 1.5  # no pool setting given


def test_schedule_rules():
    assert warmup_steps_for(DasoConfig(), 250_000)[0] == 5000  # the paper's schedule
    assert warmup_steps_for(DasoConfig(), 1200)[0] == 24
    assert warmup_steps_for(DasoConfig(warmup_steps=7), 1200)[0] == 7
    assert dist_temperature_for(DasoConfig(), {"rho": 100, "rho_u": 100})[0] == 1.5
    assert dist_temperature_for(DasoConfig(), {"rho": 100, "rho_u": 1})[0] == 0.3
    assert dist_temperature_for(DasoConfig(), {"rho": 100, "rho_u": 100, "same_order": False})[0] == 0.3
    assert dist_temperature_for(DasoConfig(dist_temperature=2.0), {"rho": 100, "rho_u": 1})[0] == 2.0
    np.testing.assert_allclose(ops.convert_to_numpy(ema_decay_at(0.999, 0)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(ema_decay_at(0.999, 90)), 0.91, rtol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(ema_decay_at(0.999, 100_000)), 0.999, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown training mode semi.method='mixmatch'"):
        from_dict(SemiConfig, {"method": "mixmatch"})
    with pytest.raises(ValueError, match=r"unknown settings \['semi.fixmatch.thresh'\]"):
        from_dict(SemiConfig, {"method": "fixmatch", "fixmatch": {"thresh": 0.9}}, "semi.")


def test_score_pseudo_labels_by_hand():
    probs = np.array([[0.96, 0.04], [0.6, 0.4], [0.3, 0.7], [0.02, 0.98], [0.5, 0.5]], np.float32)
    truth = np.array([0, 1, 1, 1, -1])  # the last one's class is unknown: not scored
    s = score_pseudo_labels(probs, truth, threshold=0.95, num_classes=2)
    assert s["num_scored"] == 4 and s["pseudo_label_counts"] == [2, 2]
    np.testing.assert_allclose(s["pseudo_label_recall"], [1.0, 2 / 3])
    np.testing.assert_allclose(s["pseudo_label_precision"], [0.5, 1.0])
    np.testing.assert_allclose(s["mask_rate"], [1.0, 1 / 3])
    never = score_pseudo_labels(probs[:2], truth[:2], threshold=0.95, num_classes=2)  # class 1 never predicted
    assert never["pseudo_label_precision"] == [0.5, None] and never["pseudo_label_recall"] == [1.0, 0.0]


class _Stop(Exception):
    pass


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.distribute")
def test_daso_under_a_strategy_resumes_with_its_queue_and_counts(tiny, tmp_path, monkeypatch):
    """The custom loop (models.semi.fit_distributed, a 1-replica MirroredStrategy in this process) writes its backup
    after each epoch; killed after epoch 1, the rerun trains epoch 2 only, from the DASO state of epoch 1."""
    from models import distribute, toolkit

    cfg = TrainConfig(epochs=2, batch_size=8, max_steps_per_epoch=1)
    plan = distribute.Plan("MirroredStrategy", 1, 1, 0, True, 8, 8, "global", 0.05, "none", "examples", "none")
    semi = SemiConfig(method="daso", daso=DasoConfig(warmup_steps=0))
    backup = str(tmp_path / "backup")
    real_save = toolkit.Backup.save

    def save_then_stop(self, model, optimizer, epoch):
        real_save(self, model, optimizer, epoch)
        raise _Stop("simulated kill after epoch 1")

    monkeypatch.setattr(toolkit.Backup, "save", save_then_stop)
    with pytest.raises(_Stop):
        _train(tiny, tmp_path / "run1", cfg, semi, backup_dir=backup, strategy=distribute.make_strategy("mirrored"),
               plan=plan)
    monkeypatch.setattr(toolkit.Backup, "save", real_save)
    _, history, summary = _train(tiny, tmp_path / "run2", cfg, semi, backup_dir=backup,
                                 strategy=distribute.make_strategy("mirrored"), plan=plan)
    assert [h["epoch"] for h in history] == [2] and all(math.isfinite(h["loss"]) for h in history)
    assert sum(summary["queue_filled_per_class"]) == 2 * 8  # epoch 1's labeled features came back with the backup
    assert len(summary["pool_history"]) == 1 and not os.listdir(backup)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_the_strong_view_is_float32_under_mixed_precision(policy):
    """The input pipeline's augmentation layers compute in float32 whatever the policy (under either mixed policy
    RandomErasing failed on a 16-bit range, before they were built float32)."""
    import tensorflow as tf

    from models.semi import strong_augmenter

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        view = strong_augmenter(FixMatchConfig(), seed=0)(tf.fill([28, 28, 1], tf.constant(200, tf.uint8)))
    finally:
        keras.config.set_dtype_policy(previous)
    assert view.dtype == tf.float32 and view.shape == (28, 28, 1)
    assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) <= 1.0


def test_pool_truth_never_reaches_the_training_stream(tiny):
    from models.semi import unlabeled_stream

    out, manifest, _ = tiny
    ds = unlabeled_stream(os.path.join(out, "unlabeled", "*"), manifest["image_shape"], 8, FixMatchConfig(), seed=0)
    weak, strong = ds.element_spec  # two image views, nothing else
    assert weak.shape == strong.shape == (8, 28, 28, 1)
    with open(os.path.join(out, manifest["splits"]["unlabeled"]["true_labels_file"])) as f:
        assert len(json.load(f)["labels"]) == 600


def test_pipeline_settings_resolve_by_bare_name():
    from pipeline.configs import load_config
    from pipeline.pipeline import training_job

    cfg = load_config("smoke", {"semi": "daso", "semi_threshold": "0.9", "daso_warmup_steps": "none"})
    assert cfg.semi.method == "daso" and cfg.semi.fixmatch.threshold == 0.9 and cfg.semi.daso.warmup_steps is None
    assert load_config("smoke").semi.method == "supervised"
    assert load_config("smoke", {"semi_supervised.semi": "none"}).semi.method == "supervised"  # old name and value
    manifest = {"image_shape": [28, 28, 1], "rho": 100.0, "rho_u": 1.0, "class_order": [0, 1], "unlabeled_class_order": [0, 1],
                "splits": {"unlabeled": {"num_examples": 5, "files": ["unlabeled/u.tfrecord"]}}}
    config = training_job(cfg, manifest, "/root", "/data").to_custom_config()
    assert config["semi"]["method"] == "daso" and config["pool_setting"] == {"rho": 100.0, "rho_u": 1.0, "same_order": True}
    assert config["pool_truth"]["data_dir"] == "/data"
    supervised = training_job(load_config("smoke"), manifest, "/root", "/data").to_custom_config()
    assert "pool_truth" not in supervised and supervised["backup_dir"] != config["backup_dir"]

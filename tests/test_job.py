"""models/job.py: the Trainer's custom_config contract (keys, stages, round trip, cache key, backup folder)."""

import dataclasses
import hashlib
import json
import os

import pytest

from models import job
from models.config import CalibrationConfig, DistributeConfig, RegressionConfig, SemiConfig, SSPConfig, TrainConfig
from models.job import TrainerJob

SPLITS = {"labeled": {"num_examples": 240, "files": ["labeled/l.tfrecord"]}, "unlabeled": {"num_examples": 20}}


def _sha16(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _train_job(**kw) -> TrainerJob:
    return TrainerJob(train=TrainConfig(), semi=SemiConfig(), pretrain=SSPConfig(), calibration=CalibrationConfig(),
                      post_hoc_logit_adjust_tau=0.0, image_shape=[28, 28, 1], **kw)


def test_each_stage_writes_its_keys_and_reads_back_the_same_job():
    jobs = [_train_job(pool_setting={"rho": 10, "rho_u": 1.0, "same_order": True}, warm_start_model="/serving/m/3"),
            TrainerJob(stage=job.PRETRAIN, pretrain=SSPConfig(method="rotation"), backbone="resnet8",
                       image_shape=[28, 28, 1]),
            TrainerJob(stage=job.REGRESSION, train=TrainConfig(epochs=3), regression=RegressionConfig(fds=True))]
    keys = [sorted(j.with_backup("/root", SPLITS).to_custom_config()) for j in jobs]
    assert keys == [
        ["backup_dir", "calibration", "image_shape", "pool_setting", "post_hoc_logit_adjust_tau", "pretrain", "semi",
         "train", "warm_start_model"],
        ["backbone", "backup_dir", "image_shape", "pretrain"],
        ["backup_dir", "regression", "train"]]
    for j in jobs:
        c = json.loads(json.dumps(j.to_custom_config()))  # as TFX stores and hands it back
        assert job.stage_of(c) == j.stage
        back = TrainerJob.from_custom_config(c)
        assert back.to_custom_config() == j.to_custom_config()
        assert back.train == j.train and back.pretrain == j.pretrain and back.regression == j.regression
    # unset optional keys stay out: the stored JSON of a supervised Trainer has no pool or warm-start keys
    assert "pool_setting" not in _train_job().to_custom_config()
    assert "warm_start_model" not in _train_job().to_custom_config()


def test_the_pretraining_job_carries_the_distribution_settings_only_when_set():
    """How the pre-training Trainer runs (train.distribute, local_workers, ...) travels as its own key, absent at the
    defaults (a default job's stored JSON, hence its TFX cache, unchanged); it is part of the backup's cache key."""
    pre = TrainerJob(stage=job.PRETRAIN, pretrain=SSPConfig(method="moco"), backbone="resnet8", image_shape=[28, 28, 1])
    assert "distribute" not in pre.to_custom_config() and TrainerJob.from_custom_config(pre.to_custom_config()).distribute is None
    how = DistributeConfig.of(TrainConfig(local_workers=2, mixed_precision="mixed_bfloat16", epochs=3))
    assert how == DistributeConfig(local_workers=2, mixed_precision="mixed_bfloat16")  # the supervised settings left out
    assert DistributeConfig.of(TrainConfig()) == DistributeConfig()  # the same defaults as train.*
    spread = dataclasses.replace(pre, distribute=how)
    stored = json.loads(json.dumps(spread.to_custom_config()))
    assert stored["distribute"] == dataclasses.asdict(how)
    assert TrainerJob.from_custom_config(stored).distribute == how
    assert spread.cache_key(SPLITS) != pre.cache_key(SPLITS)


def test_the_executor_adds_input_paths_and_run_fn_reads_them():
    stored = _train_job().to_custom_config()
    given = TrainerJob.from_custom_config(stored).with_inputs(
        **{job.LABEL_STATS_PATH_KEY: "/s/label_stats.json", job.UNLABELED_FILES_KEY: ["/u/*"]}).to_custom_config()
    assert {k: given[k] for k in set(given) - set(stored)} == {"label_stats_path": "/s/label_stats.json",
                                                                "unlabeled_files": ["/u/*"]}
    read = TrainerJob.from_custom_config(given, job.TRAIN)
    assert read.label_stats_path == "/s/label_stats.json"
    assert read.inputs == {"label_stats_path": "/s/label_stats.json", "unlabeled_files": ["/u/*"]}
    with pytest.raises(ValueError, match="unknown Trainer inputs"):
        read.with_inputs(label_stats="/x")


def test_unknown_keys_and_settings_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown custom_config keys \['backup'\] for the train Trainer"):
        TrainerJob.from_custom_config({**_train_job().to_custom_config(), "backup": "/b"})
    with pytest.raises(ValueError, match=r"unknown custom_config keys \['regression'\] for the train Trainer"):
        TrainerJob.from_custom_config({"regression": {}}, job.TRAIN)
    with pytest.raises(ValueError, match=r"train\.epoch"):
        TrainerJob.from_custom_config({"train": {"epoch": 1}})
    with pytest.raises(ValueError, match="unknown Trainer stage"):
        TrainerJob(stage="eval")


def test_cache_key_is_the_hash_of_what_the_training_depends_on():
    train, semi, pretrain = TrainConfig(), SemiConfig(), SSPConfig()
    supervised = _train_job()
    # pretrain.method=none and a mode without inline SSP: the pre-training settings are not part of it
    assert supervised.cache_key(SPLITS) == _sha16(
        {"train": dataclasses.asdict(train), "semi": dataclasses.asdict(semi), "data": SPLITS})
    assert supervised.cache_key(SPLITS) == dataclasses.replace(supervised, pretrain=SSPConfig(epochs=7)).cache_key(SPLITS)
    warm = dataclasses.replace(supervised, pretrain=SSPConfig(method="rotation"))
    assert warm.cache_key(SPLITS) == _sha16({"train": dataclasses.asdict(train), "semi": dataclasses.asdict(semi),
                                             "pretrain": dataclasses.asdict(warm.pretrain), "data": SPLITS})
    planned = dataclasses.replace(supervised, semi=SemiConfig(method="auto"))  # the planner may pre-train inline
    assert planned.cache_key(SPLITS) != dataclasses.replace(planned, pretrain=SSPConfig(epochs=7)).cache_key(SPLITS)
    # settings outside the key (calibration, tau) and the executor's paths leave it alone
    assert dataclasses.replace(supervised, calibration=CalibrationConfig(method="class_offsets"),
                               post_hoc_logit_adjust_tau=1.0, label_stats_path="/s").cache_key(SPLITS) == \
        supervised.cache_key(SPLITS)
    assert supervised.cache_key(SPLITS) != supervised.cache_key({**SPLITS, "unlabeled": {"num_examples": 21}})

    pre = TrainerJob(stage=job.PRETRAIN, pretrain=pretrain, backbone="resnet8", image_shape=[28, 28, 1])
    assert pre.cache_key(SPLITS) == _sha16({"pretrain": dataclasses.asdict(pretrain), "backbone": "resnet8",
                                            "data": SPLITS})
    reg = TrainerJob(stage=job.REGRESSION, train=train, regression=RegressionConfig())
    listing = ["/csv", ("data.csv", 10, 1)]
    assert reg.cache_key(listing) == _sha16({"train": dataclasses.asdict(train),
                                             "regression": dataclasses.asdict(RegressionConfig()),
                                             "csv": json.loads(json.dumps(listing))})


def test_backup_folder_is_under_the_stage_folder_named_by_the_cache_key():
    pre = TrainerJob(stage=job.PRETRAIN, pretrain=SSPConfig(), backbone="resnet8")
    assert pre.with_backup("gs://b/root", SPLITS).backup_dir == f"gs://b/root/_pretrainer_backup/{pre.cache_key(SPLITS)}"
    assert _train_job().backup_folder("/r", SPLITS) == f"/r/_trainer_backup/{_train_job().cache_key(SPLITS)}"


def test_folder_identity_lists_files_or_names_the_folder(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    os.utime(tmp_path / "a.csv", (1_700_000_000, 1_700_000_000))
    (tmp_path / "sub").mkdir()
    assert job.folder_identity(str(tmp_path)) == [str(tmp_path), ("a.csv", 4, 1_700_000_000)]
    assert job.folder_identity("/no/such/folder") == ["/no/such/folder"]

"""Faults without loss: every trainer (classification, regression, SSP) killed with SIGKILL resumes from its last
finished epoch when run again; a push killed before its rename leaves no half-written version; a second run of
the same pipeline while one is running stops at once with a message."""

import glob
import json
import os
import signal
import subprocess
import sys

import pytest

from components.data.longtail import SplitSpec
from components.data.prepare import prepare_from_source
from models.label_stats import derive_label_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)

# One training in a fresh process: argv = kind, data JSON, run dir, backup dir, kill-after epoch (0: never).
# SigKill comes after BackupAndRestore in the callback list, so epoch k's backup is written when the process dies.
TRAIN_SCRIPT = r"""
import json, os, signal, sys
import keras
kind, data, run_dir, backup, kill_after = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])

class SigKill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

extra = [SigKill()]
if kind == "classification":
    from models.config import TrainConfig
    from models.training import train
    cfg = TrainConfig(epochs=3, batch_size=32, max_steps_per_epoch=2)
    _, history = train(cfg, data["files"], data["stats"], [28, 28, 1], run_dir, backup, extra_callbacks=extra)
elif kind == "ssp":
    from models.config import SSPConfig
    from models.ssp import pretrain
    cfg = SSPConfig(method="rotation", epochs=3, batch_size=32, max_steps_per_epoch=2)
    _, summary = pretrain(cfg, "resnet8", [28, 28, 1], [data["files"]], run_dir, None, backup, extra_callbacks=extra)
    history = summary["history"]
else:
    import numpy as np
    from bench.regression_bench import csv_path, load_rows
    from models.config import RegressionConfig, TrainConfig
    from models.density import derive_regression_stats
    from models.regression import model_columns, to_model_inputs, train_regressor
    cfg = RegressionConfig(fds=True)
    values, _, _ = load_rows(csv_path(), cfg.target, cfg.max_target)
    values = {c: v[:1500] for c, v in values.items()}
    y = values[cfg.target].astype(np.float64)
    stats = derive_regression_stats(dict(zip(*np.unique(np.floor(y / cfg.bin_width).astype(int), return_counts=True))))
    x = to_model_inputs({c: values[c] for c in model_columns(cfg)}, cfg)
    _, history = train_regressor(cfg, TrainConfig(epochs=3, batch_size=256), x, y, stats, extra_callbacks=extra,
                                 backup_dir=backup)
print(json.dumps([h["epoch"] for h in history]))
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, fashion_mnist_dir):
    out = str(tmp_path_factory.mktemp("faults") / "data")
    manifest = prepare_from_source("fashion_mnist", SplitSpec(rho=10, n_max=60, class_order="shuffle", val_per_class=5,
                                                              unlabeled_size=0, seed=3), out, fashion_mnist_dir)
    files = sorted(glob.glob(os.path.join(out, "labeled", "*.tfrecord")))
    stats = derive_label_stats(manifest["splits"]["labeled"]["per_class_counts"], manifest["class_names"])
    return {"files": files, "stats": stats}


@pytest.mark.parametrize("kind", ["classification", "regression", "ssp"])
def test_a_sigkilled_trainer_resumes_from_its_last_finished_epoch(kind, tiny, tmp_path):
    backup = str(tmp_path / "backup")
    args = [sys.executable, "-c", TRAIN_SCRIPT, kind, json.dumps(tiny)]
    killed = subprocess.run([*args, str(tmp_path / "run1"), backup, "2"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert os.listdir(backup), "no backup was written before the kill"
    rerun = subprocess.run([*args, str(tmp_path / "run2"), backup, "0"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout.strip().splitlines()[-1]) == [3]  # epochs 1 and 2 were not trained again
    assert not os.path.exists(backup) or not os.listdir(backup)  # a finished training removes its backup

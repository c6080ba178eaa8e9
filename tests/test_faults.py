"""Faults without loss: every trainer (classification, regression, SSP) killed with SIGKILL resumes from its last
finished epoch when run again; a push killed before its rename leaves no half-written version; a second run of
the same pipeline while one is running stops at once with a message."""

import json
import os
import signal
import subprocess
import sys

import pytest

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
    from models.regression import train_regressor
    from models.tabular import model_columns, to_model_inputs
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


@pytest.mark.parametrize("kind", ["classification", "regression", "ssp"])
def test_a_sigkilled_trainer_resumes_from_its_last_finished_epoch(kind, tiny, tmp_path):
    backup = str(tmp_path / "backup")
    args = [sys.executable, "-c", TRAIN_SCRIPT, kind, json.dumps({"files": tiny[0], "stats": tiny[1]})]
    killed = subprocess.run([*args, str(tmp_path / "run1"), backup, "2"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert os.listdir(backup), "no backup was written before the kill"
    rerun = subprocess.run([*args, str(tmp_path / "run2"), backup, "0"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads(rerun.stdout.strip().splitlines()[-1]) == [3]  # epochs 1 and 2 were not trained again
    assert not os.path.exists(backup) or not os.listdir(backup)  # a finished training removes its backup


# One blessed push in a fresh process: argv = model dir, blessing dir, push dir, destination. With HANG_BEFORE_RENAME
# set, the copy completes and the process waits just before the rename, where the test kills it.
PUSH_SCRIPT = r"""
import json, os, sys, time
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils
from components import pusher

model_dir, blessing_dir, push_dir, base = sys.argv[1:5]
if os.environ.get("HANG_BEFORE_RENAME"):
    def hang(src, dst, overwrite=False):
        print("copied", src, flush=True)
        time.sleep(600)
    fileio.rename = hang
model, blessing, pushed = standard_artifacts.Model(), standard_artifacts.ModelBlessing(), standard_artifacts.PushedModel()
model.uri, blessing.uri, pushed.uri = model_dir, blessing_dir, push_dir
blessing.set_int_custom_property("blessed", 1)
destination = pusher_pb2.PushDestination(filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=base))
pusher.Executor().Do({"model": [model], "model_blessing": [blessing]}, {"pushed_model": [pushed]},
                     {"push_destination": proto_utils.proto_to_json(destination)})
print(json.dumps({k: pushed.get_custom_property(k) for k in ("pushed", "pushed_version", "removed_partial_pushes")}))
"""


def test_a_push_killed_before_its_rename_leaves_no_version_and_the_next_push_cleans_up(tmp_path):
    from models.serving import newest_version

    model = tmp_path / "model" / "Format-Serving"  # a Trainer's model artifact: the SavedModel under Format-Serving
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph" * 1000)
    (model / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(1 << 20))
    (model / "variables" / "variables.index").write_bytes(b"index")
    base = tmp_path / "serving" / "longtail-smoke"
    args = [sys.executable, "-c", PUSH_SCRIPT, str(tmp_path / "model"), str(tmp_path / "blessing"), str(tmp_path / "push1"),
            str(base)]
    proc = subprocess.Popen(args, cwd=ROOT, env=dict(ENV, HANG_BEFORE_RENAME="1"), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("copied"), "the push did not reach its rename"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    partials = os.listdir(base)
    assert len(partials) == 1 and partials[0].endswith(".partial"), partials
    assert newest_version(str(base)) is None  # nothing a server would load
    args[-2] = str(tmp_path / "push2")
    done = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["pushed"] == 1 and result["removed_partial_pushes"] == 1
    assert os.listdir(base) == [result["pushed_version"]]
    pushed = base / result["pushed_version"]
    assert sorted(os.listdir(pushed)) == ["saved_model.pb", "variables"]
    assert (pushed / "variables" / "variables.data-00000-of-00001").read_bytes() == \
        (model / "variables" / "variables.data-00000-of-00001").read_bytes()


def test_a_second_run_of_the_same_pipeline_with_no_wait_stops_at_once_with_a_message(tiny, tmp_path):
    import time

    from pipeline.local_runner import pipeline_lock

    data_dir = os.path.dirname(os.path.dirname(tiny[0][0]))
    home = tmp_path / "runs" / "_tfx" / "busy"
    home.mkdir(parents=True)
    with pipeline_lock(str(home / "metadata.sqlite"), "busy"):
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pipeline", "run", "--no-wait", "--preset", "smoke", "--set", "name=busy",
                               "--set", f"data.data_dir={data_dir}", "--set", f"runs_root={tmp_path / 'runs'}",
                               "--set", f"serving_root={tmp_path / 'serving'}"],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
        seconds = time.time() - t0
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert f"pipeline 'busy' is already running (pid {os.getpid()} since " in proc.stderr
    assert "--set name=" in proc.stderr
    assert not os.path.exists(home / "metadata.sqlite") and seconds < 120  # stopped before any component ran


def test_a_second_run_of_the_same_pipeline_waits_for_the_first(tmp_path, capfd):
    import threading
    import time

    from pipeline.local_runner import pipeline_lock

    home = tmp_path / "_tfx" / "busy"
    home.mkdir(parents=True)
    order = []

    def second():
        with pipeline_lock(str(home / "metadata.sqlite"), "busy"):
            order.append("second")

    with pipeline_lock(str(home / "metadata.sqlite"), "busy"):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(1.0)
        order.append("first done")
    t.join(30)
    assert order == ["first done", "second"]
    assert f"pipeline 'busy' is already running (pid {os.getpid()} since " in capfd.readouterr().err


def test_two_smoke_runs_started_at_once_on_data_not_yet_prepared_both_finish(tmp_path, fashion_mnist_dir):
    """Issue #27: both need the same prepared folder; one prepares it, the other waits and reuses it."""
    cwd = tmp_path / "checkout"  # data/ is relative to the working directory: a fresh one, so nothing is prepared yet
    cwd.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--preset", "smoke", "--set", f"name=twin{i}",
                               "--set", f"data.source_dir={fashion_mnist_dir}", "--set", "data.unlabeled_size=50",
                               "--set", "beam.direct_running_mode=in_memory", "--set", f"runs_root={tmp_path / 'runs'}",
                               "--set", f"serving_root={tmp_path / 'serving'}"],
                              cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert os.path.exists(os.path.join(out.strip().splitlines()[-1], "metrics.json"))
    errs = "".join(err for _, err in outs)
    assert errs.count("[prepare-data] preparing ") == 1 and "is prepared; reusing it" in errs
    prepared = os.listdir(cwd / "data")
    assert len([d for d in prepared if not d.endswith(".lock")]) == 1, prepared  # no temporary folder left

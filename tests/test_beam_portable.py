"""Beam's portable runner path, as Flink, Spark and Dataflow take it: Beam's own Python job service and an
external SDK worker pool run as separate processes on localhost (started and stopped here), and the smoke
pipeline with pseudo-labels runs every Beam job through them (TFX's ExampleGen and StatisticsGen, our
LabelStatsGen and PseudoLabeler). The label statistics and pseudo-labels must equal what the same
executors write on FnApiRunner from the same input artifacts."""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml

from components.artifacts import LABEL_STATS_FILE, PSEUDO_LABEL_STATS_FILE
from pipeline.outputs import latest_run_outputs
from tests.test_kfp_executors import ENV, ROOT, _cli, _examples_of, _metadata, _outputs, run_compiled_task


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, proc, log: str, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{log} exited with {proc.returncode}: {open(log).read()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port} after {seconds} s ({log})")


@pytest.fixture(scope="module")
def beam_services(tmp_path_factory):
    """Beam's job service and an external worker pool, on free localhost ports; both stopped afterwards."""
    logs = tmp_path_factory.mktemp("beam_services")
    job_port, pool_port = _free_port(), _free_port()
    procs = []
    try:
        for name, cmd, port in (
                ("job_service", ["apache_beam.runners.portability.local_job_service_main", "--port", str(job_port)],
                 job_port),
                ("worker_pool", ["apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port)],
                 pool_port)):
            log = str(logs / f"{name}.log")
            proc = subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, env=ENV, stdout=open(log, "w"),
                                    stderr=subprocess.STDOUT)
            procs.append(proc)
            _wait_for_port(port, proc, log)
        yield {"job_endpoint": f"localhost:{job_port}", "worker_pool": f"localhost:{pool_port}",
               "job_log": str(logs / "job_service.log")}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert all(p.poll() is not None for p in procs)


def _records(folder: str) -> list[dict]:
    """The pseudo-labeled examples, by image digest: label exact, confidence as float."""
    files = sorted(glob.glob(os.path.join(folder, "Split-train", "*")))
    assert files, folder
    out = []
    for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.train.Example.FromString(raw.numpy()).features.feature
        out.append({"image": ex["image"].bytes_list.value[0], "label": ex["label"].int64_list.value[0],
                    "confidence": ex["confidence"].float_list.value[0]})
    return sorted(out, key=lambda r: r["image"])


def _assert_close(a, b, path="stats"):
    """Equal, floats to 1e-6 relative (the runners batch the images differently, so inference sums may differ
    in their last bits)."""
    if isinstance(a, dict):
        assert sorted(a) == sorted(b), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert np.isclose(a, b, rtol=1e-6, atol=1e-9), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_smoke_pipeline_on_the_portable_runner_matches_fnapirunner(beam_services, tmp_path, fashion_mnist_dir):
    from components.data.longtail import SplitSpec
    from components.data.prepare import prepare_from_source

    data = str(tmp_path / "data")
    prepare_from_source("fashion_mnist", SplitSpec(rho=10, n_max=100, val_per_class=10, unlabeled_size=60), data,
                        fashion_mnist_dir)
    common = ["--preset", "smoke", "--set", f"data.data_dir={data}", "--set", "semi=pseudo_label",
              "--set", f"runs_root={tmp_path / 'runs'}", "--set", f"serving_root={tmp_path / 'serving'}"]
    portable = ["--set", "beam.runner=PortableRunner", "--set", f"beam.job_endpoint={beam_services['job_endpoint']}",
                "--set", "beam.environment_type=EXTERNAL",
                "--set", f"beam.environment_config={beam_services['worker_pool']}"]
    proc = _cli("run", *common, *portable, "--out", str(tmp_path / "out"))
    assert "gate: BLESSED" in proc.stdout
    jobs = open(beam_services["job_log"]).read().count("with state DONE")
    # Labeled + Unlabeled ExampleGen and StatisticsGen, LabelStatsGen, PseudoLabeler: every Beam job went there
    assert jobs >= 6, open(beam_services["job_log"]).read()[-3000:]
    mlmd = str(tmp_path / "runs" / "_tfx" / "longtail-smoke" / "metadata.sqlite")
    run = latest_run_outputs(mlmd)

    package = str(tmp_path / "fnapi.yaml")  # the same config on the default runner: FnApiRunner, in memory
    _cli("compile-kfp", *common, "--set", "beam.direct_running_mode=in_memory", "--pipeline-root",
         str(tmp_path / "root"), "--output", package)
    spec = yaml.safe_load(open(package))
    assert "--runner=FnApiRunner" in spec["deploymentSpec"]["executors"]["LabelStatsGen_executor"]["container"]["args"]
    labeled, unlabeled = _examples_of(mlmd, "LabeledExampleGen"), _examples_of(mlmd, "UnlabeledExampleGen")

    run_compiled_task(spec, "LabelStatsGen", {"examples": (labeled.uri, _metadata(labeled)),
                                              "unlabeled_examples": (unlabeled.uri, _metadata(unlabeled))},
                      str(tmp_path / "fn_stats"))
    (port_stats,) = _outputs(run, "components.label_stats_gen.LabelStatsGen", "components.LabelStatistics")
    assert json.load(open(tmp_path / "fn_stats" / "label_stats" / LABEL_STATS_FILE)) == json.load(
        open(os.path.join(port_stats.uri, LABEL_STATS_FILE)))

    (base_model,) = _outputs(run, "components.trainer.PseudoLabelBaseTrainer", "Model")
    run_compiled_task(spec, "PseudoLabeler", {"model": (base_model.uri, _metadata(base_model)),
                                              "unlabeled_examples": (unlabeled.uri, _metadata(unlabeled)),
                                              "examples": (labeled.uri, _metadata(labeled))},
                      str(tmp_path / "fn_pl"))
    (port_pl_stats,) = _outputs(run, "components.pseudo_labeler.PseudoLabeler", "components.PseudoLabelStatistics")
    _assert_close(json.load(open(tmp_path / "fn_pl" / "statistics" / PSEUDO_LABEL_STATS_FILE)),
                  json.load(open(os.path.join(port_pl_stats.uri, PSEUDO_LABEL_STATS_FILE))))
    (port_examples,) = _outputs(run, "components.pseudo_labeler.PseudoLabeler", "Examples")
    fn_records, port_records = _records(str(tmp_path / "fn_pl" / "pseudo_labeled_examples")), _records(port_examples.uri)
    assert len(port_records) == 60
    assert [(r["image"], r["label"]) for r in fn_records] == [(r["image"], r["label"]) for r in port_records]
    np.testing.assert_allclose([r["confidence"] for r in fn_records], [r["confidence"] for r in port_records], rtol=1e-6)

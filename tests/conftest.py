"""Test-wide settings (quiet TF, the TensorFlow Keras backend by default, no network), the one way tests run the
CLI (:func:`run_cli`), and the pipeline runs several test files read: one smoke run pair and one taxi run pair a
session (``smoke_runs``, ``taxi_runs``), so no file runs its own copy of them."""

import csv
import ipaddress
import json
import os
import socket
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# the session fixtures whose pipeline runs several test files read (make test runs pytest-xdist, -n 2 --dist
# loadgroup: every file is one group, so its module fixtures are built once; the files reading these share one group,
# so each fixture's runs are made once a session, not once a worker)
SHARED_RUN_FIXTURES = ("smoke_runs", "taxi_runs")
SHARED_RUNS_GROUP = "shared-runs"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns each xdist_group mark into the nodeid's
def pytest_collection_modifyitems(config, items):  # "@group" suffix that --dist loadgroup schedules by
    shared = {item.module.__name__ for item in items if set(SHARED_RUN_FIXTURES) & set(item.fixturenames)}
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.module.__name__
            item.add_marker(pytest.mark.xdist_group(SHARED_RUNS_GROUP if module in shared else module))


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Tests must not reach the network: any connection off loopback fails loudly."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(fn):
        def wrapped(self, address):
            if not _is_local(address):
                raise RuntimeError(f"test tried to reach the network: {address!r}")
            return fn(self, address)
        return wrapped

    socket.socket.connect, socket.socket.connect_ex = guard(real_connect), guard(real_connect_ex)
    yield
    socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    if not os.path.isdir(FASHION_MNIST_DIR):
        pytest.fail(f"{FASHION_MNIST_DIR} missing: run the tests through tools/env, which installs dataset-fashion-mnist")
    return FASHION_MNIST_DIR


@pytest.fixture(scope="session")
def tiny(tmp_path_factory, fashion_mnist_dir):
    """A tiny real labeled set (Fashion-MNIST-LT, rho 10, at most 60 a class): its TFRecords and label statistics."""
    import glob

    from components.data.longtail import SplitSpec
    from components.data.prepare import prepare_from_source
    from models.label_stats import derive_label_stats

    out = str(tmp_path_factory.mktemp("tiny") / "data")
    manifest = prepare_from_source("fashion_mnist", SplitSpec(rho=10, n_max=60, class_order="shuffle", val_per_class=5,
                                                              unlabeled_size=0, seed=3), out, fashion_mnist_dir)
    files = sorted(glob.glob(os.path.join(out, "labeled", "*.tfrecord")))
    return files, derive_label_stats(manifest["splits"]["labeled"]["per_class_counts"], manifest["class_names"])


# --- the CLI and the shared pipeline runs ----------------------------------------------------------------------


def run_cli(preset, tmp, out, *sets, check=True, flags=()):
    """``python -m pipeline run --preset PRESET --set KEY=VALUE ... FLAGS`` in a fresh process, as a user runs it: its
    runs and serving folders under ``tmp``, Beam in memory, output folder ``out``. ``check``: a non-zero exit fails
    the test with the run's stderr."""
    args = [sys.executable, "-m", "pipeline", "run", "--preset", preset, "--set", f"runs_root={tmp}/runs",
            "--set", f"serving_root={tmp}/serving", "--set", "beam.direct_running_mode=in_memory", "--out", str(out),
            *flags]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def smoke_cli(tmp, name, data_dir, out, *sets, check=True, flags=()):
    """The smoke preset on a prepared folder, under pipeline name ``name``."""
    return run_cli("smoke", tmp, out, f"name={name}", f"data.data_dir={data_dir}", *sets, check=check, flags=flags)


def _latest_run_outputs(mlmd: str) -> dict:
    """Each execution's outputs in the newest run of an MLMD (read right after a run, before the next one)."""
    from pipeline.outputs import latest_run_outputs

    return latest_run_outputs(mlmd)


def load_metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory, fashion_mnist_dir):
    """Two smoke runs of pipeline "smoke" on one Fashion-MNIST-LT folder with a pool (out1, then out2 on the
    cache), with out1's MLMD outputs (``first_outputs``: the run with no baseline). Tests that run more into ``tmp``
    use pipeline "smoke" or a name of their own."""
    from components.data.longtail import SplitSpec
    from components.data.prepare import prepare_from_source

    tmp = tmp_path_factory.mktemp("e2e")
    data = str(tmp / "data")
    prepare_from_source("fashion_mnist", SplitSpec(rho=100, n_max=200, class_order="shuffle", val_per_class=20,
                                                   unlabeled_size=200, seed=1), data, fashion_mnist_dir)
    first = smoke_cli(tmp, "smoke", data, tmp / "out1")
    mlmd = str(tmp / "runs" / "_tfx" / "smoke" / "metadata.sqlite")
    first_outputs = _latest_run_outputs(mlmd)
    second = smoke_cli(tmp, "smoke", data, tmp / "out2")
    return {"tmp": tmp, "data": data, "first": first, "second": second, "mlmd": mlmd, "first_outputs": first_outputs}


TAXI_BAD_FARES = ("", "-5.0", "5000.0")  # missing, negative, absurd (max_target 1000)


def taxi_cli(tmp, csv_dir, out, *sets, check=True):
    """The regression smoke preset on a CSV folder, at most 5% bad rows."""
    return run_cli("regression-smoke", tmp, out, f"regression.csv_dir={csv_dir}", "regression.max_bad_fraction=0.05",
                   *sets, check=check)


@pytest.fixture(scope="session")
def taxi_runs(tmp_path_factory):
    """3,000 real rows of the tfx package's taxi CSV (with the one row that has a pickup census tract, so every
    column has a value to infer its type from) plus three rows with a bad fare, in a folder named ``csv``, run
    twice (out1, with its MLMD outputs in ``first_outputs``, then out2). A CSV folder of the user's own is named
    after itself (data_identity): pipeline, MLMD history and serving folder ``longtail-csv-regression-smoke-fare``."""
    from pipeline.pipeline import default_csv_dir

    tmp = tmp_path_factory.mktemp("taxi")
    csv_dir = tmp / "csv"
    csv_dir.mkdir()
    with open(os.path.join(default_csv_dir(), "data.csv"), newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:3000] + [rows[-1]]
    fare = header.index("fare")
    bad = []
    for i, value in enumerate(TAXI_BAD_FARES):
        row = list(body[10 + i])
        row[fare] = value
        bad.append(row)
    with open(csv_dir / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *body, *bad])
    first = taxi_cli(tmp, csv_dir, tmp / "out1")
    pipeline = "longtail-csv-regression-smoke-fare"  # the folder's name, the preset's, the target
    mlmd = str(tmp / "runs" / "_tfx" / pipeline / "metadata.sqlite")
    first_outputs = _latest_run_outputs(mlmd)
    second = taxi_cli(tmp, csv_dir, tmp / "out2")
    return {"tmp": tmp, "csv": str(csv_dir), "first": first, "second": second, "rows": len(body) + len(bad),
            "pipeline": pipeline, "serving": tmp / "serving" / pipeline, "mlmd": mlmd,
            "first_outputs": first_outputs}

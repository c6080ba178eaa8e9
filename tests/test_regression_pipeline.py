"""task=regression: the bad-row policy, the regression gate and metrics, and end-to-end LocalDagRunner
runs (regression-smoke preset, Beam in memory) on a slice of the real Chicago taxi CSV with bad rows
added."""

import csv
import json
import math
import os
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that, equal_to

from components.gate import RegressionGate, RegressionGateThresholds, decide
from components.regression_label_stats_gen import check_split
from models.config import RegressionConfig
from models.dotted import from_dict
from models.regression import regression_metrics
from models.tabular import COLUMN_TYPES, target_problem, valid_rows
from pipeline.pipeline import SCHEMA_DIR, default_csv_dir
from tests.conftest import TAXI_BAD_FARES, load_metrics, taxi_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bad_row_policy_names_each_reason():
    assert [target_problem(v, 100.0) for v in (None, float("nan"), float("inf"), -0.5, 100.5, 0.0, 100.0)] == [
        "missing target", "non-finite target", "non-finite target", "negative target", "target above max_target", None, None]
    np.testing.assert_array_equal(valid_rows([1.0, np.nan, -1.0, 2.0, 200.0], [True, False, True, False, True], 100.0),
                                  [True, False, False, False, False])


def test_schema_file_matches_the_column_types_the_model_reads():
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = text_format.Parse(open(os.path.join(SCHEMA_DIR, "chicago_taxi.pbtxt")).read(), schema_pb2.Schema())
    assert {f.name: schema_pb2.FeatureType.Name(f.type).lower() for f in schema.feature} == COLUMN_TYPES
    with open(os.path.join(default_csv_dir(), "data.csv")) as f:
        assert set(next(csv.reader(f))) == set(COLUMN_TYPES)


def _example(fare=None, **extra):
    feats = {"fare": tf.train.Feature(float_list=tf.train.FloatList(value=[] if fare is None else [fare])),
             "trip_start_timestamp": tf.train.Feature(int64_list=tf.train.Int64List(value=[7])),
             "trip_miles": tf.train.Feature(float_list=tf.train.FloatList(value=[extra.get("miles", 1.0)])),
             "company": tf.train.Feature(bytes_list=tf.train.BytesList(value=extra.get("company", [b"A"])))}
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def test_beam_counts_the_histogram_bad_rows_by_reason_and_missing_features(tmp_path):
    path = str(tmp_path / "rows.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for fare in (0.5, 1.2, 1.9, 3.0, 2000.0, float("inf"), float("nan"), -2.0, None):
            w.write(_example(fare))
        w.write(_example(2.5, miles=float("nan"), company=[]))
    cfg = RegressionConfig(bin_width=1.0, max_target=1000.0)
    with beam.Pipeline() as p:
        out = check_split(p, path, cfg, "t", with_features=True)
        assert_that(out["histogram"], equal_to([(0, 1), (1, 2), (2, 1), (3, 1)]), label="hist")
        counts = out["problems"] | beam.Map(lambda kv: (kv[0], kv[1][0]))
        assert_that(counts, equal_to([("target above max_target", 1), ("non-finite target", 2), ("negative target", 1),
                                      ("missing target", 1)]), label="problems")
        missing = out["missing"] | beam.Filter(lambda kv: kv[0] in ("trip_miles", "company"))
        assert_that(missing, equal_to([("trip_miles", 1), ("company", 1)]), label="missing")
        assert_that(out["rows"], equal_to([("rows", 10)]), label="rows")


def test_reader_gives_nan_for_missing_numbers_and_oov_defaults():
    from models.tabular import parse_examples

    feats = {"trip_seconds": tf.train.Feature(int64_list=tf.train.Int64List(value=[])),
             "trip_start_hour": tf.train.Feature(int64_list=tf.train.Int64List(value=[])),
             "company": tf.train.Feature(bytes_list=tf.train.BytesList(value=[]))}
    full = {"trip_seconds": tf.train.Feature(int64_list=tf.train.Int64List(value=[300])),
            "trip_start_hour": tf.train.Feature(int64_list=tf.train.Int64List(value=[5])),
            "company": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"X"]))}
    records = [tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString() for f in (feats, full)]
    values, present = parse_examples(tf.constant(records), ["trip_seconds", "trip_start_hour", "company", "fare"])
    assert np.isnan(values["trip_seconds"][0]) and values["trip_seconds"][1] == 300.0
    assert values["trip_start_hour"].numpy().tolist() == [-1, 5] and values["company"].numpy().tolist() == [b"", b"X"]
    assert present["fare"].numpy().tolist() == [False, False] and np.isnan(values["fare"]).all()


def _stats(counts, groups, width=1.0):
    return {"bin_width": width, "num_bins": len(counts), "bin_counts": counts, "bin_groups": groups}


def test_regression_metrics_by_bin_group_by_hand():
    stats = _stats([500, 50, 3], ["many", "medium", "few"])
    y = np.array([0.5, 0.2, 1.5, 2.5, 9.0])  # 9.0 lands in the open-ended last bin (few)
    pred = np.array([1.5, 0.2 + 4.0, 1.0, 4.5, 5.0])
    m = regression_metrics(y, pred, stats)
    err = np.abs(pred - y)
    assert m["mae"] == pytest.approx(err.mean()) and m["mse"] == pytest.approx((err**2).mean())
    assert m["gmean"] == pytest.approx(math.exp(np.log(err).mean()))
    assert m["many_shot_mae"] == pytest.approx(2.5) and m["many_shot_gmean"] == pytest.approx(2.0)
    assert m["medium_shot_mae"] == pytest.approx(0.5) and m["few_shot_mae"] == pytest.approx(3.0)
    assert m["few_shot_count"] == 2 and m["per_bin_count"] == [2, 1, 2]
    none = regression_metrics(np.array([0.1]), np.array([0.3]), stats)
    assert none["few_shot_mae"] is None and none["few_shot_count"] == 0


def test_regression_gate_ceilings_and_last_blessed():
    base = {"mae": 2.0, "few_shot_mae": 10.0, "few_shot_count": 5}
    t = RegressionGateThresholds(max_mae=3.0, max_few_shot_mae=20.0, max_mae_increase=0.1, max_few_shot_mae_increase=1.0)
    assert decide(RegressionGate(), base, None, t)[0]
    blessed, checks = decide(RegressionGate(), {"mae": 2.05, "few_shot_mae": 12.0, "few_shot_count": 5}, base, t)
    assert not blessed and [c["check"] for c in checks if not c["passed"]] == ["few-shot mae increase vs last blessed"]
    blessed, checks = decide(RegressionGate(), {"mae": 3.5, "few_shot_mae": 9.0, "few_shot_count": 5}, base, t)
    assert [c["check"] for c in checks if not c["passed"]] == ["mae <= ceiling", "mae increase vs last blessed"]
    blessed, checks = decide(RegressionGate(), {"mae": 2.0, "few_shot_mae": None, "few_shot_count": 0}, base, t)
    assert blessed and "not applicable" in checks[1]["detail"]


# --- end to end ---------------------------------------------------------------------------------

@pytest.fixture
def taxi(taxi_runs):
    """The session's two taxi runs (tests/conftest.py)."""
    return taxi_runs


@pytest.mark.slow
def test_smoke_run_counts_bad_rows_writes_metrics_and_pushes(taxi):
    out = str(taxi["tmp"] / "out1")
    assert taxi["first"].stdout.strip().splitlines()[-1] == out
    m = load_metrics(out)
    for key in ("mae", "mse", "gmean", "many_shot_mae", "medium_shot_mae", "few_shot_mae", "many_shot_gmean",
                "medium_shot_gmean", "few_shot_gmean", "blessed", "pushed_model_dir", "seed", "config"):
        assert key in m, key
    assert m["task"] == "regression" and m["target"] == "fare" and m["mae"] > 0
    bad = m["bad_rows"]
    assert sum(bad["rows"].values()) == taxi["rows"] and sum(bad["dropped"].values()) == 3
    reasons = {r: v["count"] for split in bad["by_split_and_reason"].values() for r, v in split.items()}
    assert reasons == {"missing target": 1, "negative target": 1, "target above max_target": 1}
    stats = m["label_stats"]
    assert stats["num_examples"] == bad["rows"]["train"] - bad["dropped"]["train"] == sum(stats["bin_counts"])
    assert m["test"]["num_examples"] == bad["rows"]["test"] - bad["dropped"]["test"]
    assert stats["missing_feature_values"]["company"] > 0  # empty cells, imputed and counted
    assert m["blessed"] is True and m["pushed"] is True
    assert os.path.exists(os.path.join(m["pushed_model_dir"], "saved_model.pb"))
    assert m["config"]["name"] == m["config"]["model_name"] == "longtail-csv-regression-smoke"
    assert os.path.dirname(m["pushed_model_dir"]) == str(taxi["serving"])
    report = open(os.path.join(out, "report.md")).read()
    assert "BLESSED" in report and "| few |" in report and "negative target: 1" in report
    assert os.path.getsize(os.path.join(out, "per_bin.png")) > 1000
    assert m["training"]["history"] and m["config"]["regression"]["fds"] is True


@pytest.mark.slow
def test_rerun_is_cached_and_compared_with_the_last_blessed_model(taxi):
    m = load_metrics(str(taxi["tmp"] / "out2"))
    for component in ("components.regression_label_stats_gen.RegressionLabelStatsGen", "components.trainer.LongTailTrainer"):
        assert m["executions"][component] == "CACHED", m["executions"]
    first = load_metrics(str(taxi["tmp"] / "out1"))
    assert m["gate"]["baseline"]["mae"] == pytest.approx(first["gate"]["candidate"]["mae"])
    assert [c["check"] for c in m["gate"]["checks"]][-2:] == ["mae increase vs last blessed",
                                                              "few-shot mae increase vs last blessed"]


@pytest.mark.slow
def test_model_failing_the_regression_gate_is_not_pushed(taxi):
    tmp = taxi["tmp"]
    before = sorted(os.listdir(taxi["serving"]))
    proc = taxi_cli(tmp, taxi["csv"], str(tmp / "out3"), "regression_gate.max_mae=0.01", check=False)
    assert proc.returncode == 5, proc.stderr[-3000:]  # the gate refused: a scheduler sees it (pipeline/cli.py)
    assert "error: the gate refused the model (mae <= ceiling); nothing was pushed" in proc.stderr
    m = load_metrics(str(tmp / "out3"))
    assert m["blessed"] is False and m["pushed"] is False
    assert [c["check"] for c in m["gate"]["checks"] if not c["passed"]] == ["mae <= ceiling"]
    assert sorted(os.listdir(taxi["serving"])) == before
    assert "NOT BLESSED" in proc.stdout


@pytest.mark.slow
def test_too_many_bad_rows_stop_the_run_with_split_and_count(taxi):
    tmp = taxi["tmp"]
    proc = taxi_cli(tmp, taxi["csv"], str(tmp / "out4"), "regression.max_bad_fraction=0.0", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "have a bad target" in proc.stderr and "examples (Split-" in proc.stderr
    assert "example affected" in proc.stderr or "examples affected" in proc.stderr
    assert not os.path.exists(tmp / "out4" / "metrics.json")


SERVE_SCRIPT = r"""
import json, sys
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
request = json.loads(open(sys.argv[2]).read())  # {"instances": [{feature: value, ...}, ...]}, as TF Serving's REST API
cols = request["instances"][0].keys()
dtypes = {k: v.dtype for k, v in model.signatures["serving_default"].structured_input_signature[1].items()}
named = model.signatures["serving_default"](**{c: tf.constant([i[c] for i in request["instances"]], dtypes[c]) for c in cols})
records = [bytes.fromhex(h) for h in json.loads(open(sys.argv[3]).read())]
tf_example = model.signatures["serving_tf_example"](examples=tf.constant(records))
ops = set()
for name in ("serving_default", "serving_tf_example"):
    graph = model.signatures[name].graph
    ops |= {op.name for op in graph.get_operations()}
    for f in graph.as_graph_def().library.function:
        ops |= {n.name for n in f.node_def}
print(json.dumps({"named": named["prediction"].numpy().tolist(), "tf_example": tf_example["prediction"].numpy().tolist(),
                  "fds_ops": sorted(o for o in ops if "fds" in o.lower())}))
"""


@pytest.mark.slow
def test_pushed_savedmodel_serves_json_and_tf_examples_like_keras_and_does_no_fds_work(taxi, tmp_path):
    import glob

    import keras

    from models.regression import predict
    from models.tabular import model_columns, read_split, to_model_inputs

    m = load_metrics(str(taxi["tmp"] / "out1"))
    cfg = from_dict(RegressionConfig, m["config"]["regression"])
    root = os.path.join(taxi["tmp"], "runs", "_tfx", taxi["pipeline"], "root")
    files = sorted(glob.glob(os.path.join(root, "CsvExampleGen", "examples", "*", "Split-test", "*")))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(16)]
    rec_path = tmp_path / "records.json"
    rec_path.write_text(json.dumps([r.hex() for r in records]))
    values, _ = read_split(files, model_columns(cfg))
    values = {c: v[:16] for c, v in values.items()}
    instances = [{c: (v[i].decode() if isinstance(v[i], bytes) else v[i].item()) for c, v in values.items()} for i in range(16)]
    req_path = tmp_path / "request.json"
    req_path.write_text(json.dumps({"instances": instances}))  # NaN (missing) travels as the JSON token NaN
    proc = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, m["pushed_model_dir"], str(req_path), str(rec_path)],
                          capture_output=True, text=True, check=True)
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    model = keras.saving.load_model(os.path.join(m["model_run_dir"], "model.keras"), compile=False)
    expected = predict(model, to_model_inputs(values, cfg))
    np.testing.assert_allclose(served["named"], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(served["tf_example"], expected, rtol=1e-5, atol=1e-4)
    assert served["fds_ops"] == [], served["fds_ops"]  # FDS is in the model (fds=True) but not in the serving graphs
    assert any(layer.name == "fds" for layer in model.layers)


@pytest.mark.slow
def test_two_local_workers_train_the_regressor_with_fds_which_is_blessed_and_pushed(tmp_path):
    """train.local_workers=2 under task=regression with FDS: the Trainer starts a 2-worker MultiWorkerMirroredStrategy
    cluster (python -m models.regression), each worker trains on half the rows, FDS's epoch statistics are summed
    across the workers (every training row counted in each epoch, both workers ending with the same statistics), and
    the chief's export is gated and pushed."""
    csv_dir = tmp_path / "csv"
    csv_dir.mkdir()
    with open(os.path.join(default_csv_dir(), "data.csv"), newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:2000] + [rows[-1]]  # the last row has the one pickup census tract
    fare = header.index("fare")
    with open(csv_dir / "data.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *body, *([*body[10 + i][:fare], v, *body[10 + i][fare + 1:]]
                                                  for i, v in enumerate(TAXI_BAD_FARES))])
    out = tmp_path / "out"
    proc = taxi_cli(tmp_path, str(csv_dir), str(out), "train.local_workers=2", "train.max_steps_per_epoch=3")
    assert proc.stderr.count("multi-worker training: 2 local worker process(es) of a 2-worker cluster") == 1
    m = load_metrics(str(out))
    d = m["training"]["distribute"]
    assert d["strategy"] == "MultiWorkerMirroredStrategy" and d["workers"] == 2 and d["replicas"] == 2
    assert d["global_batch_size"] == 256 and d["per_replica_batch_size"] == 128
    assert len(m["training"]["history"]) == 2 and m["config"]["regression"]["fds"] is True
    assert m["blessed"] is True and m["pushed"] is True
    assert os.path.exists(os.path.join(m["pushed_model_dir"], "saved_model.pb"))
    import keras

    fds = keras.saving.load_model(os.path.join(m["model_run_dir"], "model.keras"), compile=False).get_layer("fds")
    # both epochs counted every training row of both workers' shards
    assert float(np.sum(keras.ops.convert_to_numpy(fds.num_samples_tracked))) == 2 * m["label_stats"]["num_examples"]
    workers = [np.load(os.path.join(m["model_run_dir"], "distributed", f"worker-{i}", "final.weights.npz"))
               for i in (0, 1)]
    for a, b in zip(*[[w[k] for k in sorted(w.files, key=lambda k: int(k.split("_")[1]))] for w in workers]):
        np.testing.assert_array_equal(a, b)  # one model: weights and FDS statistics the same in both workers
    assert "MultiWorkerMirroredStrategy: 2 worker(s), 2 replica(s)" in open(out / "report.md").read()

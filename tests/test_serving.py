"""Serving the pushed models as users do, in fresh processes: TensorFlow's own ``saved_model_cli`` (show, and run
through every signature) and ``python -m pipeline serve`` (KServe's model server on localhost, real HTTP, V1 and
V2) on the version folders the smoke pipelines push (image classification and taxi-fare regression)."""

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from components.data.sources import FASHION_MNIST_CLASSES
from models.export import SERVING_DEFAULT, SERVING_TF_EXAMPLE, serving_metadata
from models.inputs import read_examples
from models.serving import newest_version
from tests.model_server import Server, b64

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow
ENV = dict(os.environ, PYTHONPATH=ROOT)


def run(args, **kw):
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=ENV, **kw)
    if proc.returncode != 0:
        raise AssertionError(f"{args[:4]} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def pushed_copy(metrics_path: str, dest: str) -> str:
    """The version the run pushed, copied alone into ``dest/<version>`` (the push folder a server watches)."""
    with open(metrics_path) as f:
        pushed = json.load(f)["pushed_model_dir"]
    target = os.path.join(dest, os.path.basename(pushed.rstrip("/")))
    shutil.copytree(pushed, target)
    return target


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, smoke_runs, taxi_runs):
    """The versions the session's first smoke and taxi runs pushed (tests/conftest.py), copied to
    ``<tmp>/models/{longtail,taxi}/<version>``, with 200 test images as PNG bytes and 20 taxi test examples."""
    tmp = tmp_path_factory.mktemp("serving")
    data = smoke_runs["data"]
    image = pushed_copy(str(smoke_runs["tmp"] / "out1" / "metrics.json"), str(tmp / "models" / "longtail"))
    taxi = pushed_copy(str(taxi_runs["tmp"] / "out1" / "metrics.json"), str(tmp / "models" / "taxi"))
    test_files = sorted(glob.glob(os.path.join(data, "test", "*.tfrecord")))
    pngs, labels = [], []
    for img, label in read_examples(test_files, [28, 28, 1]).take(200):
        pngs.append(tf.io.encode_png(img).numpy())
        labels.append(int(label))
    taxi_root = glob.glob(os.path.join(taxi_runs["tmp"], "runs", "_tfx", taxi_runs["pipeline"], "root", "CsvExampleGen",
                                       "examples", "*", "Split-test"))[0]
    records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(os.path.join(taxi_root, "*"))),
                                                          compression_type="GZIP").take(20)]
    return {"tmp": tmp, "image": image, "taxi": taxi, "pngs": pngs, "taxi_records": records}


def in_process(version_dir: str, signature: str, **inputs) -> dict:
    model = tf.saved_model.load(version_dir)
    return {k: v.numpy() for k, v in model.signatures[signature](**inputs).items()}


def taxi_rows(version_dir: str, records) -> list[dict]:
    """The named features of serialized taxi examples, as a JSON client sends them (missing numbers as null)."""
    meta = serving_metadata(version_dir)
    rows = []
    for r in records:
        ex = tf.train.Example.FromString(r).features.feature
        row = {}
        for name, dtype in meta["features"].items():
            f = ex[name] if name in ex else None
            if dtype == "string":
                row[name] = f.bytes_list.value[0].decode() if f and f.bytes_list.value else ""
            elif dtype == "int64":
                row[name] = int(f.int64_list.value[0]) if f and f.int64_list.value else -1  # as the reader
            else:
                vals = (list(f.float_list.value) or list(f.int64_list.value)) if f else []
                row[name] = float(vals[0]) if vals else None
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------- TensorFlow's saved_model_cli


def saved_model_cli(*args) -> str:
    return run([os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), *args]).stdout


def test_saved_model_cli_show_lists_every_signature_of_both_tasks(pushed):
    image = saved_model_cli("show", "--dir", pushed["image"], "--all")
    for text in (SERVING_DEFAULT, SERVING_TF_EXAMPLE, "images", "examples", "probabilities", "class_id", "logits"):
        assert text in image, text
    taxi = saved_model_cli("show", "--dir", pushed["taxi"], "--tag_set", "serve", "--signature_def", SERVING_DEFAULT)
    for name in serving_metadata(pushed["taxi"])["features"]:
        assert f"['{name}']" in taxi, name
    assert "prediction" in taxi


def test_saved_model_cli_run_png_bytes_and_tf_examples_match_in_process(pushed, tmp_path):
    pngs = pushed["pngs"][:8]
    np.save(tmp_path / "images.npy", np.asarray(pngs, dtype=object), allow_pickle=True)
    out = tmp_path / "out_default"
    saved_model_cli("run", "--dir", pushed["image"], "--tag_set", "serve", "--signature_def", SERVING_DEFAULT,
                    "--inputs", f"images={tmp_path / 'images.npy'}", "--outdir", str(out))
    expected = in_process(pushed["image"], SERVING_DEFAULT, images=tf.constant(pngs))
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), expected["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(np.load(out / "class_id.npy"), expected["class_id"])
    # --input_examples: the CLI builds the tf.Examples itself (feature name -> list of values); it splits its argument
    # on ';', so that byte is written as an escape inside the bytes literals
    literals = [repr(p).replace(";", "\\x3b") for p in pngs[:3]]
    examples = "[" + ",".join(f"{{'image':[{lit}]}}" for lit in literals) + "]"
    out = tmp_path / "out_examples"
    saved_model_cli("run", "--dir", pushed["image"], "--tag_set", "serve", "--signature_def", SERVING_TF_EXAMPLE,
                    "--input_examples", f"examples={examples}", "--outdir", str(out))
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), expected["probabilities"][:3], atol=1e-6)


def test_saved_model_cli_run_taxi_named_features_and_tf_examples_match_in_process(pushed, tmp_path):
    version = pushed["taxi"]
    meta = serving_metadata(version)
    rows = [r for r in taxi_rows(version, pushed["taxi_records"]) if None not in r.values()][:5]
    columns = {name: [r[name] for r in rows] for name in meta["features"]}
    exprs = ";".join(f"{name}={values!r}" for name, values in columns.items())
    out = tmp_path / "out_default"
    saved_model_cli("run", "--dir", version, "--tag_set", "serve", "--signature_def", SERVING_DEFAULT,
                    "--input_exprs", exprs, "--outdir", str(out))
    dtypes = {"float32": tf.float32, "int64": tf.int64, "string": tf.string}
    expected = in_process(version, SERVING_DEFAULT,
                          **{k: tf.constant(v, dtypes[meta["features"][k]]) for k, v in columns.items()})
    np.testing.assert_allclose(np.load(out / "prediction.npy"), expected["prediction"], rtol=1e-6)
    records = pushed["taxi_records"][:4]
    np.save(tmp_path / "records.npy", np.asarray(records, dtype=object), allow_pickle=True)
    out = tmp_path / "out_examples"
    saved_model_cli("run", "--dir", version, "--tag_set", "serve", "--signature_def", SERVING_TF_EXAMPLE,
                    "--inputs", f"examples={tmp_path / 'records.npy'}", "--outdir", str(out))
    expected = in_process(version, SERVING_TF_EXAMPLE, examples=tf.constant(records))
    np.testing.assert_allclose(np.load(out / "prediction.npy"), expected["prediction"], rtol=1e-6)


# ------------------------------------------------------------------------------------- python -m pipeline serve (KServe)




@pytest.fixture
def image_server(pushed, tmp_path):
    folder = tmp_path / "longtail"
    shutil.copytree(os.path.dirname(pushed["image"]), folder)
    server = Server(str(folder), tmp_path / "server.log", "--max-request-mb", "2")
    yield server, str(folder)
    server.stop()
    assert server.proc.returncode is not None


def test_server_v1_and_v2_answer_200_test_images_as_the_model_does_in_process(pushed, image_server):
    server, _ = image_server
    pngs = pushed["pngs"]
    expected = in_process(pushed["image"], SERVING_DEFAULT, images=tf.constant(pngs))
    v1 = []
    for start in range(0, len(pngs), 50):
        status, body = server.post(f"/v1/models/{server.name}:predict",
                                   {"instances": [b64(p) for p in pngs[start:start + 50]]})
        assert status == 200, body
        v1 += body["predictions"]
    assert len(v1) == 200
    np.testing.assert_allclose([p["probabilities"] for p in v1], expected["probabilities"], atol=1e-6)
    assert [p["class_id"] for p in v1] == expected["class_id"].tolist()
    assert [p["class_name"] for p in v1] == [FASHION_MNIST_CLASSES[c] for c in expected["class_id"]]
    status, body = server.post(f"/v2/models/{server.name}/infer", {"id": "r1", "inputs": [
        {"name": "images", "shape": [200], "datatype": "BYTES", "data": [b64(p)["b64"] for p in pngs]}]})
    assert status == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    assert body["id"] == "r1" and body["model_name"] == server.name
    assert body["model_version"] == os.path.basename(pushed["image"])
    assert outputs["probabilities"]["shape"] == [200, 10]
    np.testing.assert_allclose(np.reshape(outputs["probabilities"]["data"], (200, 10)), expected["probabilities"],
                               atol=1e-6)
    assert outputs["class_id"]["data"] == expected["class_id"].tolist()
    assert outputs["class_name"]["data"] == [FASHION_MNIST_CLASSES[c] for c in expected["class_id"]]
    # TF Serving's columnar form answers the same
    status, body = server.post(f"/v1/models/{server.name}:predict", {"inputs": {"images": [b64(p) for p in pngs[:3]]}})
    assert status == 200 and [p["class_id"] for p in body["predictions"]] == expected["class_id"][:3].tolist()


def test_server_health_readiness_and_metadata(image_server):
    server, _ = image_server
    assert server.get("/v2/health/live")[0] == 200
    assert server.get("/v2/health/ready") == (200, {"ready": True})
    assert server.get(f"/v1/models/{server.name}") == (200, {"name": server.name, "ready": True})
    assert server.get(f"/v2/models/{server.name}/ready")[0] == 200
    status, meta = server.get(f"/v2/models/{server.name}")
    assert status == 200
    assert meta["inputs"] == [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "class_id", "class_name"]
    assert server.get("/v1/models/no-such-model")[0] == 404


def test_server_refuses_bad_requests_with_a_4xx_and_a_message_and_goes_on_answering(pushed, image_server):
    server, _ = image_server
    url = f"/v1/models/{server.name}:predict"
    good = pushed["pngs"][0]
    cases = {
        "not an image": ({"instances": [b64(good), b64(b"GIF89 is what this is not"), b64(b"\x00" * 40)]}, False,
                         400, "bytes that are not an image (JPEG, PNG, GIF, BMP or WebP): 2 of them (instances 1, 2)"),
        "truncated image": ({"instances": [b64(good[:60])]}, False, 400, "the model refused the inputs"),
        "missing field": ({"signature_name": "serving_default"}, False, 400, '"instances" (rows) or "inputs"'),
        "not base64": ({"instances": [{"b64": "%%%"}]}, False, 400, "instance 0: not valid base64"),
        "no b64 key": ({"instances": [12]}, False, 400, "instance 0: expected base64 image bytes"),
        "empty": ({"instances": []}, False, 400, "no instances"),
        "malformed JSON": (b'{"instances": [', True, 400, "Unrecognized request format"),
        "10 MB body": (json.dumps({"instances": [b64(b"\xff" * (10 * 1024 * 1024 * 3 // 4))]}).encode(), True,
                       413, "over the limit of 2097152 bytes"),
    }
    for what, (body, raw, code, message) in cases.items():
        status, answer = server.post(url, body, raw=raw)
        assert (status, message in answer.get("error", "")) == (code, True), (what, status, answer)
        status, answer = server.post(url, {"instances": [b64(good)]})
        assert status == 200 and len(answer["predictions"]) == 1, (what, status, answer)
    status, answer = server.post(f"/v2/models/{server.name}/infer", {"inputs": [
        {"name": "pixels", "shape": [1], "datatype": "BYTES", "data": ["x"]}]})
    assert status == 400 and "input 'images' (BYTES) is missing" in answer["error"], answer


def test_server_picks_up_a_newly_pushed_version_without_a_restart(pushed, image_server):
    server, folder = image_server
    old = newest_version(folder)
    request = {"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(pushed["pngs"][0])["b64"]]}]}
    assert server.post(f"/v2/models/{server.name}/infer", request)[1]["model_version"] == str(old)
    # a half-written version (no variables yet) is not served; the old one goes on answering
    partial = os.path.join(folder, str(old + 1))
    os.makedirs(partial)
    shutil.copy(os.path.join(pushed["image"], "saved_model.pb"), partial)
    time.sleep(2)
    assert server.post(f"/v2/models/{server.name}/infer", request)[1]["model_version"] == str(old)
    shutil.rmtree(partial)
    shutil.copytree(pushed["image"], os.path.join(folder, f".tmp-{old + 2}"))
    os.rename(os.path.join(folder, f".tmp-{old + 2}"), os.path.join(folder, str(old + 2)))  # how a push lands whole
    deadline = time.time() + 30
    while server.post(f"/v2/models/{server.name}/infer", request)[1]["model_version"] != str(old + 2):
        assert time.time() < deadline, "the new version was not picked up within 30 s"
        time.sleep(0.5)
    assert server.proc.poll() is None  # the same process


def test_server_answers_the_taxi_model_with_named_features(pushed, tmp_path):
    version = pushed["taxi"]
    meta = serving_metadata(version)
    rows = taxi_rows(version, pushed["taxi_records"])
    expected = in_process(version, SERVING_TF_EXAMPLE, examples=tf.constant(pushed["taxi_records"]))["prediction"]
    server = Server(os.path.dirname(version), tmp_path / "taxi.log", "--model-name", "fare")  # as under /mnt/models
    try:
        status, body = server.post(f"/v1/models/{server.name}:predict", {"instances": rows})
        assert status == 200, body
        np.testing.assert_allclose([p["fare"] for p in body["predictions"]], expected, rtol=1e-5, atol=1e-4)
        v2 = {"inputs": [{"name": name, "shape": [len(rows)], "datatype": {"float32": "FP32", "int64": "INT64"}.get(d, "BYTES"),
                          "data": [r[name] for r in rows]} for name, d in meta["features"].items()]}
        status, body = server.post(f"/v2/models/{server.name}/infer", v2)
        assert status == 200, body
        np.testing.assert_allclose(body["outputs"][0]["data"], expected, rtol=1e-5, atol=1e-4)
        assert body["outputs"][0]["name"] == "fare"
        without = [{k: v for k, v in r.items() if k != "trip_miles"} for r in rows[:3]]
        status, body = server.post(f"/v1/models/{server.name}:predict", {"instances": rows[:2] + without})
        assert status == 400 and "feature 'trip_miles' (float32) is missing: 3 of them (instances 2, 3, 4)" in body["error"]
        status, body = server.post(f"/v1/models/{server.name}:predict", {"instances": [{**rows[0], "company": None}]})
        assert status == 400 and "feature 'company' (string) is null" in body["error"], body
        assert server.post(f"/v1/models/{server.name}:predict", {"instances": rows[:1]})[0] == 200
    finally:
        server.stop()

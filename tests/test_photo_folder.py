"""A user's folder of colour photos as they come (JPEGs of many sizes named .jpg/.jpeg/.JPG, a few gray JPEGs and RGBA
PNGs, EXIF-rotated ones, .DS_Store and friends) through ``python -m pipeline run`` with no setting beyond
``data.source`` (and the smoke schedule, with the own-data validation split): it is ingested, fitted to one size,
blessed and pushed to its own folder; the served model, fed each raw file in a fresh process (``serving_default``)
and over KServe V1 b64 and V2, answers what the run's own evaluation of that file's ingested example answers, for
probes of three sizes and both channel counts."""

import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from bench.own_folder import make_photo_folder, photo_pixels
from components.data.sources import read_mnist_digits
from tests.conftest import ROOT, load_metrics, run_cli
from tests.model_server import Server, b64

pytestmark = pytest.mark.slow

# (name, size, gray, format): three sizes x both channel counts, an RGBA PNG, a JPEG with EXIF orientation 6
PROBES = [("small_rgb.jpg", (20, 30), False, "JPEG"), ("small_gray.jpg", (20, 30), True, "JPEG"),
          ("mid_rgb.jpeg", (48, 48), False, "JPEG"), ("mid_gray.JPG", (48, 48), True, "JPEG"),
          ("big_rgb.jpg", (110, 90), False, "JPEG"), ("big_gray.jpg", (110, 90), True, "JPEG"),
          ("alpha.png", (40, 36), False, "RGBA"), ("rotated.jpg", (30, 50), False, "EXIF6")]


def _probe_bytes(digit, rng, size, gray, fmt) -> bytes:
    image = Image.fromarray(photo_pixels(digit, rng, *size))
    buf = io.BytesIO()
    if fmt == "RGBA":
        image.convert("RGBA").save(buf, "PNG")
    elif fmt == "EXIF6":
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_270).save(buf, "JPEG", quality=90, exif=exif.tobytes())
    else:
        (image.convert("L") if gray else image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("photos")
    root = str(tmp / "photos")
    make_photo_folder(root, seed=3, n_max=40, n_min=12, test_per_class=4, pool_fraction=0.01)
    images, labels = read_mnist_digits()
    rng = np.random.default_rng(7)
    probes = {}
    for k, (name, size, gray, fmt) in enumerate(PROBES):
        digit = images[np.flatnonzero(labels == k % 10)[-1 - k]]  # MNIST's last images: none in the folder's test
        path = os.path.join(root, "test", ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                           "nine"][k % 10], f"probe_{name}")
        with open(path, "wb") as f:
            f.write(_probe_bytes(digit, rng, size, gray, fmt))
        probes[name] = path
    # the smoke preset's schedule; its val_per_class (20, for its bundled data) back to the own-data default
    proc = run_cli("smoke", tmp, tmp / "out", f"data.source=folder:{root}", "data.val_per_class=none")
    return {"tmp": tmp, "root": root, "probes": probes, "metrics": load_metrics(tmp / "out"),
            "out_dir": proc.stdout.strip().splitlines()[-1]}


def test_a_photo_folder_runs_with_no_setting_but_its_source_and_pushes_to_its_own_folder(photo_run):
    m = photo_run["metrics"]
    fit = m["data"]["image_fit"]
    assert (fit["height"], fit["width"], fit["channels"], fit["method"]) == (56, 56, 3, "resize"), fit
    assert "median side" in fit["reason"] and "colour" in fit["reason"]
    n_images = sum(s["num_examples"] for s in m["data"]["splits"].values())
    assert fit["resized"] >= n_images - 2  # every photo but one of exactly 56x56 at most
    assert fit["conversions"].get("converted gray to RGB", 0) >= 2 and fit["conversions"].get("converted RGBA to RGB")
    assert fit["exif_rotated"] >= 1
    assert m["data"]["hidden_files"] == 3 and m["data"]["non_image_files"] == 0
    assert m["blessed"] is True and m["pushed"] is True
    assert m["pushed_model_dir"].startswith(os.path.join(str(photo_run["tmp"]), "serving", "longtail-photos-smoke", ""))
    report = open(os.path.join(photo_run["out_dir"], "report.md")).read()
    assert "Images fitted to 56x56x3" in report and "3 hidden or system files skipped" in report


SCORE = r"""
import json, sys
import numpy as np, tensorflow as tf
from models.image_fit import ImageFit, fit_image
from models.export import serving_metadata
model_dir, example_files, *probes = sys.argv[1:]
model = tf.saved_model.load(model_dir)
fit = ImageFit(**serving_metadata(model_dir)["image_fit"])
records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(example_files.split(",")), compression_type="GZIP")]
pixels = [tf.io.decode_png(tf.train.Example.FromString(r).features.feature["image"].bytes_list.value[0]).numpy()
          for r in records]
out = {}
for path in probes:
    raw = open(path, "rb").read()
    served = model.signatures["serving_default"](images=tf.constant([raw]))
    mine = fit_image(raw, fit)[0].numpy()
    found = [i for i, p in enumerate(pixels) if p.shape == mine.shape and np.array_equal(p, mine)]
    ingested = model.signatures["serving_tf_example"](examples=tf.constant([records[found[0]]])) if found else None
    out[path] = {"class_id": int(served["class_id"][0]), "logits": served["logits"][0].numpy().tolist(),
                 "found": len(found), "ingested_class_id": None if ingested is None else int(ingested["class_id"][0]),
                 "ingested_logits": None if ingested is None else ingested["logits"][0].numpy().tolist()}
print(json.dumps(out))
"""


def test_the_served_model_answers_each_raw_file_as_the_run_evaluated_it(photo_run, tmp_path):
    pushed = photo_run["metrics"]["pushed_model_dir"]
    split = glob.glob(os.path.join(str(photo_run["tmp"]), "runs", "_tfx", "longtail-photos-smoke", "root",
                                   "OwnDataExampleGen", "examples", "*", "Split-test", "*"))
    probes = list(photo_run["probes"].values())
    proc = subprocess.run([sys.executable, "-c", SCORE, pushed, ",".join(split), *probes], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = json.loads(proc.stdout.strip().splitlines()[-1])
    for path, s in scored.items():
        # the ingested test example holds exactly the pixels the signature computes from the raw file ...
        assert s["found"] == 1, (path, s["found"])
        # ... so the raw file and the run's own example of it get the same logits and class
        np.testing.assert_allclose(s["logits"], s["ingested_logits"], atol=1e-5, err_msg=path)
        assert s["class_id"] == s["ingested_class_id"], path

    folder = os.path.dirname(pushed)
    server = Server(folder, tmp_path / "server.log", "--model-name", "photos")
    try:
        raws = [open(p, "rb").read() for p in probes]
        status, body = server.post("/v1/models/photos:predict", {"instances": [b64(r) for r in raws]})
        assert status == 200, body
        assert [p["class_id"] for p in body["predictions"]] == [scored[p]["class_id"] for p in probes]
        status, body = server.post("/v2/models/photos/infer", {"inputs": [
            {"name": "images", "shape": [len(raws)], "datatype": "BYTES", "data": [b64(r)["b64"] for r in raws]}]})
        assert status == 200, body
        outputs = {o["name"]: o for o in body["outputs"]}
        assert outputs["class_id"]["data"] == [scored[p]["class_id"] for p in probes]
    finally:
        server.stop()

"""OwnDataExampleGen: a user's image folder / TFRecords through real TFX (LocalDagRunner) and real Beam.

The examples it writes equal, as a multiset of (label, PNG bytes) per split, what prepare-data's in-memory
reader writes from the same source and settings; bad input stops it with a DataError naming the file or class
and the count; a file that is not an image is counted in the artifact and its ingest_report.json.
"""

import collections
import glob
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tfx import v1 as tfx

from components.data.errors import DataError
from components.data.longtail import SplitSpec
from components.data.own_data import describe, image_fit_of, plan_own_data
from components.data.prepare import encode_png, prepare
from components.data.sources import read_source
from components.own_data_example_gen import REPORT_FILE, OwnDataExampleGen

CLASSES = ["ant", "bee", "cow", "doe"]
SHAPE = (8, 8, 1)
BEAM_ARGS = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]


def _img(rng, shape=SHAPE):
    return rng.integers(0, 256, shape, dtype=np.uint8)


def make_folder(root, per_class=(60, 30, 15, 8), test_per_class=5, unlabeled=6, seed=0):
    rng = np.random.default_rng(seed)
    for split, counts in (("train", per_class), ("test", [test_per_class] * len(CLASSES))):
        for name, n in zip(CLASSES, counts):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                with open(os.path.join(root, split, name, f"{i:03d}.png"), "wb") as f:
                    f.write(encode_png(_img(rng)))
    os.makedirs(os.path.join(root, "unlabeled"), exist_ok=True)
    for i in range(unlabeled):
        with open(os.path.join(root, "unlabeled", f"u{i}.png"), "wb") as f:
            f.write(encode_png(_img(rng)))
    return root


def make_tfrecords(root, per_class=(40, 20, 10, 6), test_per_class=4, seed=1):
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)

    def write(path, labels):
        with tf.io.TFRecordWriter(path) as w:
            for label in labels:
                feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_png(_img(rng))]))}
                if label is not None:
                    feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
                w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())

    train = [c for c, n in enumerate(per_class) for _ in range(n)]
    rng.shuffle(train)
    write(os.path.join(root, "train-00000-of-00002.tfrecord"), train[: len(train) // 2])
    write(os.path.join(root, "train-00001-of-00002.tfrecord"), train[len(train) // 2:])
    write(os.path.join(root, "test.tfrecord"), [c for c in range(len(per_class)) for _ in range(test_per_class)])
    write(os.path.join(root, "unlabeled.tfrecord"), [None] * 5)
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    return root


def ingest(tmp_path, source, spec, name="own", fit=None, bad_files="error"):
    """Runs OwnDataExampleGen alone in a LocalDagRunner pipeline; returns its Examples artifact's uri."""
    plan = plan_own_data(source, spec)
    manifest = describe(plan, spec, {**image_fit_of(plan, **(fit or {}))[1], "bad_files": bad_files})
    with_pool = manifest["splits"]["unlabeled"]["num_examples"] > 0
    gen = OwnDataExampleGen(source=source, split_spec=spec, class_names=manifest["class_names"],
                            image_fit=manifest["image_fit"], with_pool=with_pool)
    root = str(tmp_path / f"_tfx_{name}")
    pipeline = tfx.dsl.Pipeline(
        pipeline_name=name, pipeline_root=root, components=[gen], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            os.path.join(root, "metadata.sqlite")), beam_pipeline_args=BEAM_ARGS)
    tfx.orchestration.LocalDagRunner().run(pipeline)
    (uri,) = glob.glob(os.path.join(root, "OwnDataExampleGen", "examples", "*"))
    return uri, manifest


def _records(pattern, compression):
    out = collections.Counter()
    for path in sorted(glob.glob(pattern)):
        for raw in tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator():
            feats = tf.train.Example.FromString(raw).features.feature
            label = feats["label"].int64_list.value[0] if "label" in feats else None
            out[(label, feats["image"].bytes_list.value[0])] += 1
    return out


def _same_as_prepare(tmp_path, source, spec, uri):
    """Each output split equals prepare-data's split of the same source and settings, as a multiset."""
    prepared = str(tmp_path / "prepared")
    manifest = prepare(read_source(source), spec, prepared, log=lambda m: None)
    for out, split in (("train", "labeled"), ("eval", "validation"), ("test", "test"), ("unlabeled", "unlabeled")):
        ours = _records(os.path.join(uri, f"Split-{out}", "*"), "GZIP")
        theirs = _records(os.path.join(prepared, split, "*.tfrecord"), "")
        assert ours == theirs, f"split {out}: {sum(ours.values())} examples vs prepare-data's {sum(theirs.values())}"
    return manifest


def test_folder_ingestion_equals_prepare_data_and_counts_non_images(tmp_path):
    root = make_folder(str(tmp_path / "imgs"))
    for junk in ("train/bee/.DS_Store", "train/cow/Thumbs.db", "unlabeled/notes.txt"):
        with open(os.path.join(root, junk), "wb") as f:
            f.write(b"\0junk")
    for copy in ("train/ant/dup.png", "unlabeled/dup.png"):  # one test image in two other splits
        shutil.copy(os.path.join(root, "test", "ant", "000.png"), os.path.join(root, copy))
    spec = SplitSpec(rho=None, val_per_class=4, seed=3)
    uri, manifest = ingest(tmp_path, f"folder:{root}", spec)
    prepared = _same_as_prepare(tmp_path, f"folder:{root}", spec, uri)
    report = json.load(open(os.path.join(uri, REPORT_FILE)))
    assert report["non_image_files"] == 1 and manifest["non_image_files"] == 1
    assert report["non_image_file_samples"] == [os.path.join(root, "unlabeled", "notes.txt")]
    assert report["hidden_files"] == 2 and manifest["hidden_files"] == 2  # .DS_Store, Thumbs.db: skipped, counted
    assert any(p.endswith(".DS_Store") for p in report["hidden_file_samples"])
    assert report["image_fit"]["resized"] == 0 and report["image_fit"]["converted"] == 0
    # the same pairs and counts as prepare-data's manifest, with the files named
    assert report["duplicates_across_splits"] == prepared["duplicates_across_splits"]
    assert sum(report["duplicates_across_splits"].values()) == 3 and "unlabeled/test" in report["duplicates_across_splits"]
    assert any("test/ant/000.png" in p for p in report["duplicate_examples"]["unlabeled/test"])
    assert report["splits"]["train"]["per_class_counts"] == [57, 26, 11, 4]
    assert report["splits"]["eval"]["per_class_counts"] == [4, 4, 4, 4]
    assert report["splits"]["unlabeled"]["num_examples"] == 7


def test_folder_rho_resampling_streams_the_same_splits_as_prepare_data(tmp_path):
    root = make_folder(str(tmp_path / "imgs"), per_class=(60, 30, 15, 10), unlabeled=0)
    spec = SplitSpec(rho=4, n_max=20, val_per_class=3, rho_u=1.0, unlabeled_size=12, seed=1)
    uri, manifest = ingest(tmp_path, f"folder:{root}", spec)
    # floor(20 * 4^(-r/3)); the pool: balanced, as large as the rest allows (2 of the last class left)
    assert manifest["splits"]["labeled"]["per_class_counts"] == [20, 12, 7, 5]
    assert manifest["splits"]["unlabeled"]["num_examples"] == 8
    _same_as_prepare(tmp_path, f"folder:{root}", spec, uri)


def test_tfrecord_ingestion_equals_prepare_data(tmp_path):
    root = make_tfrecords(str(tmp_path / "recs"))
    spec = SplitSpec(rho=None, val_per_class=3, seed=0)
    uri, manifest = ingest(tmp_path, f"tfrecord:{root}", spec)
    assert manifest["class_names"] == CLASSES
    _same_as_prepare(tmp_path, f"tfrecord:{root}", spec, uri)


def _error(tmp_path, root):
    with pytest.raises(Exception) as err:
        ingest(tmp_path, f"folder:{root}", SplitSpec(rho=None, val_per_class=2))
    e = err.value
    while not isinstance(e, DataError) and (e.__cause__ or e.__context__):
        e = e.__cause__ or e.__context__
    assert isinstance(e, DataError), repr(err.value)
    return str(e)


def test_undecodable_images_are_named_and_counted(tmp_path):
    root = make_folder(str(tmp_path / "imgs"), per_class=(10, 6, 5, 4), unlabeled=0)
    for bad in ("train/bee/001.png", "test/doe/002.png"):
        with open(os.path.join(root, bad), "wb") as f:
            f.write(b"not a png at all")
    msg = _error(tmp_path, root)
    assert "image does not decode" in msg and "(2 examples affected)" in msg and "bee/001.png" in msg



def test_empty_class_folder_is_named(tmp_path):
    root = make_folder(str(tmp_path / "imgs"), per_class=(10, 6, 5, 0), unlabeled=0)
    with pytest.raises(DataError, match=r"class folders with no image: \['doe'\] \(1 class affected\)"):
        plan_own_data(f"folder:{root}", SplitSpec(rho=None, val_per_class=2))
    root2 = make_folder(str(tmp_path / "imgs2"), per_class=(10, 6, 5, 1), unlabeled=0)
    with pytest.raises(DataError, match=r"classes \['doe'\] have fewer than val_per_class=2"):
        plan_own_data(f"folder:{root2}", SplitSpec(rho=None, val_per_class=2))


def test_pipeline_wires_the_component_for_own_data(tmp_path):
    """data.source=folder:... compiles to OwnDataExampleGen (no ImportExampleGen); one artifact feeds both branches."""
    from pipeline import tasks
    from pipeline.configs import load_config

    root = make_folder(str(tmp_path / "imgs"))
    cfg = load_config("smoke", {"data.source": f"folder:{root}", "data.rho": "none", "data.val_per_class": "4"})
    task = tasks.for_config(cfg)
    inputs = task.inputs(cfg)
    assert inputs.manifest["ingestion"] == "OwnDataExampleGen" and inputs.manifest["image_shape"] == [8, 8, 1]
    p = task.create_pipeline(cfg, inputs, str(tmp_path / "root"), None, str(tmp_path / "serving"), [])
    ids = {c.id for c in p.components}
    assert "OwnDataExampleGen" in ids and not ids & {"LabeledExampleGen", "UnlabeledExampleGen"}
    gen = next(c for c in p.components if c.id == "OwnDataExampleGen")
    splits = json.loads(gen.exec_properties["input_config"])["splits"]
    assert [s["name"] for s in splits] == ["train", "eval", "test", "unlabeled"]
    # the relevance knob (MNIST digits mixed into the pool) keeps the prepare-data path
    assert not tasks.ingests_own_data(load_config("smoke", {"data.source": f"folder:{root}", "data.pool_relevance": "0.5"}))


@pytest.mark.slow
def test_smoke_run_on_an_image_folder_goes_through_the_component(tmp_path):
    """`python -m pipeline run --preset smoke --set data.source=folder:...`: ingested, trained, gated, pushed."""
    import subprocess
    import sys

    root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rng = np.random.default_rng(5)
    root = str(tmp_path / "imgs")
    for split, counts in (("train", (40, 25, 15, 12)), ("test", (5, 5, 5, 5))):
        for name, n in zip(CLASSES, counts):
            os.makedirs(os.path.join(root, split, name))
            for i in range(n):
                with open(os.path.join(root, split, name, f"{i}.png"), "wb") as f:
                    f.write(encode_png(_img(rng, (28, 28, 1))))
    with open(os.path.join(root, "train", "ant", ".DS_Store"), "wb") as f:
        f.write(b"\0")
    out = str(tmp_path / "out")
    args = [sys.executable, "-m", "pipeline", "run", "--preset", "smoke", "--set", f"data.source=folder:{root}",
            "--set", "data.rho=none", "--set", "data.val_per_class=4", "--set", f"runs_root={tmp_path}/runs",
            "--set", f"serving_root={tmp_path}/serving", "--set", "beam.direct_running_mode=in_memory", "--out", out]
    proc = subprocess.run(args, cwd=root_dir, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root_dir))
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["data"]["ingestion"] == "OwnDataExampleGen" and metrics["data"]["non_image_files"] == 0
    assert metrics["data"]["hidden_files"] == 1
    assert metrics["label_stats"]["class_counts"] == [36, 21, 11, 8]
    report_md = open(os.path.join(out, "report.md")).read()
    assert "1 hidden or system file skipped" in report_md
    assert metrics["data"]["duplicates_across_splits"] == {} and "Duplicates across splits: none" in report_md
    (report,) = glob.glob(os.path.join(tmp_path, "runs", "_tfx", "*", "root", "OwnDataExampleGen", "examples", "*", REPORT_FILE))
    assert json.load(open(report))["hidden_files"] == 1
    # its own identity (issue #27): pipeline (MLMD history) and serving folder named after the folder
    assert report.startswith(os.path.join(str(tmp_path), "runs", "_tfx", "longtail-imgs-smoke", ""))
    assert metrics["config"]["name"] == metrics["config"]["model_name"] == "longtail-imgs-smoke"
    assert metrics["pushed_model_dir"].startswith(os.path.join(str(tmp_path), "serving", "longtail-imgs-smoke", ""))
    assert os.listdir(os.path.join(tmp_path, "serving")) == ["longtail-imgs-smoke"]
    # the gate's support and intervals, in metrics.json and report.md
    u = metrics["gate"]["uncertainty"]
    assert sum(u["per_class_support"]) == metrics["gate"]["candidate"]["num_examples"] and u["confidence"] == 0.95
    assert all(len(ci) == 2 for ci in u["per_class_recall_interval"]) and len(u["balanced_accuracy_interval"]) == 2
    assert "| class | gate images | recall | interval |" in report_md and "95% interval" in report_md


def test_kubeflow_package_runs_the_component_through_tfx_file_based_driver(tmp_path):
    """compile-kfp with own data: the package's ExampleGen is OwnDataExampleGen's executor behind TFX's Kubeflow v2
    file-based driver (the cluster re-fingerprints and re-ingests the compiled location every run)."""
    import subprocess
    import sys

    from kfp.client.client import _extract_pipeline_yaml

    root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = make_folder(str(tmp_path / "imgs"))
    out = str(tmp_path / "pipeline.yaml")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "smoke", "--data-dir", root,
                           "--pipeline-root", "gs://bucket/own", "--image", "example/longtail:1", "--output", out,
                           "--set", f"data.source=folder:{root}", "--set", "data.rho=none",
                           "--set", "data.val_per_class=4"],
                          cwd=root_dir, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=root_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = str(_extract_pipeline_yaml(out).pipeline_spec)  # the spec as kfp's client reads it
    assert "components.own_data_example_gen.Executor" in text
    assert "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver" in text
    assert root in text and "ImportExampleGen" not in text


def test_own_data_default_validation_is_a_fifth_of_every_class(tmp_path):
    root = make_folder(str(tmp_path / "imgs"), per_class=(10, 6, 5, 11), unlabeled=0)
    manifest = describe(plan := plan_own_data(f"folder:{root}", SplitSpec(rho=None, val_per_class=None)),
                        SplitSpec(rho=None, val_per_class=None), image_fit_of(plan)[1])
    assert manifest["val_per_class"] == 1 and manifest["val_per_class_setting"] is None  # the smallest class's
    assert manifest["splits"]["validation"]["per_class_counts"] == [2, 1, 1, 2]  # a fifth of each, at least 1
    assert manifest["splits"]["labeled"]["per_class_counts"] == [8, 5, 4, 9]


def _write_pngs(folder, n, rng):
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        with open(os.path.join(folder, f"v{i:03d}.png"), "wb") as f:
            f.write(encode_png(_img(rng)))


def test_a_val_folder_is_the_validation_split_and_nothing_is_carved_from_train(tmp_path):
    root = make_folder(str(tmp_path / "imgs"), per_class=(20, 12, 7, 5), unlabeled=0)
    rng = np.random.default_rng(9)
    for name, n in zip(CLASSES, (3, 2, 2, 1)):  # not balanced: the user's split, as given
        _write_pngs(os.path.join(root, "val", name), n, rng)
    spec = SplitSpec(rho=None, val_per_class=None, seed=2)
    uri, manifest = ingest(tmp_path, f"folder:{root}", spec)
    assert manifest["splits"]["validation"]["per_class_counts"] == [3, 2, 2, 1]
    assert manifest["splits"]["labeled"]["per_class_counts"] == [20, 12, 7, 5]  # every train image trains
    assert manifest["validation_source"].startswith("the source's own") and manifest["val_per_class"] == 1
    prepared = _same_as_prepare(tmp_path, f"folder:{root}", spec, uri)
    assert prepared["validation_source"] == manifest["validation_source"]
    assert prepared["splits"]["validation"]["per_class_counts"] == [3, 2, 2, 1]
    report = json.load(open(os.path.join(uri, REPORT_FILE)))
    assert report["splits"]["eval"]["per_class_counts"] == [3, 2, 2, 1]


def test_a_val_folder_missing_a_class_is_named(tmp_path):
    root = make_folder(str(tmp_path / "imgs"), per_class=(20, 12, 7, 5), unlabeled=0)
    rng = np.random.default_rng(9)
    for name in CLASSES[:3]:
        _write_pngs(os.path.join(root, "val", name), 2, rng)
    with pytest.raises(DataError, match=r"classes \['doe'\] have no validation image") as err:
        plan_own_data(f"folder:{root}", SplitSpec(rho=None))
    assert "val" in str(err.value)
    with pytest.raises(DataError, match=r"classes \['doe'\] have no validation image"):
        read_source(f"folder:{root}")


def test_val_tfrecords_are_the_validation_split(tmp_path):
    root = make_tfrecords(str(tmp_path / "recs"))
    rng = np.random.default_rng(4)
    with tf.io.TFRecordWriter(os.path.join(root, "val-00000-of-00001.tfrecord")) as w:
        for label in (0, 1, 2, 3, 3):
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode_png(_img(rng))])),
                       "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
            w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    spec = SplitSpec(rho=None, val_per_class=3, seed=0)  # ignored: the source gives its validation split
    uri, manifest = ingest(tmp_path, f"tfrecord:{root}", spec)
    assert manifest["splits"]["validation"]["per_class_counts"] == [1, 1, 1, 2]
    assert manifest["splits"]["labeled"]["per_class_counts"] == [40, 20, 10, 6]
    _same_as_prepare(tmp_path, f"tfrecord:{root}", spec, uri)


def _jpeg(rng, side=12) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_files_a_real_folder_has_are_named_with_their_paths(tmp_path):
    """A zero-byte file, a truncated JPEG and an unreadable entry stop the run naming each (data.bad_files=skip skips
    and lists them instead); hidden files are skipped and counted; a dangling link and class folders differing only
    in case are refused when the folder is planned, before TFX's driver stats the files."""
    rng = np.random.default_rng(4)
    root = make_folder(str(tmp_path / "imgs"), per_class=(10, 6, 5, 4), unlabeled=0)
    jpeg = _jpeg(rng)
    bad = {"train/ant/empty.png": b"", "train/bee/cut.jpg": jpeg[: len(jpeg) // 2]}
    for name, data in bad.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(root, "test", "cow", "folder.jpg"))  # an entry named like an image that does not read
    for hidden in ("train/ant/._001.png", "train/.DS_Store", "test/doe/Thumbs.db"):
        with open(os.path.join(root, hidden), "wb") as f:
            f.write(b"\0\x05\x16\x07")
    msg = _error(tmp_path, root)
    # the most frequent problem first, each with its count and a sample path; every one would be raised
    assert "train/ant/empty.png" in msg or "train/bee/cut.jpg" in msg or "folder.jpg" in msg, msg
    assert "data.bad_files=skip" in msg

    uri, manifest = ingest(tmp_path, f"folder:{root}", SplitSpec(rho=None, val_per_class=2), name="skip",
                           bad_files="skip")
    report = json.load(open(os.path.join(uri, REPORT_FILE)))
    skipped = report["skipped_files"]
    assert skipped["zero-byte file"]["count"] == 1 and "train/ant/empty.png" in skipped["zero-byte file"]["samples"][0]
    assert skipped["image does not decode"]["count"] == 1 and "cut.jpg" in skipped["image does not decode"]["samples"][0]
    assert skipped["file unreadable"]["count"] == 1 and "folder.jpg" in skipped["file unreadable"]["samples"][0]
    assert report["hidden_files"] == 3 and report["problems"] == {}
    assert sum(report["splits"][s]["num_examples"] for s in report["splits"]) == 25 + 20  # every good image, no more

    linked = make_folder(str(tmp_path / "linked"), per_class=(10, 6, 5, 4), unlabeled=0)
    os.symlink(os.path.join(linked, "nowhere.png"), os.path.join(linked, "train", "bee", "gone.png"))
    with pytest.raises(DataError, match=r"symbolic links that point to nothing: \[.*train/bee/gone.png'\] "
                                        r"\(1 file affected\)"):
        plan_own_data(f"folder:{linked}", SplitSpec(rho=None, val_per_class=2))
    cased = make_folder(str(tmp_path / "cased"), per_class=(10, 6, 5, 4), unlabeled=0)
    shutil.copytree(os.path.join(cased, "train", "ant"), os.path.join(cased, "train", "Ant"))
    with pytest.raises(DataError, match=r"class folders whose names differ only in case: \[\['Ant', 'ant'\]\]"):
        plan_own_data(f"folder:{cased}", SplitSpec(rho=None, val_per_class=2))


def test_colour_photos_of_mixed_sizes_are_fitted_and_counted(tmp_path):
    """Colour JPEGs of three sizes among the gray 8x8 PNGs: colour wins (3 channels), the size is the median's, every
    image is fitted, and the ingested examples are exactly models.image_fit's pixels of each file."""
    from models.image_fit import ImageFit, fit_image

    rng = np.random.default_rng(6)
    root = make_folder(str(tmp_path / "imgs"), per_class=(10, 6, 5, 4), unlabeled=0)
    photos = {"train/ant/p1.JPG": 30, "train/bee/p2.jpeg": 45, "test/cow/p3.jpg": 70}
    for name, side in photos.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(_jpeg(rng, side))
    uri, manifest = ingest(tmp_path, f"folder:{root}", SplitSpec(rho=None, val_per_class=2))
    fit = manifest["image_fit"]
    assert manifest["image_shape"] == [8, 8, 3] and fit["channels"] == 3 and "3 of 48 images are colour" in fit["reason"]
    report = json.load(open(os.path.join(uri, REPORT_FILE)))
    assert report["image_fit"]["resized"] == 3 and report["image_fit"]["conversions"] == {"converted gray to RGB": 45}
    test = _records(os.path.join(uri, "Split-test", "*"), "GZIP")
    expected = encode_png(fit_image(open(os.path.join(root, "test/cow/p3.jpg"), "rb").read(),
                                    ImageFit(8, 8, 3))[0].numpy())
    assert test[(2, expected)] == 1

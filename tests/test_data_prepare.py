"""prepare-data on the real Fashion-MNIST files: counts, disjointness, determinism, bad input."""

import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components.data.errors import DataError
from components.data.longtail import SplitSpec, exponential_profile
from components.data.prepare import prepare, prepare_from_source
from components.data.sources import read_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = SplitSpec(rho=100, n_max=500, class_order="shuffle", val_per_class=40, rho_u=1.0, unlabeled_size=1000, seed=5)


def decode_image(data: bytes) -> np.ndarray:
    """A stored PNG's pixels as they are, uint8 (H, W, C)."""
    return tf.io.decode_png(data, channels=0).numpy()


def read_split(data_dir, split):
    records = []
    for path in sorted(glob.glob(os.path.join(data_dir, split, "*.tfrecord"))):
        for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
            records.append(tf.train.Example.FromString(raw).features.feature)
    return records


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, fashion_mnist_dir):
    out = str(tmp_path_factory.mktemp("fmnist") / "lt")
    manifest = prepare_from_source("fashion_mnist", SPEC, out, fashion_mnist_dir, shard_size=2000)
    return out, manifest


def test_manifest_counts_equal_records_and_profile(prepared):
    out, manifest = prepared
    assert manifest["source"] == "fashion_mnist" and manifest["rho"] == 100 and manifest["seed"] == 5
    for split, entry in manifest["splits"].items():
        records = read_split(out, split)
        assert len(records) == entry["num_examples"], split
        assert sorted(entry["files"]) == sorted(os.path.relpath(p, out) for p in glob.glob(f"{out}/{split}/*.tfrecord"))
        if entry["has_label"]:
            labels = [r["label"].int64_list.value[0] for r in records]
            assert np.bincount(labels, minlength=10).tolist() == entry["per_class_counts"], split
    labeled = manifest["splits"]["labeled"]["per_class_counts"]
    assert labeled == exponential_profile(500, 10, 100, manifest["class_order"])
    assert manifest["class_order"] != list(range(10))
    assert manifest["splits"]["validation"]["per_class_counts"] == [40] * 10
    assert manifest["splits"]["test"]["per_class_counts"] == [1000] * 10
    assert manifest["splits"]["unlabeled"]["num_examples"] == 1000
    assert manifest["splits"]["labeled"]["files"] == ["labeled/labeled-00000-of-00001.tfrecord"]
    assert len(manifest["splits"]["test"]["files"]) == 5  # 10,000 at 2,000 a shard


def test_unlabeled_has_no_label_feature(prepared):
    out, _ = prepared
    records = read_split(out, "unlabeled")
    assert records and all(set(r.keys()) == {"image"} for r in records)


def test_pool_true_labels_are_kept_apart_for_evaluation(prepared, fashion_mnist_dir):
    out, manifest = prepared
    entry = manifest["splits"]["unlabeled"]
    assert entry["true_labels_file"].startswith("evaluation_only/")  # outside every ExampleGen input folder
    with open(os.path.join(out, entry["true_labels_file"])) as f:
        truth = json.load(f)
    assert truth["files"] == entry["files"] and len(truth["labels"]) == entry["num_examples"]
    assert np.bincount(truth["labels"], minlength=10).tolist() == entry["hidden_per_class_counts_from_train"]
    # record i of the pool is the source image whose class is labels[i]
    raw = read_fashion_mnist(fashion_mnist_dir)
    by_digest = {}  # a set of classes per digest: the source holds a few identical images
    for x, y in zip(raw.train_images, raw.train_labels, strict=True):
        by_digest.setdefault(hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest(), set()).add(int(y))
    records = read_split(out, "unlabeled")
    for i in range(0, len(records), 97):
        image = decode_image(records[i]["image"].bytes_list.value[0])
        assert truth["labels"][i] in by_digest[hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()]


def test_splits_are_disjoint_by_image_hash(prepared):
    out, manifest = prepared
    hashes = {}
    for split in manifest["splits"]:
        hs = [hashlib.sha1(decode_image(r["image"].bytes_list.value[0]).tobytes()).hexdigest() for r in read_split(out, split)]
        assert len(set(hs)) == len(hs), f"duplicate images inside {split}"
        hashes[split] = set(hs)
    names = list(hashes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not hashes[a] & hashes[b], f"{a} and {b} share images"
    assert manifest["duplicates_across_splits"] == {}


def test_images_round_trip_exactly(prepared, fashion_mnist_dir):
    out, _ = prepared
    raw = read_fashion_mnist(fashion_mnist_dir)
    train = {hashlib.sha1(x.tobytes()).hexdigest() for x in raw.train_images}
    for r in read_split(out, "labeled")[:50]:
        img = decode_image(r["image"].bytes_list.value[0])
        assert img.shape == (28, 28, 1) and img.dtype == np.uint8
        assert hashlib.sha1(img.tobytes()).hexdigest() in train


def test_same_seed_is_byte_identical(prepared, tmp_path, fashion_mnist_dir):
    out, _ = prepared
    again = str(tmp_path / "again")
    prepare_from_source("fashion_mnist", SPEC, again, fashion_mnist_dir, shard_size=2000)
    files = sorted(os.path.relpath(p, out) for p in glob.glob(f"{out}/**/*", recursive=True) if os.path.isfile(p))
    assert files == sorted(os.path.relpath(p, again) for p in glob.glob(f"{again}/**/*", recursive=True) if os.path.isfile(p))
    for f in files:
        assert open(os.path.join(out, f), "rb").read() == open(os.path.join(again, f), "rb").read(), f


def test_missing_source_says_what_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        read_fashion_mnist(str(tmp_path))


def test_corrupt_idx_file_is_named(tmp_path, fashion_mnist_dir):
    for name in os.listdir(fashion_mnist_dir):
        if name.endswith(".gz"):
            data = open(os.path.join(fashion_mnist_dir, name), "rb").read()
            if name.startswith("train-images"):
                data = gzip.compress(gzip.decompress(data)[:-100])  # truncated payload
            open(tmp_path / name, "wb").write(data)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: IDX payload holds"):
        read_fashion_mnist(str(tmp_path))


def test_class_without_labeled_examples_stops(tmp_path):
    from components.data.sources import RawData

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (300, 8, 8, 1), dtype=np.uint8)
    y = np.repeat(np.arange(3), 100)
    raw = RawData("tiny", ["a", "b", "c"], x, y, x[:30], y[:30])
    with pytest.raises(DataError, match=r"labeled: classes with no labeled example: \['b', 'c'\] \(2 classes affected\)"):
        prepare(raw, SplitSpec(rho=1000, n_max=10, val_per_class=10), str(tmp_path / "o"), log=lambda m: None)
    assert not os.path.exists(tmp_path / "o")


def test_cli_prints_output_dir_last_and_fails_cleanly(tmp_path, fashion_mnist_dir):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = str(tmp_path / "cli")
    args = [sys.executable, "-m", "pipeline", "prepare-data", "--source-dir", fashion_mnist_dir, "--out", out,
            "--n-max", "200", "--val-per-class", "20", "--unlabeled-size", "100", "--rho", "10"]
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip().splitlines()[-1] == out
    assert json.load(open(os.path.join(out, "manifest.json")))["splits"]["labeled"]["per_class_counts"][0] == 200
    bad_args = [sys.executable, "-m", "pipeline", "prepare-data", "--source-dir", str(tmp_path / "nowhere"),
                "--out", out + "2"]
    bad = subprocess.run(bad_args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "file not found" in bad.stderr and "dataset-fashion-mnist" in bad.stderr


def test_duplicates_across_splits_are_counted_with_examples_and_a_test_overlap_is_a_loud_warning():
    from components.data.prepare import cross_split_duplicates
    from pipeline.report import duplicates_warning

    a = np.arange(4 * 9, dtype=np.uint8).reshape(4, 3, 3, 1)
    test = np.stack([a[2], a[0] + 100, a[3]])
    examples = {}
    found = cross_split_duplicates({"labeled": a, "validation": a[:1], "test": test}, examples)
    assert found == {"labeled/validation": 1, "labeled/test": 2}
    assert examples == {"labeled/validation": [(0, 0)], "labeled/test": [(2, 0), (3, 2)]}
    lines = duplicates_warning({"duplicates_across_splits": found, "duplicate_examples": examples})
    assert lines[0].startswith("**WARNING: 2 test images are also in another split: the test score is contaminated")
    assert "labeled/test: 2 (e.g. records [(2, 0), (3, 2)])" in lines[1]
    assert duplicates_warning({"duplicates_across_splits": {}})[0].startswith("Duplicates across splits: none")


def _tiny_raw():
    from components.data.sources import RawData

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (300, 8, 8, 1), dtype=np.uint8)
    y = np.repeat(np.arange(3), 100)
    return RawData("tiny", ["a", "b", "c"], x, y, x[:30], y[:30])


def test_a_failed_write_leaves_neither_output_nor_temporary_folder(tmp_path, monkeypatch):
    from components.data import prepare as prepare_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    spec = SplitSpec(rho=1, n_max=20, val_per_class=5, unlabeled_size=30)
    prepare(_tiny_raw(), spec, str(tmp_path / "o"), log=lambda m: None)
    before = sorted(os.listdir(tmp_path / "o"))
    monkeypatch.setattr(prepare_module, "_write_split", broken)
    with pytest.raises(OSError, match="disk full"):
        prepare(_tiny_raw(), spec, str(tmp_path / "o"), log=lambda m: None)
    assert os.listdir(tmp_path) == ["o"]  # no o.partial-* left over
    assert sorted(os.listdir(tmp_path / "o")) == before  # the finished folder is untouched by the failed rebuild


def test_manifest_reader_types_the_fields_and_names_a_folder_that_is_not_prepared(tmp_path):
    from components.data.prepare import Manifest, load_manifest

    out = str(tmp_path / "o")
    written = prepare(_tiny_raw(), SplitSpec(rho=1, n_max=20, val_per_class=5, unlabeled_size=30), out, log=lambda m: None)
    m = Manifest.load(out)
    assert (m.source, m.class_names, m.num_classes, m.image_shape, m.val_per_class) == ("tiny", ("a", "b", "c"), 3,
                                                                                         (8, 8, 1), 5)
    assert m.splits["labeled"]["per_class_counts"] == [20, 20, 20] and m.raw == written == load_manifest(out)
    with pytest.raises(DataError, match="no manifest.json: not a prepared dataset"):
        Manifest.load(str(tmp_path))


def test_two_processes_preparing_one_folder_take_turns_and_share_it(tmp_path, fashion_mnist_dir):
    """Both start at once while the test holds the folder's lock, so both wait on it (no timing luck): one prepares,
    the other reuses its folder; both exit 0 and no temporary folder is left."""
    import fcntl

    env = dict(os.environ, PYTHONPATH=ROOT)
    out = str(tmp_path / "shared")
    args = [sys.executable, "-m", "pipeline", "prepare-data", "--source-dir", fashion_mnist_dir, "--out", out,
            "--n-max", "50", "--val-per-class", "5", "--unlabeled-size", "50", "--rho", "10"]
    with open(out + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        waited = []
        for proc in procs:  # each says it waits before it blocks on the lock
            lines = []
            while not lines or "waiting for another process" not in lines[-1]:
                line = proc.stderr.readline()
                assert line, f"exited before waiting on the lock: {''.join(lines)}"
                lines.append(line)
            waited.append("".join(lines))
    results = [(proc, *proc.communicate(timeout=600)) for proc in procs]
    for (proc, stdout, stderr), before in zip(results, waited, strict=True):
        assert proc.returncode == 0, before + stderr
        assert f"[prepare-data] waiting for another process preparing {out}" in before
        assert stdout.strip().splitlines()[-1] == out
    stderrs = [stderr for _, _, stderr in results]
    assert sum(f"[prepare-data] preparing {out}" in e for e in stderrs) == 1, stderrs
    assert sum(f"[prepare-data] {out} is prepared; reusing it" in e for e in stderrs) == 1, stderrs
    assert sorted(os.listdir(tmp_path)) == ["shared", "shared.lock"]  # no shared.partial-* left over
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["splits"]["labeled"]["per_class_counts"] == exponential_profile(50, 10, 10)
    assert manifest["splits"]["validation"]["per_class_counts"] == [5] * 10
    for split, entry in manifest["splits"].items():
        assert len(read_split(out, split)) == entry["num_examples"], split

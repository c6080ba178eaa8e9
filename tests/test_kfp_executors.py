"""The compiled Kubeflow tasks run: each custom component's container command and arguments are taken from the
compiled package and run through TFX's Kubeflow v2 container entrypoint (the image's entry point) in this
environment, with an ExecutorInput as KFP's launcher writes it, on the real artifacts of a local smoke run;
their outputs must match what the same components wrote in the local run.

What cannot run here is the KFP launcher and driver themselves (no cluster): the test plays their part,
substituting ``{{$}}`` with the ExecutorInput built from the compiled task's parameters and artifact types."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from ml_metadata.metadata_store import metadata_store
from tfx.orchestration import metadata

from components.artifacts import EVALUATION_FILE, LABEL_STATS_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def _cli(*args, cwd=ROOT, check=True):
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, env=ENV)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _metadata(artifact) -> dict:
    """An MLMD artifact's properties and custom properties, as the launcher puts them in RuntimeArtifact.metadata."""
    out = {}
    for props in (artifact.properties, artifact.custom_properties):
        for k, v in props.items():
            out[k] = getattr(v, v.WhichOneof("value"))
    return out


def _outputs(run: dict, execution: str, artifact_type: str):
    return run["executions"][execution]["outputs"][artifact_type]


def _examples_of(metadata_path: str, producer: str):
    """The Examples artifact a component (by its id, e.g. LabeledExampleGen) wrote in the local run."""
    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))
    (artifact,) = [a for a in store.get_artifacts_by_type("Examples") if f"/{producer}/" in a.uri]
    return artifact


def run_compiled_task(spec: dict, task_name: str, inputs: dict, out_dir: str, parameters: dict | None = None) -> dict:
    """Run one compiled task's container command through TFX's entrypoint; its ExecutorOutput, as a dict.

    ``inputs``: {input key: (uri, metadata)}; the artifact types and parameters come from the package."""
    task = spec["root"]["dag"]["tasks"][task_name]
    component = spec["components"][task["componentRef"]["name"]]
    container = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
    in_defs = component["inputDefinitions"].get("artifacts", {})
    out_defs = component["outputDefinitions"]["artifacts"]
    executor_input = {
        "inputs": {
            "artifacts": {key: {"artifacts": [{"name": f"{task_name}-in-{key}", "uri": uri, "metadata": metadata,
                                               "type": in_defs[key]["artifactType"]}]}
                          for key, (uri, metadata) in inputs.items()},
            # the compiled constants, as the launcher hands them over ({"stringValue": ...}, {"intValue": ...})
            "parameters": {**{k: v["runtimeValue"]["constantValue"] for k, v in task["inputs"].get("parameters", {}).items()},
                           **(parameters or {})},
        },
        "outputs": {
            "artifacts": {key: {"artifacts": [{"name": f"{task_name}-out-{key}", "uri": os.path.join(out_dir, key),
                                               "type": d["artifactType"]}]} for key, d in out_defs.items()},
            "outputFile": os.path.join(out_dir, "executor_output.json"),
        },
    }
    for key in out_defs:
        os.makedirs(os.path.join(out_dir, key), exist_ok=True)
    args = [json.dumps(executor_input) if a == "{{$}}" else a for a in container["args"]]
    cmd = [sys.executable if c == "python" else c for c in container["command"]]
    proc = subprocess.run(cmd + args, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, f"{task_name}: {container['command']}\n{proc.stderr[-4000:]}"
    with open(executor_input["outputs"]["outputFile"]) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def classification(tmp_path_factory, smoke_runs):
    """The session's first local smoke run (pool included; tests/conftest.py) and the same config compiled with the
    run's own data and a local root."""
    tmp = tmp_path_factory.mktemp("kfp_exec")
    package = str(tmp / "pipeline.yaml")
    _cli("compile-kfp", "--preset", "smoke", "--set", "name=smoke", "--set", f"data.data_dir={smoke_runs['data']}",
         "--set", "beam.direct_running_mode=in_memory", "--pipeline-root", str(tmp / "kfp_root"), "--output", package)
    return {"tmp": tmp, "spec": yaml.safe_load(open(package)), "run": smoke_runs["first_outputs"],
            "mlmd": smoke_runs["mlmd"]}


def test_compiled_label_stats_evaluator_and_pusher_run_and_match_the_local_run(classification):
    spec, run, tmp = classification["spec"], classification["run"], classification["tmp"]
    labeled_examples = _examples_of(classification["mlmd"], "LabeledExampleGen")
    unlabeled_examples = _examples_of(classification["mlmd"], "UnlabeledExampleGen")

    out = run_compiled_task(spec, "LabelStatsGen", {
        "examples": (labeled_examples.uri, _metadata(labeled_examples)),
        "unlabeled_examples": (unlabeled_examples.uri, _metadata(unlabeled_examples))}, str(tmp / "k_stats"))
    assert "label_stats" in out["artifacts"]
    (local_stats,) = _outputs(run, "components.label_stats_gen.LabelStatsGen", "components.LabelStatistics")
    compiled = json.load(open(tmp / "k_stats" / "label_stats" / LABEL_STATS_FILE))
    assert compiled == json.load(open(os.path.join(local_stats.uri, LABEL_STATS_FILE)))

    (model,) = _outputs(run, "components.trainer.LongTailTrainer", "Model")
    run_compiled_task(spec, "PerClassEvaluator", {
        "examples": (labeled_examples.uri, _metadata(labeled_examples)), "model": (model.uri, _metadata(model)),
        "label_stats": (str(tmp / "k_stats" / "label_stats"), {})}, str(tmp / "k_eval"))
    (local_eval,) = _outputs(run, "components.evaluator.PerClassEvaluator", "ModelEvaluation")
    compiled_eval = json.load(open(tmp / "k_eval" / "evaluation" / EVALUATION_FILE))
    local = json.load(open(os.path.join(local_eval.uri, EVALUATION_FILE)))
    for key in ("candidate", "report", "checks", "blessed", "thresholds"):
        assert compiled_eval[key] == local[key], key
    blessed = os.path.exists(tmp / "k_eval" / "blessing" / ("BLESSED" if local["blessed"] else "NOT_BLESSED"))
    assert blessed

    pushed = run_compiled_task(spec, "LongTailPusher", {
        "model": (model.uri, _metadata(model)),
        "model_blessing": (str(tmp / "k_eval" / "blessing"), {"blessed": 1 if local["blessed"] else 0})},
        str(tmp / "k_push"))
    meta = pushed["artifacts"]["pushed_model"]["artifacts"][0]["metadata"]
    assert meta["pushed"] == 1, meta
    destination = meta["pushed_destination"]
    assert destination.startswith(str(tmp / "kfp_root" / "serving" / "longtail-smoke"))  # the compiled push destination
    assert os.path.exists(os.path.join(destination, "saved_model.pb"))
    local_push = _outputs(run, "components.pusher.LongTailPusher", "PushedModel")[0]
    local_dir = local_push.custom_properties["pushed_destination"].string_value
    assert sorted(os.listdir(destination)) == sorted(os.listdir(local_dir))


def test_compiled_regression_stats_and_evaluator_run_and_match_the_local_run(taxi_runs, tmp_path):
    """The session's first taxi run (tests/conftest.py) and its config compiled."""
    package = str(tmp_path / "taxi.yaml")
    _cli("compile-kfp", "--preset", "regression-smoke", "--set", f"regression.csv_dir={taxi_runs['csv']}",
         "--set", "regression.max_bad_fraction=0.05", "--set", "beam.direct_running_mode=in_memory",
         "--pipeline-root", str(tmp_path / "kfp_root"), "--output", package)
    spec = yaml.safe_load(open(package))
    mlmd, run = taxi_runs["mlmd"], taxi_runs["first_outputs"]
    examples = _examples_of(mlmd, "CsvExampleGen")
    run_compiled_task(spec, "RegressionLabelStatsGen", {"examples": (examples.uri, _metadata(examples))},
                      str(tmp_path / "k_stats"))
    (local_stats,) = _outputs(run, "components.regression_label_stats_gen.RegressionLabelStatsGen",
                              "components.LabelStatistics")
    compiled = json.load(open(tmp_path / "k_stats" / "label_stats" / LABEL_STATS_FILE))
    assert compiled == json.load(open(os.path.join(local_stats.uri, LABEL_STATS_FILE)))

    (model,) = _outputs(run, "components.trainer.LongTailTrainer", "Model")
    run_compiled_task(spec, "RegressionEvaluator", {
        "examples": (examples.uri, _metadata(examples)), "model": (model.uri, _metadata(model)),
        "label_stats": (str(tmp_path / "k_stats" / "label_stats"), {})}, str(tmp_path / "k_eval"))
    (local_eval,) = _outputs(run, "components.regression_evaluator.RegressionEvaluator", "ModelEvaluation")
    compiled_eval = json.load(open(tmp_path / "k_eval" / "evaluation" / EVALUATION_FILE))
    local = json.load(open(os.path.join(local_eval.uri, EVALUATION_FILE)))
    for key in ("candidate", "report", "checks", "blessed"):
        assert compiled_eval[key] == local[key], key

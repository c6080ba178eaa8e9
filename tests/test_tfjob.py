"""Multi-worker training on Kubeflow (issue #46 item 2): a package compiled with train.distribute=multi_worker holds,
in each Trainer's job, the TFJob its step launches (components/tfjob.py). No Kubernetes API server or training
operator runs here, so the contract is held as closely as this machine allows:

- the compiled manifest validates against the operator's own published CRD schema (tests/data/kubeflow.org_tfjobs.yaml,
  kubeflow/training-operator v1.9.0, vendored with its SOURCE file), read with the jsonschema library;
- its worker command is the local launcher's (``python -m <module> JOB.json``), and the local cluster's TF_CONFIG has
  the shape the operator writes, so the local two-worker tests (tests/test_distribute.py, test_pipeline_e2e.py) run
  the same entry point with the same variable;
- the launcher's protocol against the Kubernetes API (create, poll the conditions, delete; the Failed message named) is
  driven through an object with kubernetes.client.CustomObjectsApi's method signatures that records the calls."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jsonschema
import pytest
import yaml

from components import tfjob
from models import cluster
from tests.test_kubeflow_compile import load_package

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRD = os.path.join(ROOT, "tests", "data", "kubeflow.org_tfjobs.yaml")


def crd_validator() -> jsonschema.protocols.Validator:
    with open(CRD) as f:
        crd = yaml.safe_load(f)
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    assert (crd["spec"]["group"], version["name"], crd["spec"]["names"]["kind"]) == (tfjob.GROUP, tfjob.VERSION, tfjob.KIND)
    schema = version["schema"]["openAPIV3Schema"]
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def compiled_jobs(tmp_path, *sets, steps: dict | None = None) -> dict:
    """{Trainer task: its job's cluster_launch} of the regression preset compiled with ``sets`` (its data, the taxi CSV of
    the tfx package, needs no preparing); ``steps``, when given, gets {executor: its container's resources}."""
    out = str(tmp_path / "taxi.yaml")
    args = [sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "regression", "--pipeline-root",
            "gs://bucket/taxi", "--image", "registry.example/longtail-tfx:1", "--output", out]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    package = load_package(out)
    tasks = package["root"]["dag"]["tasks"]
    if steps is not None:
        steps.update({name: ex["container"].get("resources") for name, ex in package["deploymentSpec"]["executors"].items()
                      if "container" in ex})
    jobs = {}
    for name, task in tasks.items():
        config = task.get("inputs", {}).get("parameters", {}).get("custom_config")
        if config:
            job = json.loads(config["runtimeValue"]["constantValue"]["stringValue"])
            if "cluster_launch" in job:
                jobs[name] = job["cluster_launch"]
    return jobs


def test_a_multi_worker_package_holds_a_tfjob_the_operators_crd_schema_accepts(tmp_path):
    steps = {}
    jobs = compiled_jobs(tmp_path, "train.distribute=multi_worker", "kubeflow.workers=3", "train.gpus=1", steps=steps)
    assert list(jobs) == ["LongTailTrainer"], jobs
    # the step that only launches and waits asks for the default task's resources; the TFJob's pods get the Trainer's
    trainer_step = steps["LongTailTrainer_executor"]
    assert (trainer_step["resourceCpuRequest"], trainer_step["resourceMemoryRequest"]) == ("1", "4Gi")
    assert "accelerator" not in trainer_step
    spec = jobs["LongTailTrainer"]
    assert (spec["launcher"], spec["workers"]) == ("components.tfjob:launch", 3)
    validator = crd_validator()
    manifest = spec["manifest"]
    validator.validate(manifest)
    run = tfjob.worker_manifest(spec, "gs://bucket/taxi/LongTailTrainer/model_run/7/distributed/job.json",
                                tfjob.job_name(manifest["metadata"]["name"], "abc12345"), "kubeflow-user")
    validator.validate(run)  # as created at run time: name, namespace and the worker job's path filled in
    (worker,) = run["spec"]["tfReplicaSpecs"].values()
    assert worker["replicas"] == 3 and worker["restartPolicy"] == "Never"
    (container,) = worker["template"]["spec"]["containers"]
    assert container["name"] == "tensorflow"  # the container the operator gives TF_CONFIG
    assert container["image"] == "registry.example/longtail-tfx:1"
    # the local launcher's command (models.cluster.launch): python -m <the Trainer's module> JOB.json
    assert container["command"] + container["args"] == [
        "python", "-m", "models.regression", "gs://bucket/taxi/LongTailTrainer/model_run/7/distributed/job.json"]
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
                                      "limits": {"nvidia.com/gpu": "1"}}
    assert len(run["metadata"]["name"]) <= 40 and run["metadata"]["name"].endswith("-abc12345")
    # what the schema refuses, so the check above is a check
    bad = json.loads(json.dumps(manifest))
    bad["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "3"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        validator.validate(bad)
    del bad["spec"]["tfReplicaSpecs"]
    with pytest.raises(jsonschema.ValidationError, match="'tfReplicaSpecs' is a required property"):
        validator.validate(bad)


def test_a_multi_worker_package_without_a_worker_count_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "regression", "--pipeline-root",
                           "gs://b/t", "--output", str(tmp_path / "t.yaml"), "--set", "train.distribute=multi_worker"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and "needs kubeflow.workers >= 2" in proc.stderr, proc.stderr[-2000:]
    assert compiled_jobs(tmp_path) == {}  # a single-process package launches nothing


def test_the_local_cluster_gives_workers_the_tf_config_the_operator_writes():
    local = cluster.local_cluster(2)
    pods = [tfjob.operator_tf_config("taxi-trainer-1a2b", "kubeflow-user", 2, i) for i in range(2)]
    for mine, theirs in zip(local, pods, strict=True):
        assert set(mine) == set(theirs) == {"cluster", "task", "environment"}
        assert mine["task"] == theirs["task"] and mine["environment"] == theirs["environment"] == "cloud"
        assert set(mine["cluster"]) == set(theirs["cluster"]) == {"worker"}
        assert cluster.is_chief(mine) == cluster.is_chief(theirs)
    assert pods[1]["cluster"]["worker"][0] == "taxi-trainer-1a2b-worker-0.kubeflow-user.svc:2222"
    assert [cluster.worker_index(c) for c in pods] == [0, 1]


class RecordingCustomObjectsApi:
    """The three kubernetes.client.CustomObjectsApi calls the launcher makes, with their signatures, answering the
    TFJob's status from ``statuses`` in turn, and recording each call."""

    def __init__(self, statuses):
        self.statuses, self.calls, self.created = list(statuses), [], None

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.calls.append(("create", group, version, namespace, plural, body["metadata"]["name"]))
        self.created = body
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("get", name))
        return {**self.created, "status": self.statuses.pop(0)}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append(("delete", name))


def test_the_launcher_writes_the_worker_job_creates_waits_and_deletes(tmp_path):
    spec = tfjob.cluster_launch("longtail-fmnist-LongTailTrainer", "img:1", 2, "models.trainer",
                                {"cpu": "4", "memory": "16Gi"}, namespace="team-a")
    running = {"conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]}
    done = {"conditions": [*running["conditions"], {"type": "Succeeded", "status": "True", "message": "ok"}]}
    api = RecordingCustomObjectsApi([running, done])
    tfjob.launch(spec, {"fn_args": {"model_run_dir": "x"}}, "models.trainer", str(tmp_path / "distributed"), poll_s=0,
                 api=api)
    job_path = str(tmp_path / "distributed" / "job.json")
    assert json.load(open(job_path)) == {"fn_args": {"model_run_dir": "x"}}
    crd_validator().validate(api.created)
    assert api.created["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["args"] == [job_path]
    name = api.created["metadata"]["name"]
    assert api.calls == [("create", "kubeflow.org", "v1", "team-a", "tfjobs", name), ("get", name), ("get", name),
                         ("delete", name)]

    failed = {"conditions": [{"type": "Failed", "status": "True", "message": "worker-1 exited with code 1"}]}
    api = RecordingCustomObjectsApi([failed])
    with pytest.raises(RuntimeError, match=r"TFJob team-a/longtail-fmnist-longtailtrainer-[0-9a-f]+ failed: worker-1 exited"):
        tfjob.launch(spec, {"fn_args": {}}, "models.trainer", str(tmp_path / "d2"), poll_s=0, api=api)
    assert api.calls[-1][0] == "delete"  # a failed job is cleaned up too

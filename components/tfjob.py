"""Multi-worker training on Kubeflow: a compiled package's Trainer step launches a TFJob (Kubeflow Training Operator,
``kubeflow.org/v1``) and waits for it.

``compile-kfp`` with ``train.distribute=multi_worker`` and ``kubeflow.workers`` >= 2 puts :func:`cluster_launch` into
each Trainer's job (models/job.py ``cluster_launch``): the TFJob manifest of that many ``Worker`` replicas, in the
package's image, with the Trainers' resource requests. When the Trainer step runs in its pod (no TF_CONFIG there),
models.cluster.launch_on_cluster calls :func:`launch`, which

1. writes the worker job (the Trainer's fn_args as JSON, as models.cluster.launch writes it on localhost) to the
   model run folder on the pipeline root, which every pod reads;
2. creates the TFJob, each worker running ``python -m <module> JOB.json``, the same entry point and arguments as a
   local worker (models.trainer, models.ssp or models.regression). The operator gives each pod the TF_CONFIG of
   :func:`operator_tf_config`; worker 0 is the chief and exports to the Model artifact's folder;
3. waits for the job's Succeeded condition (Failed: an error with the operator's message) and deletes it.

The Kubernetes client is the ``kubernetes`` package (kfp's dependency), with the pod's in-cluster service account
(``load_incluster_config``), which needs create/get/delete on ``tfjobs`` in its namespace. No API server runs here:
tests/test_tfjob.py holds the manifest to the operator's published CRD schema (tests/data/kubeflow.org_tfjobs.yaml,
training-operator v1.9.0) and runs the local two workers with the TF_CONFIG the operator writes.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "tfjobs", "TFJob"
CONTAINER = "tensorflow"  # the operator sets TF_CONFIG on the container of this name only (TFJobDefaultContainerName)
PORT_NAME, PORT = "tfjob-port", 2222  # TFJobDefaultPortName, TFJobDefaultPort
LAUNCHER = "components.tfjob:launch"
JOB_PLACEHOLDER = "{{job}}"  # the worker job's path, known when the Trainer step runs
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def manifest(name: str, image: str, workers: int, module: str, requests: dict, gpus: int = 0,
             gpu_resource: str = "nvidia.com/gpu") -> dict:
    """The TFJob: ``workers`` Worker replicas of ``image`` running ``python -m <module> {{job}}``; ``requests``
    {"cpu": ..., "memory": ...} for each pod, plus ``gpus`` of ``gpu_resource`` (request and limit: Kubernetes needs
    both equal for extended resources). restartPolicy Never and backoffLimit 0: a worker lost mid-collective stops
    the job, and a retried Trainer step resumes from its BackupAndRestore folder."""
    resources: dict = {"requests": dict(requests)}
    if gpus:
        resources["requests"][gpu_resource] = str(gpus)
        resources["limits"] = {gpu_resource: str(gpus)}
    container = {"name": CONTAINER, "image": image, "command": ["python", "-m", module], "args": [JOB_PLACEHOLDER],
                 "ports": [{"name": PORT_NAME, "containerPort": PORT}], "resources": resources}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "longtail-tfx"}},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0},
            "tfReplicaSpecs": {"Worker": {"replicas": int(workers), "restartPolicy": "Never",
                                          "template": {"spec": {"containers": [container]}}}},
        },
    }


def cluster_launch(name: str, image: str, workers: int, module: str, requests: dict, gpus: int = 0,
                   gpu_resource: str = "nvidia.com/gpu", namespace: str | None = None,
                   timeout_s: float = 86400.0) -> dict:
    """The job's ``cluster_launch`` (models/job.py): the launcher, the worker count and the TFJob manifest."""
    stem = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:31].rstrip("-")  # the run adds "-<8 hex>"
    return {"launcher": LAUNCHER, "workers": int(workers), "namespace": namespace, "timeout_s": float(timeout_s),
            "manifest": manifest(stem, image, workers, module, requests, gpus, gpu_resource)}


def job_name(base: str, suffix: str | None = None) -> str:
    """A DNS-1035 name of at most 40 characters (the operator adds ``-worker-<i>`` to name pods and services):
    ``base`` cut and cleaned, and a unique suffix."""
    suffix = suffix or uuid.uuid4().hex[:8]
    stem = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[: 40 - len(suffix) - 1].rstrip("-") or "train"
    return f"{stem}-{suffix}" if stem[0].isalpha() else f"t{stem}-{suffix}"[:40]


def operator_tf_config(name: str, namespace: str, workers: int, index: int, port: int = PORT) -> dict:
    """TF_CONFIG as the training operator v1.9 writes it for Worker ``index`` of TFJob ``name``
    (pkg/controller.v1/tensorflow/tensorflow.go genTFConfigJSONStr): lowercase replica types, hosts
    ``<job>-worker-<i>.<namespace>.svc:<port>``, and ``environment: cloud``."""
    hosts = [f"{name}-worker-{i}.{namespace}.svc:{port}" for i in range(workers)]
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}, "environment": "cloud"}


def worker_manifest(spec: dict, job_path: str, name: str, namespace: str) -> dict:
    """The compiled manifest with this run's name, namespace and worker job path filled in."""
    body = json.loads(json.dumps(spec["manifest"]))
    body["metadata"].update(name=name, namespace=namespace)
    for replica in body["spec"]["tfReplicaSpecs"].values():
        for container in replica["template"]["spec"]["containers"]:
            container["args"] = [job_path if a == JOB_PLACEHOLDER else a for a in container["args"]]
    return body


def condition(status: dict | None) -> tuple[str | None, str]:
    """("Succeeded" | "Failed" | None, message) from a TFJob's status: the newest condition whose status is True."""
    done = [c for c in (status or {}).get("conditions") or [] if c.get("status") == "True"
            and c.get("type") in ("Succeeded", "Failed")]
    return (done[-1]["type"], done[-1].get("message", "")) if done else (None, "")


def _namespace(spec: dict) -> str:
    if spec.get("namespace"):
        return spec["namespace"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip()
    except OSError:
        raise RuntimeError(f"kubeflow.namespace is not set and {SERVICE_ACCOUNT_NAMESPACE} is absent: the Trainer step "
                           "is not in a Kubernetes pod, so it cannot start a TFJob") from None


def launch(spec: dict, job: dict, module: str, scratch_dir: str, poll_s: float = 15.0, api=None) -> None:
    """models.cluster.launch_on_cluster's launcher: write ``job`` to ``scratch_dir``/job.json (the pipeline root,
    read by every pod), create the TFJob, wait for it, delete it. ``api``: a kubernetes CustomObjectsApi (default:
    the pod's in-cluster one)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(scratch_dir)
    job_path = os.path.join(scratch_dir, "job.json")
    with tf.io.gfile.GFile(job_path, "w") as f:
        json.dump(job, f, indent=2)
    namespace = _namespace(spec)
    name = job_name(spec["manifest"]["metadata"]["name"])
    body = worker_manifest(spec, job_path, name, namespace)
    if api is None:
        from kubernetes import client, config

        config.load_incluster_config()
        api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    print(f"[tfjob] {namespace}/{name}: {spec['workers']} workers running python -m {module} {job_path}",
          file=sys.stderr, flush=True)
    deadline = time.time() + float(spec.get("timeout_s") or 86400.0)
    try:
        while True:
            state, message = condition(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                                        name).get("status"))
            if state == "Succeeded":
                print(f"[tfjob] {namespace}/{name} succeeded", file=sys.stderr, flush=True)
                return
            if state == "Failed":
                raise RuntimeError(f"TFJob {namespace}/{name} failed: {message} (the workers' logs: kubectl logs -n "
                                   f"{namespace} {name}-worker-0)")
            if time.time() > deadline:
                raise RuntimeError(f"TFJob {namespace}/{name} did not finish in {spec.get('timeout_s')} s "
                                   "(kubeflow.train_timeout_s)")
            time.sleep(poll_s)
    finally:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

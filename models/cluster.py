"""The cluster a multi-worker Trainer trains on, and its worker processes: TF_CONFIG as Kubeflow's training operator
(TFJob) and Vertex AI set it, a cluster of N workers on localhost (``train.local_workers``), :func:`launch` that runs
``python -m <module> JOB.json`` once per worker and stops them all when one fails, and the hand-over to a cluster
launcher a compiled Kubeflow package names (:func:`launch_on_cluster`). Which strategy runs in them, and the loop:
models/distribute.py. No TensorFlow op runs here (a worker's strategy must come before any).

A multi-worker strategy must exist before the process runs any TensorFlow op, and the Trainer's process (TFX's
executor, LocalDagRunner's in-process components) has run many, so workers always train in fresh child processes
(``python -m models.trainer JOB``, or another Trainer's worker module: ``python -m models.ssp JOB`` for the
pre-training): :func:`launch` starts them, streams the chief's progress and stops every worker when one fails.

models/ never imports tfx.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
import time

from models import job as trainer_job

WORKER_DIR = "distributed"  # under the Trainer's model_run_dir: the job, and every worker but the chief's log


def read_tf_config(environ=None) -> dict:
    """TF_CONFIG as a dict ({} when unset); a malformed one is an error that shows it."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not JSON ({err}): {text[:200]!r}") from None
    if not isinstance(tf_config, dict) or not isinstance(tf_config.get("cluster", {}), dict):
        raise ValueError(f"TF_CONFIG must be an object with a 'cluster' object, got {text[:200]!r}")
    return tf_config


def cluster_workers(tf_config: dict) -> int:
    """How many training tasks TF_CONFIG names (chief + workers; parameter servers and evaluators do not train)."""
    cluster = tf_config.get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def task_of(tf_config: dict) -> tuple[str, int]:
    task = tf_config.get("task", {})
    return str(task.get("type", "worker")), int(task.get("index", 0))


def is_chief(tf_config: dict) -> bool:
    """The chief task, or worker 0 when the cluster has no chief (TF's multi-worker guide's rule)."""
    if not tf_config:
        return True
    kind, index = task_of(tf_config)
    return kind == "chief" or (kind == "worker" and index == 0 and not tf_config.get("cluster", {}).get("chief"))


def worker_index(tf_config: dict) -> int:
    """The task's rank among the training tasks: the chief 0, worker i then i + (1 if there is a chief)."""
    if not tf_config:
        return 0
    kind, index = task_of(tf_config)
    if kind == "chief":
        return 0
    return index + (1 if tf_config.get("cluster", {}).get("chief") else 0)


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on localhost (bound, read, released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("localhost", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster(n: int) -> list[dict]:
    """TF_CONFIG for each of n workers on localhost (worker 0 is the chief), in the shape Kubeflow's training operator
    gives a TFJob's Worker pods (components/tfjob.py operator_tf_config): only the hosts differ."""
    workers = [f"localhost:{p}" for p in free_ports(n)]
    return [{"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}, "environment": "cloud"}
            for i in range(n)]


def launch_on_cluster(spec: dict, job: dict, module: str, scratch_dir: str) -> None:
    """train.distribute=multi_worker with no TF_CONFIG here but a job that says how to start its cluster (``spec``, a
    compiled Kubeflow package's CLUSTER_LAUNCH_KEY): ``spec["launcher"]`` ("module:function", components/tfjob.py's
    TFJob) runs ``python -m <module> JOB.json`` on every worker, as :func:`launch` does on localhost, and returns when
    they have finished (an error when one failed). Imported by name: models/ imports no cluster client."""
    name, _, function = spec["launcher"].partition(":")
    getattr(importlib.import_module(name), function)(spec, job, module, scratch_dir)


def cluster_launch_of(fn_args) -> dict | None:
    """The job's CLUSTER_LAUNCH_KEY (set by compile-kfp for a multi-worker package), or None."""
    return (getattr(fn_args, "custom_config", None) or {}).get(trainer_job.CLUSTER_LAUNCH_KEY)


def read_job(path: str) -> dict:
    """A worker's JOB.json: a local file (:func:`launch`), or a URI on the cluster's storage (a TFJob's workers read
    the one the Trainer step wrote, components/tfjob.py), read with TensorFlow's GFile, which runs no TensorFlow op."""
    if "://" not in path:
        with open(path) as f:
            return json.load(f)
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def launch(job: dict, tf_configs: list[dict], scratch_dir: str, timeout_s: float | None = None,
           module: str = "models.trainer") -> None:
    """Run ``python -m <module> JOB.json`` (one worker) once per TF_CONFIG (the job as JSON in ``scratch_dir``) and
    wait. ``module``: the Trainer's worker entry point (its ``main``), models.trainer for the classification Trainers.

    The chief's output (and a single worker's, as in a TFJob pod) goes to this process's stderr; every other
    worker's to ``worker-<i>.log`` in ``scratch_dir``. When one worker fails the others (blocked in a collective)
    are stopped, and the error names the worker and shows the end of its log."""
    os.makedirs(scratch_dir, exist_ok=True)
    job_path = os.path.join(scratch_dir, "job.json")
    with open(job_path, "w") as f:
        json.dump(job, f, indent=2)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs, logs = [], []
    for tf_config in tf_configs:
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config),
                   PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        index = worker_index(tf_config)
        log_path = os.path.join(scratch_dir, f"worker-{index}.log")
        log = open(log_path, "w")
        logs.append((index, log_path, log))
        # the chief's output (or a pod's only worker's, under a TFJob) to this process's; the others' to their logs
        stderr = None if is_chief(tf_config) or len(tf_configs) == 1 else log
        procs.append(subprocess.Popen([sys.executable, "-m", module, job_path], env=env, cwd=root,
                                      stdout=stderr if stderr is not None else None, stderr=stderr))
    deadline = None if timeout_s is None else time.time() + timeout_s
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed or all(c == 0 for c in codes):
                break
            if deadline is not None and time.time() > deadline:
                failed = [i for i, c in enumerate(codes) if c is None]
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for _, _, log in logs:
            log.close()
    if failed:
        lines = []
        for i in failed:
            index, log_path, _ = logs[i]
            with open(log_path) as f:
                tail = f.read()[-3000:] or "(empty: this worker wrote to the Trainer's own stderr, above)"
            code = procs[i].returncode
            lines.append(f"worker {index} ({'timed out' if code is None or code < 0 else f'exit {code}'}); "
                         f"log {log_path}:\n{tail}")
        raise RuntimeError(f"distributed training failed on {len(failed)} of {len(procs)} workers: "
                           + "\n".join(lines))


def launch_workers(fn_args, local_workers: int, tf_config: dict, module: str, job: dict, label: str) -> None:
    """A multi-worker training's workers, each ``python -m <module> JOB.json`` reading ``job``: on the cluster a
    compiled package's launcher starts (:func:`launch_on_cluster`) where neither TF_CONFIG nor train.local_workers
    names one, else here (:func:`launch`): a local cluster of ``local_workers``, or this process's own task of the
    TF_CONFIG cluster. Returns when they have finished; the one launcher of every Trainer."""
    scratch = os.path.join(fn_args.model_run_dir, WORKER_DIR)
    spec = cluster_launch_of(fn_args)
    if spec and not tf_config and local_workers <= 1:
        print(f"{label}: a cluster of {spec.get('workers')} workers ({spec['launcher']})", file=sys.stderr, flush=True)
        launch_on_cluster(spec, job, module, scratch)
        return
    configs = local_cluster(local_workers) if local_workers > 1 else [tf_config]
    print(f"{label}: {len(configs)} local worker process(es) of a {cluster_workers(configs[0])}-worker cluster",
          file=sys.stderr, flush=True)
    launch(job, configs, scratch, module=module)


def worker_fn_args(fn_args, stage: str) -> dict:
    """The fn_args attributes a worker process reads, as JSON (``python -m <module> JOB.json`` rebuilds them as a
    SimpleNamespace): the files, the model folders, the base model and the job of ``stage`` (a models.job stage)."""
    return {"train_files": list(fn_args.train_files), "eval_files": list(getattr(fn_args, "eval_files", None) or []),
            "serving_model_dir": fn_args.serving_model_dir, "model_run_dir": fn_args.model_run_dir,
            "custom_config": trainer_job.TrainerJob.from_custom_config(fn_args.custom_config, stage).to_custom_config(),
            "base_model": getattr(fn_args, "base_model", None)}

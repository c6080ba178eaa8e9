"""Schedule retraining on a Kubeflow Pipelines v2 cluster with kfp.Client: upload the compiled package (or
reuse the pipeline and the version already uploaded with the same content), then create a recurring run
(cron; at most one run at a time; no catch-up by default) or, with ``once``, a single run.

kfp.Client takes the host, namespace and credentials as it always does: arguments here, or its own
environment variables (KF_PIPELINES_ENDPOINT, KF_PIPELINES_IAP_OAUTH2_CLIENT_ID, ...; see kfp.Client).
No KFP API server can run on this project's machines: the tests point kfp.Client at a local HTTP endpoint
that records what the client sends (tests/test_kfp_schedule.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import kfp
import yaml
from kfp_server_api.exceptions import ApiException
from urllib3.exceptions import HTTPError as Urllib3Error

PACKAGE_SUFFIXES = (".yaml", ".yml")  # what TFX writes as the bare pipeline spec and kfp's client reads


class ScheduleError(Exception):
    """The cluster could not be reached, or refused the package or the run; the message says which."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What to create: a recurring run (``cron``) or, with ``once``, a single run."""

    cron: str | None = "0 0 3 * * 1"  # KFP's cron has six fields (seconds first): Mondays at 03:00
    once: bool = False
    experiment: str = "longtail-retraining"
    job_name: str | None = None  # default: the pipeline's name + "-scheduled" / "-once"
    max_concurrency: int = 1  # a retraining never overlaps the previous one (the gate compares against it)
    catchup: bool = False  # missed intervals (cluster down) are not run afterwards
    enable_caching: bool | None = None  # None: as compiled (the config's enable_cache)


def kfp_cron(expression: str) -> str:
    """KFP's six-field cron (seconds first). A five-field (Unix) expression gets ``0`` seconds prepended."""
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) != 6:
        raise ScheduleError(f"cron expression {expression!r} has {len(fields)} fields; KFP takes 6 (seconds minutes hours "
                            "day-of-month month day-of-week) or a Unix 5-field one")
    return expression


def read_package(path: str) -> dict:
    """The pipeline spec in ``path`` as kfp's client will read it; a clear error for a package it refuses."""
    if not path.endswith(PACKAGE_SUFFIXES):
        raise ScheduleError(f"{path}: kfp's client reads pipeline packages ending in .yaml/.yml (or .zip/.tar.gz); "
                            "compile with `python -m pipeline compile-kfp --output pipeline.yaml`")
    with open(path) as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, dict) or "pipelineInfo" not in doc or "root" not in doc:
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ScheduleError(f"{path}: not a bare pipeline spec (top-level keys {keys}; a TFX PipelineJob JSON wrapper "
                            "with displayName/pipelineSpec/runtimeConfig is refused by kfp's client)")
    return doc


def package_version(path: str) -> str:
    """A version name from the package's content: the same compiled package is uploaded once."""
    with open(path, "rb") as f:
        return "sha256-" + hashlib.sha256(f.read()).hexdigest()[:16]


def _call(what: str, api_host: str | None, fn, *args, **kwargs):
    """Run one kfp.Client call; turn connection failures and API refusals into a ScheduleError naming both."""
    try:
        return fn(*args, **kwargs)
    except ApiException as e:
        body = (e.body or "").strip() if isinstance(e.body, str) else e.body
        raise ScheduleError(f"{what}: the KFP API at {api_host} refused it (HTTP {e.status} {e.reason}): {body}") from e
    except (Urllib3Error, ConnectionError, TimeoutError) as e:
        raise ScheduleError(f"{what}: cannot reach the KFP API at {api_host}: {e}") from e


def make_client(host: str | None = None, namespace: str | None = None, **client_args):
    """kfp.Client with its usual arguments; ``host`` falls back to KF_PIPELINES_ENDPOINT, as kfp.Client does."""
    host = host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not host:
        raise ScheduleError("no KFP host: pass --host or set KF_PIPELINES_ENDPOINT")
    args = {k: v for k, v in client_args.items() if v is not None}
    return _call("connecting", host, kfp.Client, host=host, namespace=namespace or "kubeflow", **args), host


def upload_or_reuse(client, host: str, package: str, pipeline_name: str) -> tuple[str, str, str]:
    """(pipeline id, version id, what was done): a new pipeline, a new version of it, or the version already there."""
    version_name = package_version(package)
    pipeline_id = _call("looking up the pipeline", host, client.get_pipeline_id, pipeline_name)
    if pipeline_id is None:
        pipeline = _call("uploading the package", host, client.upload_pipeline, package, pipeline_name=pipeline_name,
                         description=f"longtail-tfx {pipeline_name} ({version_name})")
        pipeline_id, action = pipeline.pipeline_id, "uploaded a new pipeline"
    else:
        versions = _call("listing pipeline versions", host, client.list_pipeline_versions, pipeline_id, page_size=100)
        for v in versions.pipeline_versions or []:
            if v.display_name == version_name:
                return pipeline_id, v.pipeline_version_id, "reused the identical version already uploaded"
        version = _call("uploading a pipeline version", host, client.upload_pipeline_version, package, version_name,
                        pipeline_id=pipeline_id)
        return pipeline_id, version.pipeline_version_id, "uploaded a new version of the pipeline"
    versions = _call("listing pipeline versions", host, client.list_pipeline_versions, pipeline_id, page_size=1,
                     sort_by="created_at desc")
    if not versions.pipeline_versions:
        raise ScheduleError(f"the KFP API at {host} created pipeline {pipeline_id} but lists no version of it")
    return pipeline_id, versions.pipeline_versions[0].pipeline_version_id, action


def schedule(package: str, pipeline_root: str, plan: Schedule, host: str | None = None, namespace: str | None = None,
             **client_args) -> dict:
    """Upload or reuse ``package`` and create the (recurring) run; the ids, JSON-ready."""
    doc = read_package(package)
    pipeline_name = doc["pipelineInfo"]["name"]
    cron = None if plan.once else kfp_cron(plan.cron or "")
    client, host = make_client(host, namespace, **client_args)
    pipeline_id, version_id, action = upload_or_reuse(client, host, package, pipeline_name)
    experiment = _call("creating the experiment", host, client.create_experiment, plan.experiment, namespace=namespace)
    job_name = plan.job_name or f"{pipeline_name}-{'once' if plan.once else 'scheduled'}"
    result = {"host": host, "pipeline_name": pipeline_name, "pipeline_id": pipeline_id, "version_id": version_id,
              "upload": action, "experiment_id": experiment.experiment_id, "pipeline_root": pipeline_root,
              "job_name": job_name}
    if plan.once:
        run = _call("creating the run", host, client.run_pipeline, experiment.experiment_id, job_name,
                    pipeline_id=pipeline_id, version_id=version_id, pipeline_root=pipeline_root,
                    enable_caching=plan.enable_caching)
        return {**result, "run_id": run.run_id}
    recurring = _call("creating the recurring run", host, client.create_recurring_run, experiment.experiment_id, job_name,
                      cron_expression=cron, max_concurrency=plan.max_concurrency, no_catchup=not plan.catchup,
                      pipeline_id=pipeline_id, version_id=version_id, pipeline_root=pipeline_root,
                      enable_caching=plan.enable_caching, enabled=True)
    return {**result, "recurring_run_id": recurring.recurring_run_id, "cron": cron,
            "max_concurrency": plan.max_concurrency, "catchup": plan.catchup}


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, sort_keys=True)

"""`python -m pipeline schedule` drives the real kfp.Client against a local HTTP endpoint that answers the KFP
v2beta1 REST calls the client makes and records them (no KFP API server can run here), so the test sees what
a cluster would receive: the uploaded package, the cron, max concurrency, catch-up and the pipeline root."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from pipeline.kfp_schedule import Schedule, ScheduleError, kfp_cron, package_version, read_package, schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API = "/apis/v2beta1"


class FakeKfpApi:
    """The handful of KFP v2beta1 endpoints kfp.Client's upload / experiment / run calls use, with state."""

    def __init__(self, reject_upload: bool = False):
        self.requests, self.pipelines, self.versions, self.experiments = [], {}, {}, {}
        self.reject_upload = reject_upload
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlparse(self.path)
                record = {"method": method, "path": url.path, "query": parse_qs(url.query), "body": body}
                api.requests.append(record)
                status, answer = api.answer(method, url.path, record["query"], body)
                self._reply(status, answer)

            def do_GET(self):  # noqa: N802 - http.server's names
                self._handle("GET")

            def do_POST(self):  # noqa: N802
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def answer(self, method, path, query, body):
        if path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if path == f"{API}/pipelines" and method == "GET":
            name = _filter_value(query)
            found = [p for p in self.pipelines.values() if name is None or p["display_name"] == name]
            return 200, {"pipelines": found, "total_size": len(found)}
        if path in (f"{API}/pipelines/upload", f"{API}/pipelines/upload_version"):
            if self.reject_upload:
                return 400, {"error": "Invalid pipeline spec: unknown field displayName", "code": 3}
            if path.endswith("/upload"):
                pid = f"pipeline-{len(self.pipelines) + 1}"
                self.pipelines[pid] = {"pipeline_id": pid, "display_name": query["name"][0]}
                self.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": f"{pid}-v1",
                                       "display_name": query["name"][0]}]
                return 200, self.pipelines[pid]
            pid = query["pipelineid"][0]
            version = {"pipeline_id": pid, "pipeline_version_id": f"{pid}-v{len(self.versions[pid]) + 1}",
                       "display_name": query["name"][0]}
            self.versions[pid].append(version)
            return 200, version
        if path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pid = path.split("/")[-2]
            versions = list(reversed(self.versions.get(pid, [])))  # newest first
            return 200, {"pipeline_versions": versions, "total_size": len(versions)}
        if path == f"{API}/experiments" and method == "GET":
            name = _filter_value(query)
            found = [e for e in self.experiments.values() if e["display_name"] == name]
            return 200, {"experiments": found, "total_size": len(found)}
        if path == f"{API}/experiments" and method == "POST":
            eid = f"experiment-{len(self.experiments) + 1}"
            self.experiments[eid] = {**json.loads(body), "experiment_id": eid}
            return 200, self.experiments[eid]
        if path == f"{API}/recurringruns":
            return 200, {**json.loads(body), "recurring_run_id": "recurring-1", "status": "ENABLED"}
        if path == f"{API}/runs":
            return 200, {**json.loads(body), "run_id": "run-1", "state": "PENDING"}
        return 404, {"error": f"no such endpoint in the fake: {method} {path}", "code": 5}

    def posted(self, path):
        return [json.loads(r["body"]) for r in self.requests if r["method"] == "POST" and r["path"] == f"{API}/{path}"]

    def uploads(self):
        return [r for r in self.requests if r["path"].startswith(f"{API}/pipelines/upload")]


def _filter_value(query):
    if "filter" not in query:
        return None
    predicates = json.loads(query["filter"][0]).get("predicates") or []
    return predicates[0].get("stringValue", predicates[0].get("string_value")) if predicates else None


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("kfp") / "taxi.yaml")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "regression",
                           "--pipeline-root", "gs://bucket/taxi", "--output", out],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_recurring_run_uploads_once_then_reuses_the_identical_version(package):
    with FakeKfpApi() as api:
        first = schedule(package, "gs://bucket/taxi-root", Schedule(cron="0 0 3 * * 1"), host=api.host)
        assert first["upload"] == "uploaded a new pipeline" and first["pipeline_id"] == "pipeline-1"
        assert first["recurring_run_id"] == "recurring-1" and first["cron"] == "0 0 3 * * 1"
        (upload,) = api.uploads()
        assert upload["query"]["name"] == ["taxi-regression-fare"]
        assert b"# PIPELINE DEFINITION" in upload["body"] and b"models.regression.run_fn" in upload["body"]
        (recurring,) = api.posted("recurringruns")
        assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
        assert recurring["max_concurrency"] in ("1", 1) and recurring["no_catchup"] is True
        assert recurring["runtime_config"]["pipeline_root"] == "gs://bucket/taxi-root"
        assert recurring["pipeline_version_reference"] == {"pipeline_id": "pipeline-1", "pipeline_version_id": "pipeline-1-v1"}
        assert recurring["experiment_id"] == first["experiment_id"] == "experiment-1"

        again = schedule(package, "gs://bucket/taxi-root", Schedule(cron="0 30 2 * * *"), host=api.host)
        assert again["pipeline_id"] == "pipeline-1" and len(api.uploads()) == 2  # a version named by its content
        assert again["upload"] == "uploaded a new version of the pipeline"  # the first upload named the pipeline only
        third = schedule(package, "gs://bucket/taxi-root", Schedule(cron="0 30 2 * * *"), host=api.host)
        assert third["upload"] == "reused the identical version already uploaded" and len(api.uploads()) == 2
        assert third["version_id"] == again["version_id"] and len(api.experiments) == 1


def test_once_creates_one_run_with_the_pipeline_root(package):
    with FakeKfpApi() as api:
        result = schedule(package, "gs://bucket/once", Schedule(once=True), host=api.host)
        (run,) = api.posted("runs")
        assert result["run_id"] == "run-1" and not api.posted("recurringruns")
        assert run["runtime_config"]["pipeline_root"] == "gs://bucket/once"


def test_cli_schedule_prints_the_ids(package):
    with FakeKfpApi() as api:
        proc = subprocess.run([sys.executable, "-m", "pipeline", "schedule", "--package", package, "--host", api.host,
                               "--pipeline-root", "gs://bucket/cli", "--cron", "0 4 * * 1", "--catchup"],
                              cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
        assert proc.returncode == 0, proc.stderr[-3000:]
        printed = json.loads(proc.stdout[proc.stdout.index("{"):proc.stdout.rindex("}") + 1])  # kfp prints links first
        assert printed["recurring_run_id"] == "recurring-1" and printed["cron"] == "0 0 4 * * 1"  # 5 fields -> 6
        assert proc.stdout.strip().splitlines()[-1] == package
        (recurring,) = api.posted("recurringruns")
        assert recurring["no_catchup"] is False and recurring["runtime_config"]["pipeline_root"] == "gs://bucket/cli"


def test_a_rejected_package_and_an_unreachable_host_are_clear_errors(package, tmp_path):
    with FakeKfpApi(reject_upload=True) as api:
        with pytest.raises(ScheduleError, match=r"uploading the package: the KFP API at .* refused it \(HTTP 400"):
            schedule(package, "gs://b/r", Schedule(), host=api.host)
        port = api.server.server_address[1]
    proc = subprocess.run([sys.executable, "-m", "pipeline", "schedule", "--package", package, "--host",
                           f"http://127.0.0.1:{port}", "--pipeline-root", "gs://b/r"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert proc.returncode == 2 and f"cannot reach the KFP API at http://127.0.0.1:{port}" in proc.stderr, proc.stderr
    wrapper = tmp_path / "pipeline.json"
    wrapper.write_text(json.dumps({"displayName": "x", "pipelineSpec": {}, "runtimeConfig": {}}))
    with pytest.raises(ScheduleError, match="ending in .yaml"):
        read_package(str(wrapper))
    renamed = tmp_path / "wrapper.yaml"
    renamed.write_text(wrapper.read_text())
    with pytest.raises(ScheduleError, match="PipelineJob JSON wrapper"):
        read_package(str(renamed))


def test_cron_and_version_rules(package):
    assert kfp_cron("0 3 * * 1") == "0 0 3 * * 1" and kfp_cron("0 0 3 * * 1") == "0 0 3 * * 1"
    with pytest.raises(ScheduleError, match="has 3 fields"):
        kfp_cron("0 3 *")
    assert package_version(package) == package_version(package) and package_version(package).startswith("sha256-")

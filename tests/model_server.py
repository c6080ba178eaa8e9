"""``python -m pipeline serve`` (KServe's model server) in its own process on a free localhost port, as the serving
tests talk to it: real HTTP, V1 (TF Serving's REST JSON) and V2 (Open Inference Protocol)."""

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Server:
    """``python -m pipeline serve`` in its own process on a free localhost port; stopped (SIGTERM) on exit."""

    def __init__(self, model_dir: str, log_path, *args):
        self.port = free_port()
        self.name = args[args.index("--model-name") + 1] if "--model-name" in args else os.path.basename(model_dir)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--model-dir", model_dir,
                                      "--port", str(self.port), "--poll-seconds", "0.5", *args],
                                     cwd=ROOT, env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while True:
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError(f"server did not become ready:\n{open(log_path).read()[-3000:]}")
            time.sleep(0.5)

    def request(self, method, path, body=None, raw=False):
        data = None if body is None else (body if raw else json.dumps(body).encode())
        req = urllib.request.Request(f"http://localhost:{self.port}{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def get(self, path):
        return self.request("GET", path)

    def post(self, path, body, raw=False):
        return self.request("POST", path, body, raw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}

"""`make bench-serve`: load on `python -m pipeline serve` (KServe) over localhost HTTP.

Starts the server on a push folder (default serving/longtail, what `make run` pushes) in its own process, then for
each (batch, clients) cell keeps ``clients`` concurrent keep-alive connections posting real test images (PNG,
base64 in TF Serving's V1 JSON) for ``--seconds``, after a short warm-up, and reports requests/s, images/s, p50 and
p99 latency and the errors (any non-200 answer or connection failure). One V2 cell checks the Open Inference
Protocol's cost beside V1. The client threads run in this process, beside the server, on the same cores: the
figures are what one machine gives when it is both; a real deployment puts clients elsewhere.
"""

from __future__ import annotations

import argparse
import base64
import glob
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.common import write_result  # noqa: E402
from components.data.prepare import load_manifest  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_pngs(data_dir: str, n: int) -> list[bytes]:
    import tensorflow as tf

    from models.inputs import read_examples

    files = sorted(glob.glob(os.path.join(data_dir, "test", "*.tfrecord*")))
    if not files:
        raise SystemExit(f"error: no test split under {data_dir}; run `make data` (or pass --data-dir)")
    shape = load_manifest(data_dir)["image_shape"]
    return [tf.io.encode_png(img).numpy() for img, _ in read_examples(files, shape).take(n)]


def body(protocol: str, pngs: list[bytes]) -> tuple[str, bytes]:
    b64 = [base64.b64encode(p).decode() for p in pngs]
    if protocol == "v1":
        return "v1", json.dumps({"instances": [{"b64": b} for b in b64]}).encode()
    return "v2", json.dumps({"inputs": [{"name": "images", "shape": [len(b64)], "datatype": "BYTES", "data": b64}]}).encode()


def load(port: int, model: str, protocol: str, payloads: list[bytes], clients: int, seconds: float, warmup: float):
    path = f"/v1/models/{model}:predict" if protocol == "v1" else f"/v2/models/{model}/infer"
    latencies, errors, lock = [], [], threading.Lock()
    start = time.time()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def client(k: int):
        conn = http.client.HTTPConnection("localhost", port, timeout=60)
        i = k
        while True:
            t0 = time.time()
            if t0 >= stop_at:
                break
            try:
                conn.request("POST", path, payloads[i % len(payloads)], {"content-type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException) as e:
                ok, data = False, str(e).encode()
                conn.close()
                conn = http.client.HTTPConnection("localhost", port, timeout=60)
            t1 = time.time()
            if t0 >= measure_from and t1 <= stop_at:
                with lock:
                    (latencies if ok else errors).append(t1 - t0 if ok else data[:200])
            i += clients
        conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.asarray(latencies), errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="serving/longtail")
    p.add_argument("--data-dir", default=None, help="a prepared folder with a test split (default: the default run's)")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--clients", default="1,8")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--out", default="bench/results/serve.md")
    p.add_argument("--note", default="", help="what else the machine was doing, which model this is, ...")
    args = p.parse_args()
    if args.data_dir is None:
        from pipeline.configs import load_config
        from pipeline.tasks import ensure_data

        args.data_dir = ensure_data(load_config("default", {}))
    from models.export import serving_metadata
    from models.serving import newest_version

    version = newest_version(args.model_dir)
    if version is None:
        raise SystemExit(f"error: {args.model_dir} holds no model version; run `make run` first")
    has_meta = serving_metadata(os.path.join(args.model_dir, str(version))) is not None
    batches = [int(b) for b in args.batches.split(",")]
    pngs = test_pngs(args.data_dir, max(batches) * 8)
    port, model = free_port(), os.path.basename(os.path.normpath(args.model_dir))
    log_path = os.path.join(ROOT, "runs", "serve_bench_server.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    log = open(log_path, "w")
    t0 = time.time()
    server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--model-dir", args.model_dir, "--port",
                               str(port)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        while True:
            try:
                c = http.client.HTTPConnection("localhost", port, timeout=5)
                c.request("GET", "/v2/health/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() - t0 > 300:
                raise SystemExit(f"error: the server did not start; see {log_path}")
            time.sleep(0.5)
        ready_s = time.time() - t0
        cells = [("v1", b, c) for b in batches for c in (int(x) for x in args.clients.split(","))]
        cells.append(("v2", max(batches), max(int(x) for x in args.clients.split(","))))
        rows = []
        for protocol, batch, clients in cells:
            payloads = [body(protocol, pngs[i:i + batch])[1] for i in range(0, len(pngs) - batch + 1, batch)]
            lat, errors = load(port, model, protocol, payloads, clients, args.seconds, args.warmup)
            rps = len(lat) / args.seconds
            row = {"protocol": protocol.upper(), "batch": batch, "clients": clients, "requests": len(lat),
                   "requests_per_s": rps, "images_per_s": rps * batch,
                   "p50_ms": float(np.percentile(lat, 50) * 1000) if len(lat) else float("nan"),
                   "p99_ms": float(np.percentile(lat, 99) * 1000) if len(lat) else float("nan"),
                   "errors": len(errors), "first_error": errors[0].decode(errors="replace") if errors else ""}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    load_avg = os.getloadavg()
    table = ("| protocol | batch | clients | requests | requests/s | images/s | p50 ms | p99 ms | errors |\n"
             "|---|---|---|---|---|---|---|---|---|\n")
    table += "".join(f"| {r['protocol']} | {r['batch']} | {r['clients']} | {r['requests']} | {r['requests_per_s']:.1f} | "
                     f"{r['images_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |\n" for r in rows)
    description = (f"Model: `{args.model_dir}` version {version} ({'with' if has_meta else 'without'} serving metadata), "
                   f"served by `python -m pipeline serve` (KServe {kserve_version()}, one uvicorn worker); ready "
                   f"{ready_s:.1f} s after start. Each cell: {args.warmup:.0f} s warm-up, then {args.seconds:.0f} s "
                   "measured, clients on keep-alive connections posting distinct real test images (28x28 PNG, base64 "
                   "JSON). Clients run in the bench process on the same cores as the server. Load average after the "
                   f"run: {load_avg[0]:.2f} / {load_avg[1]:.2f} / {load_avg[2]:.2f} (1/5/15 min). {args.note}")
    write_result(args.out, "Serving load: `python -m pipeline serve` over localhost HTTP (`make bench-serve`)",
                 description, table)


def kserve_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("kserve")


if __name__ == "__main__":
    main()

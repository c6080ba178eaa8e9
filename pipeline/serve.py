"""``python -m pipeline serve``: the pushed model behind KServe's Python model server (Kubeflow's serving layer).

One KServe predictor named after the push folder (``serving/<model>`` -> ``<model>``) serves the folder's newest
version and swaps to a newer one when the Pusher writes it, without a restart (a background poll; a version that
does not load yet, e.g. one still being copied, is retried at the next poll and the old one goes on serving).

Endpoints (KServe's own; what each answers is models/serving.py):
  V1, TF Serving's REST format   POST /v1/models/<model>:predict   {"instances": [...]} or {"inputs": ...}
  V2, Open Inference Protocol    POST /v2/models/<model>/infer     {"inputs": [{"name", "shape", "datatype", "data"}]}
  health                         GET  /v2/health/live, /v2/health/ready, /v1/models/<model>, /v2/models/<model>/ready
  metadata                       GET  /v2/models/<model> (inputs and outputs with their types)
An image is base64 in JSON (``{"b64": "..."}`` in V1, a BYTES element in V2). A request the model cannot answer
gets 400 with what is wrong and how many instances; a body over ``--max-request-mb`` gets 413 before it is parsed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import sys
import threading
import time
import uuid

from components.host_paths import with_path_hint
from models.serving import RequestError, ServedVersion, newest_version

log = logging.getLogger("longtail.serve")

DEFAULT_MAX_REQUEST_MB = 4.0  # as gRPC's default message limit; a batch of 32 224x224 JPEGs is about 1 MB


def _kserve():
    """kserve parses sys.argv when imported (kserve.model_server reads its own flags at import time); ours are not
    its flags, so it is imported with an empty command line."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        from kserve import model_server
        from kserve.errors import InvalidInput, ModelMissingError
        from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
    finally:
        sys.argv = argv
    return kserve, model_server, InvalidInput, ModelMissingError, InferOutput, InferRequest, InferResponse


def _b64(value, where: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and set(value) == {"b64"}:
        value = value["b64"]
    if not isinstance(value, str):
        raise RequestError(f"{where}: expected base64 image bytes ({{\"b64\": \"...\"}}), got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(f"{where}: not valid base64") from None


def v1_images(payload: dict) -> list[bytes]:
    """TF Serving's two request shapes for a one-input (``images``) signature: rows ``{"instances": [{"b64": ...}]}``
    (or ``[{"images": {"b64": ...}}]``) and columns ``{"inputs": [{"b64": ...}]}`` (or ``{"inputs": {"images": [...]}}``)."""
    if "instances" in payload:
        items = payload["instances"]
    elif "inputs" in payload:
        items = payload["inputs"]
        if isinstance(items, dict):
            items = items.get("images", items)
    else:
        raise RequestError('the request needs "instances" (rows) or "inputs" (columns)')
    if not isinstance(items, list):
        raise RequestError('"instances" must be a list')
    out = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and "images" in item:
            item = item["images"]
        out.append(_b64(item, f"instance {i}"))
    return out


def v1_features(payload: dict) -> dict:
    """Rows ``{"instances": [{"trip_miles": 1.2, ...}]}`` or columns ``{"inputs": {"trip_miles": [1.2], ...}}``."""
    if "instances" in payload:
        if not isinstance(payload["instances"], list):
            raise RequestError('"instances" must be a list')
        return {"rows": payload["instances"]}
    if "inputs" in payload and isinstance(payload["inputs"], dict):
        return {"columns": payload["inputs"]}
    raise RequestError('the request needs "instances" (rows of named features) or "inputs" (a column per feature)')


def v1_answer(served: ServedVersion, payload) -> dict:
    if not isinstance(payload, dict):
        raise RequestError("the request body must be a JSON object")
    if served.task == "classification":
        out = served.predict_images(v1_images(payload))
        return {"predictions": [{"class_id": int(c), "class_name": str(n), "probabilities": p.tolist()}
                                for c, n, p in zip(out["class_id"], out["class_name"], out["probabilities"])]}
    target = served.metadata["target"]
    values = served.predict_features(**v1_features(payload))[target]
    return {"predictions": [{target: float(v)} for v in values]}


def make_model(model_dir: str, poll_seconds: float, name: str | None = None):
    """The KServe predictor of a push folder (a ``kserve.Model``; defined here so kserve loads only to serve)."""
    kserve, _, InvalidInput, ModelMissingError, InferOutput, InferRequest, InferResponse = _kserve()

    class PushedModel(kserve.Model):
        def __init__(self):
            super().__init__(name or os.path.basename(os.path.normpath(model_dir)))
            self.model_dir = model_dir
            self.served: ServedVersion | None = None
            self._stop = threading.Event()
            self._failed: dict[int, str] = {}

        def load(self) -> bool:
            version = newest_version(self.model_dir)
            if version is None:
                raise ModelMissingError(self.model_dir)
            self.served = ServedVersion(self.model_dir, version)
            log.info("serving %s version %d from %s", self.name, version, self.served.path)
            self.ready = True
            threading.Thread(target=self._watch, name="version-watch", daemon=True).start()
            return self.ready

        def _watch(self) -> None:
            while not self._stop.wait(poll_seconds):
                version = newest_version(self.model_dir)
                if version is None or version <= self.served.version:
                    continue
                try:
                    loaded = ServedVersion(self.model_dir, version)
                except Exception as e:  # noqa: BLE001 - a version still being written: retried at the next poll
                    if self._failed.get(version) != str(e):
                        log.warning("version %d of %s does not load (yet): %s", version, self.name, e)
                        self._failed[version] = str(e)
                    continue
                old, self.served = self.served, loaded
                log.info("now serving %s version %d (was %d)", self.name, version, old.version)

        def stop(self):
            self._stop.set()

        def get_input_types(self):
            s = self.served
            if s.task == "classification":
                return [{"name": "images", "datatype": "BYTES", "shape": [-1]}]
            return [{"name": k, "datatype": _v2_type(v.dtype.name), "shape": [-1]} for k, v in s.input_specs.items()]

        def get_output_types(self):
            s = self.served
            if s.task == "classification":
                c = len(s.metadata["class_names"])
                return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, c]},
                        {"name": "class_id", "datatype": "INT64", "shape": [-1]},
                        {"name": "class_name", "datatype": "BYTES", "shape": [-1]}]
            return [{"name": s.metadata["target"], "datatype": "FP32", "shape": [-1]}]

        async def predict(self, payload, headers=None, response_headers=None):
            served = self.served  # one version for the whole request, even if a newer one arrives meanwhile
            v2 = isinstance(payload, InferRequest)
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    None, self._v2 if v2 else v1_answer, served, payload)
            except RequestError as e:
                raise InvalidInput(str(e)) from None

        def _v2(self, served: ServedVersion, request) -> object:
            inputs = {i.name: i for i in request.inputs}
            if served.task == "classification":
                if "images" not in inputs:
                    raise RequestError(f"input 'images' (BYTES) is missing; the request has {sorted(inputs)}")
                data = inputs["images"].as_numpy().reshape(-1).tolist()
                out = served.predict_images([_b64(v, f"images[{i}]") for i, v in enumerate(data)])
                outputs = [_output(InferOutput, "probabilities", out["probabilities"], "FP32"),
                           _output(InferOutput, "class_id", out["class_id"], "INT64"),
                           _output(InferOutput, "class_name", out["class_name"], "BYTES")]
            else:
                columns = {k: [v.decode() if isinstance(v, bytes) else v for v in i.as_numpy().reshape(-1).tolist()]
                           for k, i in inputs.items()}
                target = served.metadata["target"]
                outputs = [_output(InferOutput, target, served.predict_features(columns=columns)[target], "FP32")]
            return InferResponse(response_id=request.id or str(uuid.uuid4()), model_name=self.name,
                                 model_version=str(served.version), infer_outputs=outputs)

    return PushedModel()


def _v2_type(dtype: str) -> str:
    return {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "string": "BYTES"}[dtype]


def _output(InferOutput, name: str, array, datatype: str):
    data = [str(v) for v in array.reshape(-1)] if datatype == "BYTES" else array.reshape(-1).tolist()
    return InferOutput(name=name, shape=list(array.shape), datatype=datatype, data=data)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 and never reaches the app (neither KServe nor
    uvicorn bounds a body); at most ``limit`` bytes of it are held."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:  # read the body here (the app buffers it whole anyway); past the limit, count and discard the rest
            message = await receive()  # (a client still sending when refused would see a broken pipe, not the 413)
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size <= self.limit:
                chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if size > self.limit:
            return await self._refuse(send, size)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _refuse(self, send, size: int):
        content = json.dumps({"error": f"request body of {size} bytes is over the limit of {self.limit} bytes "
                                       "(python -m pipeline serve --max-request-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})


def serve(model_dir: str, port: int = 8080, poll_seconds: float = 5.0,
          max_request_mb: float = DEFAULT_MAX_REQUEST_MB, name: str | None = None) -> None:
    """Load the newest version under ``model_dir`` and serve it as ``name`` (default: the folder's name) until
    SIGINT/SIGTERM (blocking)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if newest_version(model_dir) is None:
        raise SystemExit(with_path_hint(f"error: {model_dir} holds no model version (<version>/saved_model.pb); run the "
                                        "pipeline first", model_dir))
    kserve, model_server, *_ = _kserve()
    model_server.app.add_middleware(BodyLimit, limit=int(max_request_mb * 1024 * 1024))
    model = make_model(model_dir, poll_seconds, name)
    model.load()
    t0 = time.time()
    kserve.ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False).start([model])
    log.info("server stopped after %.0f s", time.time() - t0)
    model.stop()

"""The scoring service's FastAPI application: Open Inference Protocol v2, plain JSON v1, metrics.

Endpoints (every one but health and the docs needs ``Authorization: Bearer
$PIPELINES_SCORING_TOKEN`` when that variable is set):

* ``GET /v2/health/live``, ``/v2/health/ready``, ``GET /v2`` — server liveness/readiness/metadata;
* ``GET /v2/models/{vertical}[/versions/{v}]``, ``…/ready``, ``POST …/infer`` — the KServe/Triton
  REST protocol: one input tensor per feature (named as in the spec; BYTES for categoricals),
  outputs ``probability`` (FP64) and ``label`` (INT64);
* ``POST /v1/{vertical}/predict`` ``{"records": [{feature: value}]}`` → probability, label at the
  model's decision threshold and the version that answered; ``GET /v1/models``,
  ``/v1/{vertical}/metadata``, ``/v1/{vertical}/card``;
* ``GET /metrics`` (Prometheus), ``/docs`` (OpenAPI).

Bad requests are 4xx with ``{"error", "field", "reason"}``; request logs carry
the route, vertical, status, rows, latency and version, never feature values.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.scoring.runtime import FORMATS, LoadedModel, ModelFormat
from pipelines.scoring.store import ModelStore
from pipelines.scoring.validation import RequestError, records_frame, tensors_frame

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("pipelines.scoring.access")

TOKEN_ENV = "PIPELINES_SCORING_TOKEN"
#: Paths anyone may call: probes and the docs (which hold no data).
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
SERVER_NAME = "pipelines-scoring"
BINARY_HEADER = "inference-header-content-length"
#: Requests of up to this many rows are scored on the event loop (`_score`).
INLINE_ROWS = 64


@dataclass(frozen=True)
class ScoringConfig:
    """The service's settings (``PIPELINES_SCORING_*`` environment variables)."""

    bucket_url: str
    cache_dir: Path
    model_format: ModelFormat = "onnx"
    #: Seconds between pointer checks (a flip is served within this plus the load time).
    poll_interval: float = 2.0
    token: str | None = None
    max_rows: int = 10_000
    max_body_bytes: int = 8 * 1024 * 1024
    verticals: list[str] | None = None
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> ScoringConfig:
        """Settings from the environment; the bucket is the pipeline's (``PIPELINES_BUCKET_URL``)."""
        from pipelines.config import Settings
        from pipelines.errors import SpecError

        settings = Settings.from_env()
        fmt = os.environ.get("PIPELINES_SCORING_FORMAT", "onnx")
        if fmt not in FORMATS:
            raise SpecError(f"PIPELINES_SCORING_FORMAT={fmt!r} is not one of {', '.join(FORMATS)}")
        verticals = os.environ.get("PIPELINES_SCORING_VERTICALS", "").strip()
        return cls(
            bucket_url=settings.bucket_url,
            cache_dir=Path(os.environ.get("PIPELINES_SCORING_CACHE", settings.home / "cache" / "scoring")),
            model_format=fmt,  # checked against FORMATS above
            poll_interval=float(os.environ.get("PIPELINES_SCORING_POLL_S", "2")),
            token=_token(),
            max_rows=int(os.environ.get("PIPELINES_SCORING_MAX_ROWS", "10000")),
            max_body_bytes=int(os.environ.get("PIPELINES_SCORING_MAX_BODY_BYTES", str(8 * 1024 * 1024))),
            verticals=[v.strip() for v in verticals.split(",") if v.strip()] or None,
        )


def _token() -> str | None:
    """The bearer token: ``PIPELINES_SCORING_TOKEN``, or the file ``PIPELINES_SCORING_TOKEN_FILE`` names (a secret)."""
    from pipelines.errors import SpecError

    path = os.environ.get(f"{TOKEN_ENV}_FILE")
    if path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise SpecError(f"{TOKEN_ENV}_FILE={path} cannot be read ({exc}); mount the secret there") from exc
        if not token:
            raise SpecError(f"{TOKEN_ENV}_FILE={path} is empty; refusing to serve without the intended token")
        return token
    return os.environ.get(TOKEN_ENV) or None


class _Metrics:
    """Prometheus series of one app (its own registry, so two apps in a process never clash)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "scoring_requests_total", "Requests by route and status", ["route", "status"], registry=self.registry
        )
        self.errors = Counter(
            "scoring_errors_total", "4xx and 5xx answers by route", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "scoring_request_seconds",
            "Request latency",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.rows = Counter("scoring_rows_total", "Rows scored", ["vertical", "version"], registry=self.registry)
        self.model = Gauge(
            "scoring_model_info",
            "1 for the version each vertical serves",
            ["vertical", "version", "format"],
            registry=self.registry,
        )
        self.reload_failures = Counter(
            "scoring_reload_failures_total", "Production versions refused", ["vertical"], registry=self.registry
        )

    def swapped(self, vertical: str, old: LoadedModel | None, new: LoadedModel) -> None:
        if old is not None:
            try:
                self.model.remove(vertical, old.version, old.model_format)
            except KeyError:
                pass  # never exported (swap before the first scrape): nothing to remove
        self.model.labels(vertical, new.version, new.model_format).set(1)


def _error(exc: RequestError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def create_app(config: ScoringConfig) -> FastAPI:
    """The application; the store starts polling when the app starts (lifespan)."""
    metrics = _Metrics()
    store = ModelStore(
        config.bucket_url,
        model_format=config.model_format,
        cache_dir=config.cache_dir,
        verticals=config.verticals,
        threads=config.threads,
        on_change=metrics.swapped,
        on_failure=lambda vertical, _why: metrics.reload_failures.labels(vertical).inc(),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if config.token is None:
            logging.getLogger(__name__).warning("%s is not set: the scoring API is open to anyone", TOKEN_ENV)
        await run_in_threadpool(store.start, config.poll_interval)
        yield
        await run_in_threadpool(store.stop)

    app = FastAPI(
        title="Nightly retraining — scoring API",
        description="Scores rows with each vertical's production model (hot-reloaded on promotion/rollback).",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.config = config

    app.add_middleware(_Guard, token=config.token, metrics=metrics)

    # -- health and server metadata ----------------------------------------------

    @app.get("/v2/health/live", tags=["v2"])
    def live() -> dict[str, bool]:
        """Liveness: the process answers."""
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    def ready() -> JSONResponse:
        """Readiness: the first refresh finished and at least one model is loaded."""
        ok = store.refreshed.is_set() and bool(store.models())
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    @app.get("/v2", tags=["v2"])
    def server_metadata() -> dict[str, Any]:
        """Server metadata (Open Inference Protocol)."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            own = version("nightly-retrain")
        except PackageNotFoundError:
            own = "unknown"
        return {"name": SERVER_NAME, "version": own, "extensions": ["binary_tensor_data"]}

    # -- v2 models ------------------------------------------------------------------

    def model_or_error(vertical: str, model_version: str | None) -> LoadedModel:
        model = store.get(vertical)
        if model is None:
            problem = store.problems.get(vertical)
            detail = f" (its production version was refused: {problem['problem']})" if problem else ""
            raise RequestError(404, "vertical", f"no production model is served for {vertical!r}{detail}")
        if model_version is not None and model_version != model.version:
            raise RequestError(
                404, "model_version", f"{vertical} serves version {model.version}, not {model_version!r}"
            )
        return model

    def v2_metadata(model: LoadedModel) -> dict[str, Any]:
        inputs = [{"name": n, "datatype": "FP64", "shape": [-1]} for n in model.numeric]
        inputs += [{"name": n, "datatype": "BYTES", "shape": [-1]} for n in model.categorical]
        return {
            "name": model.vertical,
            "versions": [model.version],
            "platform": "pytorch_torchscript" if model.model_format == "torch" else "onnxruntime_onnx",
            "inputs": inputs,
            "outputs": [
                {"name": "probability", "datatype": "FP64", "shape": [-1]},
                {"name": "label", "datatype": "INT64", "shape": [-1]},
            ],
            "parameters": {"decision_threshold": model.decision_threshold, "format": model.model_format},
        }

    @app.get("/v2/models/{vertical}", tags=["v2"])
    @app.get("/v2/models/{vertical}/versions/{model_version}", tags=["v2"])
    def model_metadata(vertical: str, model_version: str | None = None) -> Response:
        """Model metadata: inputs (one per feature), outputs, the version served."""
        try:
            return JSONResponse(v2_metadata(model_or_error(vertical, model_version)))
        except RequestError as exc:
            return _error(exc)

    @app.get("/v2/models/{vertical}/ready", tags=["v2"])
    @app.get("/v2/models/{vertical}/versions/{model_version}/ready", tags=["v2"])
    def model_ready(vertical: str, model_version: str | None = None) -> Response:
        """200 when the model (version) is loaded and serving."""
        try:
            model = model_or_error(vertical, model_version)
        except RequestError as exc:
            return _error(exc)
        return JSONResponse({"name": vertical, "version": model.version, "ready": True})

    @app.post("/v2/models/{vertical}/infer", tags=["v2"])
    @app.post("/v2/models/{vertical}/versions/{model_version}/infer", tags=["v2"])
    async def infer(vertical: str, request: Request, model_version: str | None = None) -> Response:
        """Inference (Open Inference Protocol); JSON or binary tensor data."""
        try:
            model = model_or_error(vertical, model_version)
            raw = await _read_body(request, config.max_body_bytes)
            body, binary = _split_binary(raw, request.headers.get(BINARY_HEADER))
            prob = await _score(model, _infer_frame(model, body, binary, config.max_rows))
            result = _infer_answer(model, body, prob)
        except RequestError as exc:
            if exc.status == 422:
                exc = RequestError(400, exc.field, exc.reason)  # the protocol answers 400
            return _error(exc)
        request.scope["scoring_rows"] = result["outputs"][0]["shape"][0]
        request.scope["scoring_version"] = model.version
        metrics.rows.labels(vertical, model.version).inc(result["outputs"][0]["shape"][0])
        return JSONResponse(result)

    # -- v1 plain JSON ------------------------------------------------------------------

    @app.post(
        "/v1/{vertical}/predict",
        tags=["v1"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["records"],
                            "properties": {"records": {"type": "array", "items": {"type": "object"}}},
                        }
                    }
                },
            }
        },
    )
    async def predict(vertical: str, request: Request) -> Response:
        """Score records keyed by the spec's feature names: probability, label, model version."""
        try:
            model = model_or_error(vertical, None)
            body = _parse_json(await _read_body(request, config.max_body_bytes))
            frame = records_frame(body, model, max_rows=config.max_rows)
            prob = await _score(model, frame)
        except RequestError as exc:
            return _error(exc)
        request.scope["scoring_rows"] = len(prob)
        request.scope["scoring_version"] = model.version
        metrics.rows.labels(vertical, model.version).inc(len(prob))
        labels = (prob >= model.decision_threshold).astype(np.int64)
        return JSONResponse(
            {
                "vertical": vertical,
                "model_version": model.version,
                "format": model.model_format,
                "decision_threshold": model.decision_threshold,
                "predictions": [
                    {"probability": float(p), "label": int(y)}
                    for p, y in zip(prob.tolist(), labels.tolist(), strict=True)
                ],
            }
        )

    @app.get("/v1/models", tags=["v1"])
    def list_models() -> dict[str, Any]:
        """Every vertical served, its version and format, and any refused version."""
        return {
            "models": {v: {"version": m.version, "format": m.model_format} for v, m in sorted(store.models().items())},
            "refused": {v: p for v, p in sorted(store.problems.items())},
        }

    @app.get("/v1/{vertical}/metadata", tags=["v1"])
    def metadata(vertical: str) -> Response:
        """The version served, features (with categories seen in training), threshold and metrics."""
        try:
            model = model_or_error(vertical, None)
        except RequestError as exc:
            return _error(exc)
        return JSONResponse(
            {
                "vertical": vertical,
                "model_version": model.version,
                "format": model.model_format,
                "decision_threshold": model.decision_threshold,
                "features": {
                    "numeric": list(model.numeric),
                    "categorical": {name: list(model.vocabularies[name]) for name in model.categorical},
                },
                "label": model.manifest.get("label"),
                "metrics": model.read_json("metrics.json"),
            }
        )

    @app.get("/v1/{vertical}/card", tags=["v1"])
    def card(vertical: str) -> Response:
        """The model card (``model_card.json``) of the version served."""
        try:
            model = model_or_error(vertical, None)
        except RequestError as exc:
            return _error(exc)
        return JSONResponse(model.read_json("model_card.json") or {"model_version": model.version})

    @app.get("/metrics", tags=["operations"])
    def prometheus() -> Response:
        """Prometheus metrics: requests, errors, latency, rows, the version per vertical."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


class _Guard:
    """Auth, metrics and the access log around every request (plain ASGI: no per-request task or copy)."""

    def __init__(self, app: ASGIApp, *, token: str | None, metrics: _Metrics) -> None:
        self.app = app
        self.token = token
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        if self.token is not None and scope["path"] not in OPEN_PATHS and not _authorised(scope, self.token):
            denied = JSONResponse(
                {"error": "missing or wrong bearer token", "field": "Authorization", "reason": "unauthenticated"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await denied(scope, receive, tracking_send)
        else:
            await self.app(scope, receive, tracking_send)
        # The router records the matched route in the scope: label by its template, never the raw path.
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        if status >= 400:
            self.metrics.errors.labels(route, str(status)).inc()
        # No bodies, no feature values: route template, vertical, outcome, size and timing only.
        log.info(
            "%s %s vertical=%s status=%s rows=%s version=%s ms=%.2f",
            scope["method"],
            route,
            (scope.get("path_params") or {}).get("vertical", "-") if route != "unmatched" else "-",
            status,
            scope.get("scoring_rows", "-"),
            scope.get("scoring_version", "-"),
            elapsed * 1000,
        )


def _authorised(scope: Scope, token: str) -> bool:
    given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
    scheme, _, value = given.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), token.encode())


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body", f"{declared} bytes exceed the limit of {limit} bytes; split the batch")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body", f"body exceeds the limit of {limit} bytes; split the batch")
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "body", f"malformed JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "body", "malformed JSON: nested too deeply") from None


def _split_binary(raw: bytes, header: str | None) -> tuple[Any, dict[int, bytes] | None]:
    """The JSON part and, with the binary tensor extension, the raw bytes after it."""
    if header is None:
        return _parse_json(raw), None
    if not header.isdigit() or int(header) > len(raw):
        raise RequestError(400, "Inference-Header-Content-Length", f"{header!r} is not a valid JSON header length")
    length = int(header)
    return _parse_json(raw[:length]), {0: raw[length:]}


async def _score(model: LoadedModel, frame: pd.DataFrame) -> np.ndarray:
    """Probabilities for ``frame``: a few rows on the event loop, bigger batches in the thread pool.

    Scoring a few rows takes well under a millisecond; handing them to a pool thread
    and back (the GIL passed across twice) cost more than that, and with two clients
    at once it tripled the one-row p99 (benchmarks/serving.py).  A big batch still
    goes to the pool, so the loop keeps answering other requests meanwhile.
    """
    if len(frame) <= INLINE_ROWS:
        return model.predict_proba(frame)
    return await run_in_threadpool(model.predict_proba, frame)


def _infer_frame(model: LoadedModel, body: Any, binary: dict[int, bytes] | None, max_rows: int) -> pd.DataFrame:
    """The raw-feature rows of a v2 inference body (JSON tensors, or binary ones after the JSON)."""
    if not isinstance(body, dict):
        raise RequestError(400, "body", "expected a JSON object with 'inputs'")
    inputs = body.get("inputs")
    by_name: dict[str, bytes] | None = None
    if binary is not None and isinstance(inputs, list):
        # Binary inputs follow the JSON header in input order, each binary_data_size bytes long.
        blob, offset, by_name = binary[0], 0, {}
        for tensor in inputs:
            size = (
                ((tensor or {}).get("parameters") or {}).get("binary_data_size") if isinstance(tensor, dict) else None
            )
            if size is None:
                continue
            if not isinstance(size, int) or size < 0 or offset + size > len(blob):
                raise RequestError(400, str(tensor.get("name")), "binary_data_size runs past the end of the body")
            by_name[str(tensor.get("name"))] = blob[offset : offset + size]
            offset += size
    return tensors_frame(inputs, model, max_rows=max_rows, binary=by_name)


def _infer_answer(model: LoadedModel, body: dict[str, Any], prob: np.ndarray) -> dict[str, Any]:
    """The v2 response for ``prob``, with only the outputs the body asked for."""
    labels = (prob >= model.decision_threshold).astype(np.int64)
    outputs = [
        {"name": "probability", "datatype": "FP64", "shape": [len(prob)], "data": prob.tolist()},
        {"name": "label", "datatype": "INT64", "shape": [len(prob)], "data": labels.tolist()},
    ]
    requested = body.get("outputs")
    if requested is not None:
        if not isinstance(requested, list):
            raise RequestError(400, "outputs", "expected a list of {'name': ...}")
        names = [o.get("name") if isinstance(o, dict) else None for o in requested]
        unknown = [n for n in names if n not in ("probability", "label")]
        if unknown:
            raise RequestError(400, "outputs", f"unknown output {unknown[0]!r}; this model has probability and label")
        outputs = [o for o in outputs if o["name"] in names]
    answer: dict[str, Any] = {"model_name": model.vertical, "model_version": model.version, "outputs": outputs}
    if isinstance(body.get("id"), str):
        answer["id"] = body["id"]
    return answer


def serve(host: str = "127.0.0.1", port: int = 8090, config: ScoringConfig | None = None) -> None:
    """Run the service with uvicorn until interrupted (``python -m pipelines serve``)."""
    import uvicorn

    app = create_app(config or ScoringConfig.from_env())
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)

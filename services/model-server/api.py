"""The HTTP API of the model server (Starlette): /predict, /healthz, /readyz, /metrics, /version."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import tweakline
from tweakline.model_server.inputs import InputError, jsonable, rows_to_matrix
from tweakline.model_server.model import ModelSlot

MAX_BODY_BYTES = 8 * 1024 * 1024


class ServerMetrics:
    """Prometheus metrics of one server (its own registry, so tests can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tweakline_model_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tweakline_model_request_seconds",
            "Time to answer /predict.",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.rows = Counter("tweakline_model_predicted_rows", "Rows predicted.", registry=self.registry)
        self.revision = Gauge("tweakline_model_revision", "Release revision being served.", registry=self.registry)
        self.swaps = Counter("tweakline_model_swaps", "Times a new revision was swapped in.", registry=self.registry)
        self.load_failures = Counter(
            "tweakline_model_load_failures",
            "Revisions that could not be loaded (kept the old one).",
            registry=self.registry,
        )


def _error(status: int, field: str | None, message: str) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


def create_http_app(slot: ModelSlot, metrics: ServerMetrics, release: str) -> Starlette:
    """The ASGI app serving whatever model ``slot`` holds at the time of each request."""

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        response = await _predict(request)
        metrics.requests.labels("predict", str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _predict(request: Request) -> Response:
        loaded = slot.current  # taken once: a swap during this request does not affect it
        if loaded is None:
            return _error(503, None, f"no model loaded yet for release {release}")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return _error(413, None, f"body of {len(raw)} bytes exceeds {MAX_BODY_BYTES}")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, None, f"body is not valid JSON: {exc}")
        try:
            X = rows_to_matrix(body, loaded.features)
        except InputError as exc:
            return _error(422, exc.field, str(exc))
        predictions = await run_in_threadpool(loaded.model.predict, X)
        metrics.rows.inc(len(X))
        return JSONResponse({"release": loaded.release, "revision": loaded.revision, "predictions": jsonable(predictions)})

    async def healthz(_: Request) -> Response:
        metrics.requests.labels("healthz", "200").inc()
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        loaded = slot.current
        if loaded is None:
            reason = slot.last_error or "no model loaded yet"
            metrics.requests.labels("readyz", "503").inc()
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
        metrics.requests.labels("readyz", "200").inc()
        return JSONResponse({"ready": True, "revision": loaded.revision})

    async def version(_: Request) -> Response:
        loaded = slot.current
        body: dict[str, Any] = {"release": release, "revision": None, "tweakline": tweakline.__version__}
        if loaded is not None:
            body.update(loaded.version())
        if slot.last_error:
            body["last_error"] = slot.last_error
        return JSONResponse(body, status_code=200 if loaded is not None else 503)

    async def prometheus(_: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/version", version, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )

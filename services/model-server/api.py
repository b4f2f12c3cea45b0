"""The HTTP API of the model server (Starlette): /predict, /healthz, /readyz, /metrics, /version."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import tweakline
from tweakline.model_server.inputs import InputError, jsonable, rows_to_matrix
from tweakline.model_server.model import ModelSlot
from tweakline.model_server.stats import LiveFigures
from tweakline.proto.messages import PROBE_HEADER
from tweakline.validation.json_input import JsonLimitError, parse_json

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
# After the limit, the rest of a body is read and dropped (not kept) up to this much, so the
# client reads its 413 instead of a reset connection; beyond it the connection is closed.
MAX_DRAIN_BYTES = 4 * 1024 * 1024
_ENDPOINTS = {"/predict": "predict", "/healthz": "healthz", "/readyz": "readyz", "/version": "version", "/metrics": "metrics"}


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


def _not_counted(revision: int, *, ok: bool, seconds: float, predictions: list[Any] | None = None) -> None:
    """What a probe request records in the live figures: nothing."""


def _error(status: int, field: str | None, message: str) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


class _TooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` (Content-Length, or while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_DRAIN_BYTES:
            break
        if size <= limit:
            chunks.append(chunk)
        else:
            chunks.clear()  # past the limit: drop, never keep, what follows
    if size > limit:
        raise _TooLarge(size)
    return b"".join(chunks)


def _parse(raw: bytes, features: tuple[str, ...], text: frozenset[str] = frozenset()) -> Any:
    """The feature matrix of a body (run in a worker thread: a large body takes a while)."""
    return rows_to_matrix(parse_json(raw), features, text)


class StatusCounter:
    """ASGI middleware counting every HTTP response by endpoint and status code, 5xx included.

    Unknown paths share one label (``other``), so a scan of random paths cannot grow the metric.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = _ENDPOINTS.get(scope.get("path", ""), "other")
        status: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not status:  # nothing was answered: the client sees a 500 from the server
                self.metrics.requests.labels(endpoint, "500").inc()
            raise


def create_http_app(
    slot: ModelSlot,
    metrics: ServerMetrics,
    release: str,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    figures: LiveFigures | None = None,
) -> ASGIApp:
    """The ASGI app serving whatever model ``slot`` holds at the time of each request.

    Every status it answers is counted in ``tweakline_model_requests_total{endpoint,code}``;
    ``figures`` (if given) gets each answer the model gave or failed, per revision, for the
    post-promotion watch (input errors are the client's, not the model's, and are not counted).
    """
    live = figures if figures is not None else LiveFigures(release)

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await _predict(request, started)
        except Exception as exc:  # a bug, not the client's fault: a JSON 500, counted, logged
            log.exception("predict failed")
            response = _error(500, None, f"internal error: {type(exc).__name__}")
        metrics.latency.observe(time.perf_counter() - started)
        return response

    async def _predict(request: Request, started: float) -> Response:
        loaded = slot.current  # taken once: a swap during this request does not affect it
        live.current = None if loaded is None else loaded.revision
        # The deployer's own checks are answered but not counted as the traffic's live figures.
        record = live.record if PROBE_HEADER not in request.headers else _not_counted
        if loaded is None:
            return _error(503, None, f"no model loaded yet for release {release}")
        try:
            raw = await _bounded_body(request, max_body_bytes)
        except _TooLarge as exc:
            return _error(413, None, f"body of at least {exc.size} bytes exceeds {max_body_bytes}")
        try:
            X = await run_in_threadpool(_parse, raw, loaded.features, loaded.text_features)
        except JsonLimitError as exc:
            return _error(400, None, str(exc))
        except InputError as exc:
            return _error(422, exc.field, str(exc))
        try:
            predictions = await run_in_threadpool(loaded.model.predict, X)
            answer = jsonable(predictions)
        except (ValueError, TypeError, FloatingPointError) as exc:  # the estimator refused these values
            record(loaded.revision, ok=False, seconds=time.perf_counter() - started)
            return _error(422, "rows", f"the model cannot predict these rows: {str(exc)[:200]}")
        except Exception:
            record(loaded.revision, ok=False, seconds=time.perf_counter() - started)
            raise
        metrics.rows.inc(len(X))
        record(loaded.revision, ok=True, seconds=time.perf_counter() - started, predictions=answer)
        return JSONResponse({"release": loaded.release, "revision": loaded.revision, "predictions": answer})

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        loaded = slot.current
        if loaded is None:
            reason = slot.last_error or "no model loaded yet"
            return JSONResponse({"ready": False, "reason": reason}, status_code=503)
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

    app = Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/version", version, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ]
    )
    return StatusCounter(app, metrics)

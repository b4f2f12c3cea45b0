"""The HTTP endpoints of a service process: ``/healthz`` (alive), ``/readyz`` (connected), ``/metrics``.

One small Starlette app served by uvicorn inside the service's event loop — the same HTTP stack
as the webhook and the model server. Off locally; the Helm chart sets ``TWEAKLINE_HEALTH_PORT``
for its probes. ``/metrics`` serves the process's Prometheus registry (what the OpenTelemetry
Prometheus reader fills), so one port can carry probes and metrics. ``/healthz`` fails once the
process's bus connection is closed for good (:class:`tweakline.runtime.service.ConnectionWatch`):
such a process must be restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside a service's event loop, without its own signal handlers: the service owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def health_app(ready: Callable[[], bool], alive: Callable[[], bool] | None = None) -> Starlette:
    """The probe and metrics endpoints: ``ready()`` decides ``/readyz`` and ``alive()`` (when given)
    ``/healthz``; an exception counts as false."""

    async def healthz(_: Request) -> Response:
        ok = alive is None or _safe(alive)
        return PlainTextResponse("ok\n" if ok else "not live: the bus connection is closed\n", status_code=200 if ok else 503)

    async def readyz(_: Request) -> Response:
        ok = _safe(ready)
        return PlainTextResponse("ok\n" if ok else "service unavailable\n", status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    methods = ["GET", "HEAD"]
    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=methods),
            Route("/readyz", readyz, methods=methods),
            Route("/metrics", metrics, methods=methods),
        ]
    )


async def start_health_server(
    port: int, ready: Callable[[], bool], host: str = "0.0.0.0", alive: Callable[[], bool] | None = None
) -> asyncio.Task[None]:
    """Serve :func:`health_app` on ``host:port`` in this event loop; returns the server's task.

    Raises ``OSError`` at once when the port is taken (the process must not run without probes).
    """
    # Bind first, so a taken port is an OSError here rather than uvicorn's sys.exit in a task.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve probes on {host}:{port} (TWEAKLINE_HEALTH_PORT): {exc.strerror}") from None
    config = uvicorn.Config(health_app(ready, alive), log_level="warning", lifespan="off", access_log=False)
    server = EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    log.info("probes on http://%s:%d/healthz, /readyz and /metrics", host, port)
    return task


def _safe(ready: Callable[[], bool]) -> bool:
    try:
        return bool(ready())
    except Exception:  # not connected yet: the broker has no connection object
        return False

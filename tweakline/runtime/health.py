"""The probe endpoints of a service process: ``/healthz`` (alive) and ``/readyz`` (connected).

``/healthz`` fails once the process's bus connection is closed for good (see
:class:`tweakline.runtime.service.ConnectionWatch`): such a process must be restarted.

A deliberately tiny HTTP/1.0 responder on asyncio streams, so a probe costs no framework
and no thread. Off locally; the Helm chart sets ``TWEAKLINE_HEALTH_PORT`` for its probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

_STATUS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


async def start_health_server(
    port: int, ready: Callable[[], bool], host: str = "0.0.0.0", alive: Callable[[], bool] | None = None
) -> asyncio.Server:
    """Serve ``GET /healthz`` and ``GET /readyz`` on ``host:port``.

    ``/healthz`` is 200 while the event loop runs and ``alive()`` (if given) is true, else 503 —
    a process whose bus connection is closed for good is not live, so its pod is restarted;
    ``/readyz`` is 200 when ``ready()`` is true, else 503.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?")[0]) if len(parts) >= 2 else ("", "")
            if method not in ("GET", "HEAD"):
                code = 405
            elif path == "/healthz":
                code = 200 if alive is None or _safe(alive) else 503
            elif path == "/readyz":
                code = 200 if _safe(ready) else 503
            else:
                code = 404
            body = f"{_STATUS[code].lower()}\n".encode()
            writer.write(
                f"HTTP/1.0 {code} {_STATUS[code]}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (OSError, TimeoutError, UnicodeError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("probes on http://%s:%d/healthz and /readyz", host, port)
    return server


def _safe(ready: Callable[[], bool]) -> bool:
    try:
        return bool(ready())
    except Exception:  # not connected yet: the broker has no connection object
        return False

"""The probe endpoints the chart's startup/liveness/readiness probes call, on a real service."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

from tests.waiting import wait_until
from tweakline.proto.permissions import Identity


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_service_answers_probes_once_connected(nats) -> None:
    port = _free_port()
    env = dict(os.environ)
    env.update(
        {
            "TWEAKLINE_NATS_URL": nats.url,
            "TWEAKLINE_IDENTITY": Identity.EVALUATOR.value,
            "TWEAKLINE_STATE_DIR": str(nats.pki.parent),
            "TWEAKLINE_HEALTH_PORT": str(port),
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tweakline", "service", "evaluator"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            return _status(f"{base}/readyz") == 200

        wait_until(ready, "the service to become ready", 60, 0.1)
        assert _status(f"{base}/healthz") == 200
        assert _status(f"{base}/nope") == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert _status(f"{base}/healthz") is None  # gone with the process


async def test_the_probe_app_says_ready_only_when_connected_and_serves_metrics() -> None:
    import httpx
    from prometheus_client import Counter

    from tweakline.runtime.health import health_app

    connected = {"now": False}

    def ready() -> bool:
        if connected["now"] is None:
            raise RuntimeError("no connection object yet")
        return connected["now"]

    Counter("tweakline_probe_test_total", "a counter only this test makes").inc()
    transport = httpx.ASGITransport(app=health_app(ready))
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/readyz")).status_code == 503
        connected["now"] = None  # the broker not built yet: not ready, not a 500
        assert (await client.get("/readyz")).status_code == 503
        connected["now"] = True
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post("/readyz")).status_code == 405
        assert (await client.get("/nope")).status_code == 404
        metrics = await client.get("/metrics")
        assert metrics.status_code == 200 and "tweakline_probe_test_total 1.0" in metrics.text


async def test_a_taken_probe_port_fails_at_once() -> None:
    import pytest

    from tweakline.runtime.health import start_health_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="TWEAKLINE_HEALTH_PORT"):
            await start_health_server(taken.getsockname()[1], lambda: True, host="127.0.0.1")

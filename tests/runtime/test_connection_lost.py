"""A service whose connection the server closes for good is not live: /healthz fails and the process exits non-zero.

nats-py reconnects after a dropped connection, but not after the server closed it with a
protocol error; such a process used to stay up doing nothing, so no supervisor restarted it (#16).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from nats.errors import ConnectionClosedError

from tests.waiting import until
from tweakline.proto.permissions import Identity
from tweakline.runtime.health import start_health_server
from tweakline.runtime.service import ServiceContext, connection_watch, make_app, make_broker

ROOT = Path(__file__).resolve().parents[2]


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


async def test_a_connection_closed_by_the_server_fails_the_liveness_probe(nats) -> None:
    broker = make_broker(nats.settings(Identity.EVALUATOR), "probe")
    await broker.connect()
    watch = connection_watch(broker)
    port = _free_port()
    server = await start_health_server(port, lambda: broker.connection.is_connected, host="127.0.0.1", alive=watch.alive)
    healthz = f"http://127.0.0.1:{port}/healthz"
    try:
        assert await asyncio.to_thread(_status, healthz) == 200
        await broker.connection.publish("tweakline.test." + "x" * 5000, b"")  # the server closes the connection
        reason = await until(lambda: watch.lost, "the connection to be reported closed for good", timeout=30)
        assert "control line" in reason.lower()
        assert broker.connection.is_closed
        assert await asyncio.to_thread(_status, healthz) == 503
    finally:
        server.cancel()
        with contextlib.suppress(ConnectionClosedError):  # FastStream drains: nothing left to drain
            await broker.stop()


async def test_stopping_a_service_is_not_a_lost_connection(nats) -> None:
    settings = nats.settings(Identity.EVALUATOR)
    broker = make_broker(settings, "probe")
    app = make_app(ServiceContext(settings, broker, "probe"), "probe")
    await app.start()
    connection = broker.connection
    assert connection.is_connected
    await app.stop()
    assert connection.is_closed
    assert connection_watch(broker).lost is None and connection_watch(broker).alive()


def _service_env(nats, **extra: str) -> dict[str, str]:
    """The environment of a test service run as every service is, on the test's nats-server."""
    return {
        **os.environ,
        "TWEAKLINE_NATS_URL": nats.url,
        "TWEAKLINE_IDENTITY": Identity.EVALUATOR.value,
        "TWEAKLINE_STATE_DIR": str(nats.pki.parent),
        "PYTHONPATH": str(ROOT),
        **extra,
    }


def test_a_service_whose_connection_is_closed_for_good_exits_non_zero(nats) -> None:
    env = _service_env(nats)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.runtime.lost_connection"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "closed for good" in proc.stderr and "control line" in proc.stderr.lower(), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_a_service_whose_stop_hangs_still_exits(nats) -> None:
    # A service orphaned by a dead stack gets SIGTERM from the kernel (PR_SET_PDEATHSIG); a stop
    # that never finishes must not keep it running for ever.
    env = _service_env(nats, TWEAKLINE_SHUTDOWN_GRACE_S="0.5")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.stuck_stop"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)  # grace 0.5 s + overrun 0.5 s: far less than this
        stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 1, stderr[-2000:]
        assert "stuck-stop: still stopping 1s after the stop was asked for; exiting now" in stderr, stderr[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

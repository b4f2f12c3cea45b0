"""The probe endpoints the chart's startup/liveness/readiness probes call, on a real service."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

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
        deadline = time.monotonic() + 60
        while _status(f"{base}/readyz") != 200:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.1)
        assert _status(f"{base}/healthz") == 200
        assert _status(f"{base}/nope") == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert _status(f"{base}/healthz") is None  # gone with the process

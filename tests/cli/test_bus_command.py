"""`tweakline bus init` (the chart's setup Job) on a fresh real nats-server over mTLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream
from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
from tweakline.runtime.pki import TlsFiles


@pytest.fixture
def empty_nats(pki_root: Path, tmp_path: Path) -> Iterator[str]:
    """A nats-server with no streams at all."""
    server = EmbeddedNatsServer(
        ServerConfig(store_dir=tmp_path / "js", tls=TlsFiles(pki_root / Identity.NATS_SERVER)), tmp_path / "run"
    )
    yield server.start()
    server.stop()


def _env(url: str, pki_root: Path, identity: Identity) -> dict[str, str]:
    return {
        "TWEAKLINE_NATS_URL": url,
        "TWEAKLINE_IDENTITY": identity.value,
        "TWEAKLINE_STATE_DIR": str(pki_root.parent),
    }


def test_bus_init_creates_the_topology_idempotently(empty_nats: str, pki_root: Path) -> None:
    for _ in range(2):
        result = run_cli("bus", "init", "--wait", "5", env=_env(empty_nats, pki_root, Identity.ADMIN), timeout=60)
        assert result.code == 0, result.stderr
        for stream in Stream:
            assert stream.value in result.stdout


def test_bus_init_as_a_service_identity_is_refused_clearly(empty_nats: str, pki_root: Path) -> None:
    result = run_cli("bus", "init", "--wait", "0", env=_env(empty_nats, pki_root, Identity.TRIAL_RUNNER), timeout=60)
    assert result.code == 2
    assert "as trial-runner" in result.stderr and "admin identity" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_service_without_topology_says_what_to_run(empty_nats: str, pki_root: Path) -> None:
    result = run_cli("service", "evaluator", env=_env(empty_nats, pki_root, Identity.EVALUATOR), timeout=120)
    assert result.code == 2
    assert "tweakline bus init" in result.stderr and "stream not found" in result.stderr
    assert "Traceback" not in result.stderr

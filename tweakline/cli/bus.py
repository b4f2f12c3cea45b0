"""``tweakline bus init``: create or update the JetStream topology on a running NATS server.

The local stack does this itself before starting the services; on Kubernetes the chart runs
it as a Job (post-install and pre-upgrade hook) with the admin identity, because the services'
own identities may only bind to streams and consumers, never create them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer

from tweakline.errors import BusError, TweaklineError
from tweakline.runtime.settings import Settings

bus_app = typer.Typer(help="The JetStream topology (streams, consumers, buckets).", no_args_is_help=True)


async def init_topology(settings: Settings, wait: float) -> list[str]:
    """Connect as ``settings.identity`` (retrying for up to ``wait`` seconds: NATS or its
    certificate may still be starting), ensure the topology, and return the streams present."""
    from tweakline.runtime.bus import connect, ensure_topology

    deadline = time.monotonic() + wait
    while True:
        try:
            nc = await connect(settings, "tweakline-bus-init", allow_reconnect=False, max_reconnect_attempts=0)
            break
        except TweaklineError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(2)
    try:
        js = nc.jetstream()
        try:
            await ensure_topology(js, settings)
        except Exception as exc:  # JetStream errors name the refused API call
            raise BusError(
                f"cannot create the topology as {settings.identity.value} on {settings.nats_url}: {exc}; "
                "it needs the admin identity"
            ) from exc
        return sorted(info.config.name or "" for info in await js.streams_info())
    finally:
        await nc.close()


@bus_app.command("init")
def init(
    wait: Annotated[
        float, typer.Option("--wait", min=0, help="Seconds to keep retrying while NATS is not reachable yet.")
    ] = 120.0,
) -> None:
    """Create or update every stream, durable consumer, KV bucket and object store (idempotent)."""
    settings = Settings()
    try:
        streams = asyncio.run(init_topology(settings, wait))
    except TweaklineError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"topology ready on {settings.nats_url}: {', '.join(streams)}")

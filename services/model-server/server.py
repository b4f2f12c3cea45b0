"""Running ``tweakline serve RELEASE``: connect as ``model-server``, follow the release, answer HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

import uvicorn

from tweakline.errors import ConfigurationError
from tweakline.model_server.api import ServerMetrics, create_http_app
from tweakline.model_server.follow import ReleaseFollower
from tweakline.model_server.model import ModelSlot
from tweakline.model_server.settings import ServeSettings
from tweakline.model_server.stats import LiveFigures, publish_periodically
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect
from tweakline.runtime.endpoints import registration_path
from tweakline.runtime.settings import Settings

log = logging.getLogger(__name__)


def resolve_bus(settings: Settings) -> Settings:
    """Settings connecting as ``model-server``: to ``TWEAKLINE_NATS_URL``, else the running local stack."""
    update: dict[str, object] = {"identity": Identity.MODEL_SERVER}
    if "TWEAKLINE_NATS_URL" not in os.environ:
        info = settings.state_dir / "run" / "stack.json"
        try:
            update["nats_url"] = json.loads(info.read_text())["url"]
        except (OSError, ValueError, KeyError):
            raise ConfigurationError(
                f"no NATS server to follow: no local stack is running in {settings.state_dir.resolve()} "
                "(start one, or set TWEAKLINE_NATS_URL)"
            ) from None
    return settings.model_copy(update=update)


async def serve(release: str, settings: Settings, serve_settings: ServeSettings) -> None:
    """Serve ``release`` until SIGTERM/SIGINT."""
    bus = resolve_bus(settings)
    nc = await connect(bus, f"model-server-{release}")
    slot, metrics = ModelSlot(), ServerMetrics()
    follower = ReleaseFollower(
        nc.jetstream(),
        release,
        slot,
        metrics,
        pin_revision=serve_settings.model_revision,
        artifact=serve_settings.model_artifact,
        sha256=serve_settings.model_sha256,
    )
    following = asyncio.create_task(follower.run())
    figures = LiveFigures(release)
    publishing = None
    if serve_settings.stats_interval_s > 0:
        publishing = asyncio.create_task(publish_periodically(nc, figures, serve_settings.stats_interval_s))
    app = create_http_app(slot, metrics, release, figures=figures)
    config = uvicorn.Config(
        app,
        host=serve_settings.host(),
        port=serve_settings.serve_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    registration: Path | None = None
    try:
        while not server.started:
            if serving.done():
                serving.result()  # raises the reason (e.g. the port is taken)
                raise ConfigurationError(f"the HTTP server did not start on port {serve_settings.serve_port}")
            await asyncio.sleep(0.05)
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"
        registration = registration_path(settings.state_dir, release)
        with contextlib.suppress(OSError):
            registration.parent.mkdir(parents=True, exist_ok=True)
            registration.write_text(json.dumps({"url": url, "pid": os.getpid(), "release": release}))
        print(f"serving release {release} on {url}", file=sys.stderr, flush=True)
        await serving
    finally:
        following.cancel()
        with contextlib.suppress(BaseException):
            await following
        if publishing is not None:
            publishing.cancel()
            with contextlib.suppress(BaseException):
                await publishing
        if registration is not None:
            with contextlib.suppress(OSError):
                info = json.loads(registration.read_text())
                if info.get("pid") == os.getpid():
                    registration.unlink()
        await nc.close()

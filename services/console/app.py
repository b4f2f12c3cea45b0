"""The console service: an HTTP server (Starlette on uvicorn) beside a bus connection as ``console``.

``tweakline service console`` (the chart's Deployment) and ``tweakline console`` (a laptop) run
it. The broker connects with the ``console`` identity (read experiment and release records,
follow events, publish cancel and rollback requests: nothing else, see ``docs/security.md``);
every page and live stream goes through :class:`tweakline.client.TweaklineClient` on that
connection. The routes are in :mod:`tweakline.console.routes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import uvicorn
from faststream import FastStream

from tweakline.client import TweaklineClient
from tweakline.console.auth import Authenticator
from tweakline.console.routes import http_app
from tweakline.console.settings import ConsoleSettings
from tweakline.errors import ConfigurationError
from tweakline.runtime.health import EmbeddedServer
from tweakline.runtime.pki import TlsFiles
from tweakline.runtime.service import ServiceContext, make_app, make_broker
from tweakline.runtime.settings import Settings

NAME = "console"
log = logging.getLogger(__name__)


class Console:
    """The console's lifecycle: listen once the bus is connected, stop before it closes."""

    def __init__(self, settings: Settings, console: ConsoleSettings, ctx: ServiceContext):
        self.settings = settings
        self.console = console
        self.ctx = ctx
        self.auth = Authenticator(console)  # refuses to start without credentials
        self.server: uvicorn.Server | None = None
        self._serving: asyncio.Task[None] | None = None
        self.port: int | None = None

    def _tls(self) -> dict[str, str]:
        if self.console.tls_dir is None:
            return {}
        files = TlsFiles(self.console.tls_dir)
        files.require()
        return {"ssl_certfile": str(files.cert), "ssl_keyfile": str(files.key)}

    async def start(self) -> None:
        """Serve the pages on the configured address (after the broker connected)."""
        client = TweaklineClient(self.ctx.broker.connection, identity=self.settings.identity.value)
        app = http_app(client, self.auth, self.console)
        config = uvicorn.Config(
            app,
            host=self.console.host,
            port=self.console.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            # Bounds on what a client may hold open or send before a handler runs.
            limit_concurrency=self.console.max_streams * 2 + 16,
            h11_max_incomplete_event_size=16 * 1024,
            timeout_keep_alive=5,
            **self._tls(),
        )
        self.server = EmbeddedServer(config)
        self._serving = asyncio.create_task(self.server.serve())
        while not self.server.started:  # bind errors end serve() early: report them
            if self._serving.done():
                self._serving.result()
                raise ConfigurationError(f"the console could not listen on {self.console.host}:{self.console.port}")
            await asyncio.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if self.console.tls_dir else "http"
        log.info("console on %s://%s:%s/", scheme, self.console.host, self.port)

    async def stop(self) -> None:
        """Stop listening (open event streams end)."""
        if self.server is not None:
            self.server.should_exit = True
        if self._serving is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serving, 10)


def create_app(settings: Settings) -> FastStream:
    """Build the console's broker and app; the HTTP server starts once the broker is connected."""
    broker = make_broker(settings, NAME)
    ctx = ServiceContext(settings, broker, NAME)
    console = Console(settings, ConsoleSettings(), ctx)
    return make_app(ctx, NAME, start=[console.start], stop=[console.stop])

"""A service whose stop never finishes (``python -m tests.runtime.stuck_stop``).

It is run the way every service is (``tweakline service NAME``, here ``stuck-stop``): once it
runs it writes ``ready`` to its stdout; on SIGTERM its shutdown hook waits for ever, as a stop
stuck reconnecting to a server that is gone would. The watchdog's overrun is cut to 0.5 s here.
"""

from __future__ import annotations

import asyncio
import sys

from faststream import FastStream

import tweakline.runtime.service as service
from tweakline.runtime.service import ServiceContext, make_app, make_broker
from tweakline.runtime.settings import Settings

NAME = "stuck-stop"


def create_app(settings: Settings) -> FastStream:
    """A service with no subscribers whose shutdown hangs."""
    broker = make_broker(settings, NAME)
    app = make_app(ServiceContext(settings, broker, NAME), NAME)

    async def ready() -> None:
        print("ready", flush=True)

    async def hang() -> None:
        await asyncio.Event().wait()

    app.after_startup(ready)
    app.on_shutdown(hang)
    return app


if __name__ == "__main__":
    from tweakline.cli.main import app as cli
    from tweakline.cli.services import SERVICES

    service.STOP_OVERRUN_S = 0.5
    SERVICES[NAME] = "tests.runtime.stuck_stop"
    cli(["service", NAME])
    sys.exit(0)

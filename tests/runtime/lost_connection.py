"""A service whose bus connection the server closes for good once it runs (``python -m tests.runtime.lost_connection``).

It is run the way every service is (``tweakline service NAME``, here under the name
``lost-connection``): after start-up it publishes a subject longer than nats-server's 4 KiB
control line, the server answers "maximum control line exceeded" and closes the connection —
what a 5,000-character experiment id did to the scheduler (#16).
"""

from __future__ import annotations

from faststream import FastStream

from tweakline.runtime.service import ServiceContext, make_app, make_broker
from tweakline.runtime.settings import Settings

NAME = "lost-connection"


def create_app(settings: Settings) -> FastStream:
    """A service with no subscribers that breaks its own connection right after start-up."""
    broker = make_broker(settings, NAME)
    ctx = ServiceContext(settings, broker, NAME)
    app = make_app(ctx, NAME)

    async def break_the_connection() -> None:
        await broker.connection.publish("tweakline.test." + "x" * 5000, b"")

    app.after_startup(break_the_connection)
    return app


if __name__ == "__main__":
    from tweakline.cli.main import app as cli
    from tweakline.cli.services import SERVICES

    SERVICES[NAME] = "tests.runtime.lost_connection"
    cli(["service", NAME])

"""``tweakline console``: the web console in the foreground, on this machine.

With ``TWEAKLINE_NATS_URL`` set it connects to that platform with the identity the environment
names (``TWEAKLINE_IDENTITY=console``, ``TWEAKLINE_TLS_DIR``); otherwise to the local stack
running on the state directory (``tweakline up``), as ``console`` with the stack's certificates
and the stack's console tokens (``<state>/console/credentials.json``) unless
``TWEAKLINE_CONSOLE_*_TOKEN`` are set. It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Annotated

import typer

from tweakline.cli.releases import StateDir
from tweakline.errors import TweaklineError
from tweakline.runtime.settings import DEFAULT_STATE_DIR, Settings


def console(
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Listen port (0: any free port).")] = 8090,
    host: Annotated[str, typer.Option("--host", help="Listen address; anything but loopback should use TLS.")] = "127.0.0.1",
    state_dir: StateDir = None,
) -> None:
    """Serve the web console (experiments live, trials, releases and rollback) until Ctrl-C."""
    from tweakline.console.app import create_app
    from tweakline.observability.telemetry import setup_logging
    from tweakline.proto.permissions import Identity
    from tweakline.reporting.console import err
    from tweakline.runtime.service import run_service
    from tweakline.stack.console import console_credentials, credentials_path
    from tweakline.stack.local import StackLayout

    settings = Settings()
    if not os.environ.get("TWEAKLINE_NATS_URL"):
        root = (state_dir or settings.state_dir or DEFAULT_STATE_DIR).resolve()
        layout = StackLayout(root)
        try:
            url = json.loads(layout.info.read_text())["url"]
        except (OSError, ValueError, KeyError):
            err.print(f"[bold red]error:[/bold red] no local stack is running in {root}: start one with 'tweakline up'")
            raise typer.Exit(2) from None
        settings = settings.model_copy(update={"nats_url": url, "identity": Identity.CONSOLE, "state_dir": root, "tls_dir": None})
        os.environ.update(console_credentials(root))
        err.print(f"log in with a token from {credentials_path(root)}", highlight=False)
    os.environ["TWEAKLINE_CONSOLE_HOST"] = host
    os.environ["TWEAKLINE_CONSOLE_PORT"] = str(port)
    setup_logging("console", settings)
    err.print(f"console on http://{host}:{port}/ (Ctrl-C stops it)", highlight=False)
    try:
        run_service("console", settings, create_app)
    except TweaklineError as exc:
        logging.getLogger("tweakline").error("%s", exc)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add ``tweakline console`` to the ``tweakline`` app."""
    app.command("console")(console)

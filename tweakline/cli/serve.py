"""``tweakline serve RELEASE``: the model server command."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer

from tweakline.errors import TweaklineError


def serve(
    release: Annotated[str, typer.Argument(help="The release to serve (spec.deploy.release).")],
    host: Annotated[str | None, typer.Option("--host", help="Listen address (default 127.0.0.1; 0.0.0.0 in a pod).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Listen port (default 8080; 0 picks a free one).")] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", envvar="TWEAKLINE_STATE_DIR", help="The local state directory.", show_default=False),
    ] = None,
) -> None:
    """Serve a release's live model over HTTP (/predict, /healthz, /readyz, /metrics, /version), hot-swapping on promotion."""
    from tweakline.model_server.server import serve as run_server
    from tweakline.model_server.settings import ServeSettings
    from tweakline.observability.telemetry import setup_logging
    from tweakline.reporting.console import err
    from tweakline.runtime.settings import Settings

    settings = Settings()
    if state_dir is not None:
        settings = settings.model_copy(update={"state_dir": state_dir})
    serve_settings = ServeSettings()
    serve_settings = serve_settings.model_copy(
        update={k: v for k, v in {"serve_host": host, "serve_port": port}.items() if v is not None}
    )
    setup_logging("model-server", settings)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        asyncio.run(run_server(release, settings, serve_settings))
    except TweaklineError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        pass


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``tweakline`` app."""
    app.command("serve")(serve)

"""``tweakline report EXPERIMENT``: write an experiment's HTML report (and Markdown summary) from the bus.

The bus is, in order: the one named by ``--nats-url`` / ``TWEAKLINE_NATS_URL`` (a cluster, with
this identity's certificates), the local stack running on the state directory, or else the
state directory's JetStream store served for the moment by an embedded nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from tweakline.runtime.settings import DEFAULT_STATE_DIR, Settings


@contextlib.contextmanager
def _bus(state_dir: Path, nats_url: str | None) -> Iterator[Settings]:
    """Settings of a client of the bus holding the experiment (see the module docstring)."""
    from tweakline.proto.permissions import Identity
    from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
    from tweakline.runtime.pki import TlsFiles
    from tweakline.stack.local import LocalStack

    settings = Settings()
    if nats_url or "TWEAKLINE_NATS_URL" in os.environ:
        yield settings.model_copy(update={"nats_url": nats_url or settings.nats_url})
        return
    stack = LocalStack(state_dir, runners=0, settings=settings)
    local = {"identity": Identity.ADMIN, "state_dir": stack.layout.root, "tls_dir": None}
    try:
        url = json.loads(stack.layout.info.read_text())["url"]
    except (OSError, ValueError, KeyError):
        url = None
    if url is not None:
        yield settings.model_copy(update={**local, "nats_url": url})
        return
    if not stack.layout.jetstream.exists():
        from tweakline.errors import StackError

        raise StackError(f"no tweakline state in {stack.layout.root} (run an experiment there first, or pass --nats-url)")
    stack._acquire_lock()  # nobody else may serve this store meanwhile
    server = EmbeddedNatsServer(
        ServerConfig(store_dir=stack.layout.jetstream, tls=TlsFiles(stack.layout.pki / Identity.NATS_SERVER)),
        stack.layout.run,
    )
    try:
        url = server.start()
        yield settings.model_copy(update={**local, "nats_url": url})
    finally:
        server.stop()
        stack._release_lock()


async def _write(settings: Settings, experiment: str, output: Path, markdown: Path | None) -> str | None:
    from tweakline.reporting.html import write_report
    from tweakline.runtime.bus import connect

    nc = await connect(settings, "tweakline-report")
    try:
        data = await write_report(nc, experiment, output, markdown=markdown, trace_url_template=settings.trace_url)
    finally:
        await nc.close()
    return data.trace_id


def report(
    experiment: Annotated[str, typer.Argument(help="The experiment id (printed by 'run' and 'submit').")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The HTML file to write (default: report-EXPERIMENT.html).")
    ] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write a Markdown summary here.")] = None,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", envvar="TWEAKLINE_STATE_DIR", help="Local state directory.", show_default=False)
    ] = None,
    nats_url: Annotated[str | None, typer.Option("--nats-url", help="Read from this NATS server instead.")] = None,
) -> None:
    """Write an experiment's self-contained HTML report (plots work offline) from what the bus stored."""
    from tweakline.reporting.console import err

    logging_quiet()
    target = output or Path(f"report-{experiment}.html")
    with _bus(state_dir or DEFAULT_STATE_DIR, nats_url) as settings:
        trace_id = asyncio.run(_write(settings, experiment, target, markdown))
    err.print(f"report written to {target}" + (f" (trace {trace_id})" if trace_id else ""), highlight=False)


def logging_quiet() -> None:
    """Closing TLS connections makes asyncio log a harmless line users should not see."""
    import logging

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)

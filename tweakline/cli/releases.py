"""``tweakline history RELEASE`` and ``tweakline rollback RELEASE [--to REV]``.

Both talk to the bus as the operator (``admin``): to ``TWEAKLINE_NATS_URL`` when it is set (a
platform in Kubernetes), else to the local stack running on the state directory, else to an
embedded nats-server started on the state directory's JetStream store just for the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tweakline.errors import StackError, TweaklineError
from tweakline.proto.messages import ReleaseHistory
from tweakline.proto.permissions import Identity
from tweakline.runtime.settings import DEFAULT_STATE_DIR, Settings

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir", envvar="TWEAKLINE_STATE_DIR", help="The local state directory (default: ./.tweakline).", show_default=False
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


@contextlib.asynccontextmanager
async def operator_bus(state_dir: Path | None) -> AsyncIterator[Any]:
    """A JetStream context for operator commands (see the module docstring for which server)."""
    async with operator_connection(state_dir) as nc:
        yield nc.jetstream()


@contextlib.asynccontextmanager
async def operator_connection(state_dir: Path | None) -> AsyncIterator[Any]:
    """A NATS connection for operator commands: ``TWEAKLINE_NATS_URL`` with its identity, else the local state's server as admin."""
    from tweakline.runtime.bus import connect
    from tweakline.stack.local import LocalStack

    settings = Settings()
    if "TWEAKLINE_NATS_URL" in os.environ:
        nc = await connect(settings, "tweakline-cli")
        try:
            yield nc
        finally:
            await nc.close()
        return
    root = (state_dir or settings.state_dir or DEFAULT_STATE_DIR).resolve()
    if not (root / "jetstream").is_dir():
        raise TweaklineError(f"no local state in {root}: nothing has been deployed here (or pass --state-dir)")
    stack = LocalStack(root, runners=0, settings=settings)
    server = None
    try:
        stack._acquire_lock()
        owned = True
    except StackError:
        owned = False  # a stack is running: use its server
    try:
        if owned:
            from tweakline.runtime.natsserver import EmbeddedNatsServer, ServerConfig
            from tweakline.runtime.pki import TlsFiles, ensure_pki

            ensure_pki(stack.layout.pki)
            server = EmbeddedNatsServer(
                ServerConfig(store_dir=stack.layout.jetstream, tls=TlsFiles(stack.layout.pki / Identity.NATS_SERVER)),
                stack.layout.run,
            )
            url = server.start()
        else:
            url = json.loads(stack.layout.info.read_text())["url"]
        client = settings.model_copy(update={"nats_url": url, "identity": Identity.ADMIN, "state_dir": root, "tls_dir": None})
        nc = await connect(client, "tweakline-cli")
        try:
            yield nc
        finally:
            await nc.close()
    finally:
        if server is not None:
            server.stop()
        if owned:
            stack._release_lock()


def _fmt_metrics(metrics: dict[str, float], limit: int = 3) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in list(metrics.items())[:limit])


def _evidence(rev: Any) -> str:
    c = rev.comparison
    if c is None:
        return "nothing in production: thresholds only"
    if c.p_value is not None:
        return f"{c.metric} {c.difference:+.4f} vs prod, McNemar mid-p {c.p_value:.3g}"
    if c.ci_low is not None:
        return f"{c.metric} {c.difference:+.4f} vs prod, {c.confidence:.0%} CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
    return f"{c.metric} {c.difference:+.4f} vs prod"


def render_history(history: ReleaseHistory, checked: dict[int, str] | None = None) -> None:
    """Print the revisions and the steps of a release as tables (``checked``: each revision's model check)."""
    from rich.table import Table

    from tweakline.reporting.console import out

    revs = Table(title=f"Release {history.release} ({history.target}); live revision: {history.current}")
    helm = any(r.target_revision is not None for r in history.revisions)
    extra_cols = (["helm rev"] if helm else []) + (["model"] if checked is not None else [])
    for col in ("rev", "live", "created", "experiment", "commit", "test metrics", "evidence", *extra_cols):
        revs.add_column(col)
    for r in history.revisions:
        extra = ([str(r.target_revision or "-")] if helm else []) + ([checked[r.revision]] if checked is not None else [])
        revs.add_row(
            str(r.revision),
            "*" if r.revision == history.current else "",
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.experiment_id,
            (r.source.commit or "-")[:12],
            _fmt_metrics(r.metrics),
            _evidence(r),
            *extra,
        )
    out.print(revs)
    steps = Table(title="Steps")
    for col in ("at", "action", "live", "from", "by", "reason"):
        steps.add_column(col)
    for e in history.events:
        steps.add_row(
            e.at.strftime("%Y-%m-%d %H:%M:%S"),
            e.action.value,
            str(e.revision),
            "-" if e.previous is None else str(e.previous),
            e.by,
            e.reason,
        )
    out.print(steps)


def history(
    release: Annotated[str, typer.Argument(help="The release name (spec.deploy.release).")],
    state_dir: StateDir = None,
    as_json: AsJson = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Fetch each revision's model and check its SHA-256 (what rollback would).")
    ] = False,
) -> None:
    """Show a release's revisions (metrics, evidence, source commit) and every step with its reason."""
    from tweakline.deployer.control import check_revision, releases
    from tweakline.deployer.releases import ReleaseError, read_history

    async def _main() -> tuple[ReleaseHistory, dict[int, str] | None]:
        async with operator_bus(state_dir) as js:
            found = await read_history(await releases(js), release)
            if not verify:
                return found, None
            checked: dict[int, str] = {}
            for rev in found.revisions:
                try:
                    await check_revision(js, release, rev)
                    checked[rev.revision] = "ok"
                except ReleaseError as exc:
                    checked[rev.revision] = str(exc).split("cannot go live: ", 1)[-1]
            return found, checked

    found, checked = _run(_main())
    if as_json:
        data = found.model_dump(mode="json")
        if checked is not None:
            data["model_checks"] = {str(k): v for k, v in checked.items()}
        print(json.dumps(data))
    else:
        render_history(found, checked)


def rollback(
    release: Annotated[str, typer.Argument(help="The release name.")],
    to: Annotated[int | None, typer.Option("--to", help="Revision to make live (default: the one live before).")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded in the history).")] = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Make an earlier revision of a release live again (through its target) and record why."""
    from tweakline.deployer.control import rollback as do_rollback
    from tweakline.reporting.console import err

    user = _user()

    async def _main():
        async with operator_bus(state_dir) as js:
            return await do_rollback(js, Settings(), release, to=to, reason=reason or "manual rollback", by=user)

    done = _run(_main())
    if as_json:
        print(json.dumps({"release": release, "revision": done.revision.revision, "previous": done.previous}))
    else:
        err.print(f"release {release}: revision {done.revision.revision} is live again (was {done.previous})")


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def _run(coro: Any) -> Any:
    import logging

    from tweakline.reporting.console import err

    # Closing TLS connections makes asyncio log a harmless line that users should not see.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(coro)
    except TweaklineError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def register(app: typer.Typer) -> None:
    """Add the release commands to the ``tweakline`` app."""
    app.command("history")(history)
    app.command("rollback")(rollback)

"""``tweakline experiments [show ID]`` and ``tweakline cancel ID``: experiments you can act on.

Built on :class:`tweakline.client.TweaklineClient`. The connection is the operator commands' one
(:func:`tweakline.cli.releases.operator_connection`): ``TWEAKLINE_NATS_URL`` with the identity of
``TWEAKLINE_IDENTITY``/``TWEAKLINE_TLS_DIR`` (a CI job's ``submitter`` may list and cancel), else
the local state directory's server as ``admin``.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Annotated, Any

import typer

from tweakline.cli.releases import AsJson, StateDir, _run, _user, operator_connection

experiments_app = typer.Typer(
    help="List experiments (status, progress, best so far, source, age); `show ID` for one.",
    invoke_without_command=True,
)


def _age(seconds: float) -> str:
    return str(timedelta(seconds=int(max(0.0, seconds))))


def _row(summary: Any) -> dict[str, Any]:
    return summary.model_dump(mode="json") | {"progress": summary.progress}


@experiments_app.callback()
def experiments(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option("--status", help="running, completed, failed, cancelled or superseded.")] = None,
    repository: Annotated[str | None, typer.Option("--repository", help="Only this repository (workspace/slug).")] = None,
    branch: Annotated[str | None, typer.Option("--branch", help="Only this branch.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Only experiments with this metadata.name.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="At most this many, newest first.")] = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """List experiments, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from tweakline.client import TweaklineClient

    async def _main() -> list[Any]:
        async with operator_connection(state_dir) as nc:
            client = TweaklineClient(nc)
            return await client.experiments(status=status, repository=repository, branch=branch, name=name, limit=limit)

    rows = _run(_main())
    if as_json:
        print(json.dumps({"experiments": [_row(r) for r in rows]}))
        return
    from rich.table import Table

    from tweakline.reporting.console import out

    table = Table(title=f"{len(rows)} experiment(s)")
    table.add_column("id", no_wrap=True)  # ids are copied into `cancel` and `show`: keep them whole
    for column in ("status", "progress", "running", "best", "source", "age"):
        table.add_column(column)
    for r in rows:
        source = " ".join(x for x in (r.repository, r.branch, (r.commit or "")[:8], r.author) if x) or r.trigger
        best = "-" if r.best_score is None else f"{r.metric} {r.best_score:.4g}"
        table.add_row(r.experiment_id, r.status.value, r.progress, str(r.running), best, source, _age(r.age_s))
    out.print(table)


@experiments_app.command("show")
def show(
    experiment_id: Annotated[str, typer.Argument(help="The experiment id.")],
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """One experiment: status, progress, best so far, source, and why it ended."""
    from tweakline.client import TweaklineClient

    async def _main() -> Any:
        async with operator_connection(state_dir) as nc:
            return await TweaklineClient(nc).experiment(experiment_id)

    r = _run(_main())
    if as_json:
        print(json.dumps(_row(r)))
        return
    from tweakline.reporting.console import out

    for key, value in _row(r).items():
        if value is not None:
            out.print(f"{key:>14}: {value}", highlight=False)


def cancel(
    experiment_id: Annotated[str, typer.Argument(help="The experiment id (see `tweakline experiments`).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (kept in the experiment's state).")] = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the scheduler to confirm (0: do not).")] = 30.0,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Stop an experiment: no more trials, running ones stopped, no evaluation or deployment."""
    from tweakline.client import TweaklineClient
    from tweakline.errors import TweaklineError
    from tweakline.proto.messages import ExperimentCancelled, ExperimentStatus

    async def _main() -> dict[str, Any]:
        async with operator_connection(state_dir) as nc:
            client = TweaklineClient(nc, identity=_identity())
            before = await client.experiment(experiment_id)
            if before.status is not ExperimentStatus.RUNNING:
                raise TweaklineError(f"experiment {experiment_id} is {before.status.value}, not running: nothing to cancel")
            await client.cancel(experiment_id, reason=reason or "", user=_user())
            if wait <= 0:
                return {"experiment_id": experiment_id, "requested": True}
            try:
                async for event in client.events(experiment_id, idle_timeout=wait):
                    if isinstance(event, ExperimentCancelled):
                        return {"experiment_id": experiment_id} | event.model_dump(mode="json")
            except TimeoutError:
                pass
            raise TweaklineError(f"the cancel of {experiment_id} was sent but not confirmed within {wait:.0f}s")

    result = _run(_main())
    if as_json:
        print(json.dumps(result))
        return
    from tweakline.reporting.console import err

    if "status" in result:
        err.print(
            f"experiment {experiment_id} {result['status']}; stopped trials: {result['stopped_trials'] or 'none'}",
            highlight=False,
        )
    else:
        err.print(f"cancel of {experiment_id} sent", highlight=False)


def _identity() -> str:
    from tweakline.runtime.settings import Settings

    return str(Settings().identity)


def register(app: typer.Typer) -> None:
    """Add ``experiments`` and ``cancel`` to the ``tweakline`` app."""
    app.add_typer(experiments_app, name="experiments")
    app.command("cancel")(cancel)

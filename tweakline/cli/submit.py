"""``tweakline submit FILE [--wait]``: send an experiment to a running platform, as a CI step would.

Connects with a client certificate (``--tls-dir`` or ``TWEAKLINE_TLS_DIR``: ``tls.crt``,
``tls.key``, ``ca.crt``, as a mounted Secret or a CI secure file), uploads a local ``csv:``
dataset by content, submits, and with ``--wait`` follows the experiment with the same progress
view and exit codes as ``tweakline run``: 0 promoted, 1 rejected, 2 error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from tweakline.errors import InvalidTweakFileError, TweaklineError
from tweakline.proto.permissions import Identity
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.settings import DEFAULT_STATE_DIR, Settings

EXIT_OK, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2


def _ci_url(env: dict[str, str]) -> str:
    """A link to this CI run, for the build status written with ``--report-dir``."""
    if env.get("TWEAKLINE_REPORT_URL"):
        return env["TWEAKLINE_REPORT_URL"]
    if env.get("BITBUCKET_GIT_HTTP_ORIGIN") and env.get("BITBUCKET_BUILD_NUMBER"):
        return f"{env['BITBUCKET_GIT_HTTP_ORIGIN']}/pipelines/results/{env['BITBUCKET_BUILD_NUMBER']}"
    return env.get("BUILD_URL", "")


def submit(
    file: Annotated[Path, typer.Argument(help="The tweak file.")],
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Follow the experiment to its decision and exit with its code.")
    ] = False,
    nats_url: Annotated[
        str | None, typer.Option("--nats-url", envvar="TWEAKLINE_NATS_URL", help="The platform's NATS URL.")
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            "--tls-dir",
            envvar="TWEAKLINE_TLS_DIR",
            help="Directory with tls.crt, tls.key and ca.crt (default: <state-dir>/pki/<identity>).",
        ),
    ] = None,
    identity: Annotated[
        Identity,
        typer.Option("--identity", envvar="TWEAKLINE_IDENTITY", help="Certificate identity to connect as."),
    ] = Identity.SUBMITTER,
    state_dir: Annotated[
        Path | None,
        typer.Option("--state-dir", envvar="TWEAKLINE_STATE_DIR", help="Where a local dev PKI lives.", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout; progress goes to stderr.")] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="With --wait: give up (exit 2) after this many seconds.")
    ] = None,
    report_dir: Annotated[
        Path | None,
        typer.Option("--report-dir", help="With --wait: write report.md, build-status.json and summary.json here."),
    ] = None,
    cancel_on_signal: Annotated[
        bool,
        typer.Option(
            "--cancel-on-signal/--keep-on-signal",
            help="With --wait: on SIGTERM/SIGINT (a cancelled CI job) cancel the experiment, or leave it running.",
        ),
    ] = True,
) -> None:
    """Submit an experiment to a running platform (for CI pipelines); --wait follows it like `run`."""
    from tweakline.cli.main import _invalid
    from tweakline.reporting.console import err
    from tweakline.validation import validate_tweak_file
    from tweakline.validation.pools import known_pools

    updates: dict[str, Any] = {"identity": identity}
    if nats_url:
        updates["nats_url"] = nats_url
    elif state_dir is not None:  # the address of the stack running in that directory, as `status` reads it
        from tweakline.stack.control import stack_pools, stack_url

        running = stack_url(state_dir.resolve())
        if running is not None:
            updates["nats_url"] = running
            updates["pools"] = stack_pools(state_dir.resolve()) or Settings().pools
    if tls_dir is not None:
        updates["tls_dir"] = tls_dir
    if state_dir is not None:
        updates["state_dir"] = state_dir
    settings = Settings().model_copy(update=updates)
    if settings.state_dir is None:
        settings = settings.model_copy(update={"state_dir": DEFAULT_STATE_DIR})
    try:
        # The pools of the stack in --state-dir, or TWEAKLINE_POOLS; else the platform checks the pool.
        tweak = validate_tweak_file(file, settings.allowed_estimators, pools=known_pools(settings))
    except InvalidTweakFileError as exc:
        _invalid(exc)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)

    def _interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # a cancelled CI job stops following cleanly
    try:
        code = asyncio.run(_submit(settings, tweak, file, wait, as_json, timeout, report_dir, cancel_on_signal))
    except KeyboardInterrupt:
        # Only before following starts (afterwards the signal cancels the experiment, see _submit).
        err.print("[yellow]interrupted[/yellow]")
        code = 130
    except TweaklineError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        code = EXIT_ERROR
    raise typer.Exit(code)


def _shown(location: str) -> str:
    """A dataset path as the user would write it: relative to the current directory when inside it."""
    try:
        return str(Path(location).relative_to(Path.cwd()))
    except ValueError:
        return location


async def _submit(
    settings: Settings,
    tweak: TweakFile,
    file: Path,
    wait: bool,
    as_json: bool,
    timeout: float | None,
    report_dir: Path | None,
    cancel_on_signal: bool = True,
) -> int:
    from tweakline.client.api import TweaklineClient
    from tweakline.client.follow import Outcome, follow, new_experiment_id
    from tweakline.client.follow import submit as publish_submission
    from tweakline.client.submission import disk_reader, source_from_ci, upload_code, upload_datasets
    from tweakline.reporting.console import ProgressView, decision_panel, err, leaderboard_table, out, print_json, summary
    from tweakline.runtime.bus import connect

    nc = await connect(settings, "tweakline-submit", max_reconnect_attempts=3)
    try:
        tweak, uploads = await upload_datasets(tweak, nc.jetstream(), disk_reader(file.resolve().parent))
        for up in uploads:
            verb = "uploaded" if up.uploaded else "already stored, not uploaded again"
            err.print(f"dataset {_shown(up.location)}: {verb} ({up.size} bytes, sha256 {up.sha256[:12]})", highlight=False)
        tweak, bundle = await upload_code(tweak, nc.jetstream(), file.resolve().parent)
        if bundle is not None:
            verb = "uploaded" if bundle.uploaded else "already stored, not uploaded again"
            err.print(
                f"code {_shown(bundle.location)}: {verb} ({bundle.size} bytes, sha256 {bundle.sha256[:12]})", highlight=False
            )
        source = source_from_ci(str(file), os.environ)
        exp_id = new_experiment_id(tweak)
        await publish_submission(nc, tweak, source, exp_id)
        uploaded = [{"location": u.location, "sha256": u.sha256, "size": u.size, "uploaded": u.uploaded} for u in uploads]
        if not wait:
            if as_json:
                print_json({"experiment_id": exp_id, "submitted": True, "datasets": uploaded})
            else:
                err.print(f"submitted experiment {exp_id} to {settings.nats_url}", highlight=False)
                out.print(exp_id, highlight=False)
            return EXIT_OK
        outcome = Outcome(experiment_id=exp_id, tweak=tweak)
        with ProgressView(outcome, tweak.spec.budget.max_trials) as view:
            signalled = await _follow_until_signal(follow(nc, outcome, view.update, timeout=timeout))
        if signalled is not None:
            if cancel_on_signal:
                await TweaklineClient(nc, str(settings.identity)).cancel(
                    exp_id, reason=f"submit --wait stopped by {signalled.name} (CI job cancelled)"
                )
                err.print(f"[yellow]{signalled.name}: cancelled experiment {exp_id}[/yellow]", highlight=False)
            else:
                err.print(f"[yellow]{signalled.name}: experiment {exp_id} goes on running[/yellow]", highlight=False)
            return 128 + signalled.value
    except TimeoutError as exc:
        raise TweaklineError(str(exc)) from None
    finally:
        await nc.close()
    data = summary(outcome) | {"datasets": uploaded}
    if report_dir is not None:
        write_outcome_report(outcome, file, report_dir, data)
    if outcome.cancelled is not None:
        data["cancelled"] = outcome.cancelled.model_dump(mode="json")
    if as_json:
        print_json(data)
    elif outcome.cancelled is not None:
        c = outcome.cancelled
        out.print(f"experiment {exp_id} {c.status.value}: {c.reason or 'no reason given'}", highlight=False)
    else:
        if outcome.completed is not None:
            out.print(leaderboard_table(outcome))
        out.print(decision_panel(outcome))
    return outcome.exit_code()


async def _follow_until_signal(following: Any) -> signal.Signals | None:
    """Run ``following`` until it ends, or until SIGTERM/SIGINT arrives: then the signal (it is stopped)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(following)
    got: list[signal.Signals] = []

    def _on(sig: signal.Signals) -> None:
        got.append(sig)
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on, sig)
    try:
        await task
    except asyncio.CancelledError:
        if not got:
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return got[0] if got else None


def write_outcome_report(outcome, file: Path, report_dir: Path, data: dict[str, Any]) -> None:
    """``--report-dir`` of ``submit`` and ``run``: report.md, build-status.json and summary.json."""
    from tweakline.reporting.ci import decision_status, file_label, markdown_report, status_key, write_report
    from tweakline.reporting.console import err

    if outcome.evaluation is None:
        return
    name = outcome.tweak.metadata.name
    url = _ci_url(dict(os.environ))
    status = decision_status(name, outcome.evaluation, outcome.deployment, url, key=status_key(file_label(str(file))))
    markdown = markdown_report(name, outcome.evaluation, outcome.deployment, outcome.completed, url=url or None)
    for path in write_report(report_dir, status, markdown, data):
        err.print(f"wrote {path}", highlight=False)

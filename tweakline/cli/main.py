"""The ``tweakline`` command line.

Exit codes: 0 the gate passed, 1 the model was rejected, 2 an error (bad input, unreachable
server, failed service). Errors are printed as one clear message, never as a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, NoReturn, cast

import typer

from tweakline import __version__
from tweakline.cli.bus import bus_app
from tweakline.cli.report import report as report_command
from tweakline.errors import InvalidTweakFileError, TweaklineError
from tweakline.proto.subjects import DEFAULT_POOL
from tweakline.runtime.settings import DEFAULT_STATE_DIR, Settings
from tweakline.stack import control as stackctl
from tweakline.stack.runners import RUNNERS_HELP, runners_callback

app = typer.Typer(
    name="tweakline",
    help="Tune scikit-learn models as part of CI/CD.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
pki_app = typer.Typer(help="The local development certificate authority.", no_args_is_help=True)
app.add_typer(pki_app, name="pki")
app.add_typer(bus_app, name="bus")  # tweakline bus init (the chart's setup Job)
from tweakline.cli.console import register as _register_console  # noqa: E402
from tweakline.cli.experiments import register as _register_experiments  # noqa: E402
from tweakline.cli.releases import register as _register_release_commands  # noqa: E402
from tweakline.cli.serve import register as _register_serve  # noqa: E402

_register_release_commands(app)
_register_serve(app)
_register_experiments(app)  # experiments [show], cancel
_register_console(app)  # the web console
stackctl.register(app)  # up, down, status

EXIT_OK, EXIT_REJECTED, EXIT_ERROR = 0, 1, 2

StateDirOption = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="TWEAKLINE_STATE_DIR",
        help="Where the local stack keeps its JetStream store and dev PKI (default: ./.tweakline).",
        show_default=False,
    ),
]


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    from tweakline.reporting.console import err

    err.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(code)


def _invalid(exc: InvalidTweakFileError) -> NoReturn:
    from tweakline.reporting.console import err

    if len(exc.problems) == 1:  # one problem, one line (CI logs and greps read it whole)
        err.print(f"[bold red]invalid tweak file[/bold red] {exc.source}: ", end="", highlight=False)
        err.print(str(exc.problems[0]), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR)
    err.print(f"[bold red]invalid tweak file[/bold red] {exc.source}: {len(exc.problems)} problem(s)", highlight=False)
    for problem in exc.problems:
        err.print(f"  - {problem}", highlight=False, markup=False)
    raise typer.Exit(EXIT_ERROR)


def _interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def _settings(**overrides: object) -> Settings:
    settings = Settings()
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(EXIT_OK)


@app.callback()
def _main(
    version: Annotated[
        bool,
        # Eager: handled while the options are parsed, before Click insists on a command
        # (otherwise `tweakline --version` fails with "Missing command", exit 2).
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """Tune scikit-learn models as part of CI/CD."""


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="The tweak file.")],
    platform: Annotated[
        bool,
        typer.Option(
            "--platform",
            help="Check as a shared platform would: code trainers only where TWEAKLINE_CODE_TRAINERS allows "
            "(this repository: --repository).",
        ),
    ] = False,
    repository: Annotated[str | None, typer.Option("--repository", help="The repository, for --platform.")] = None,
) -> None:
    """Check a tweak file and report every problem with its field path; starts nothing."""
    from tweakline.reporting.console import err
    from tweakline.validation import validate_tweak_file
    from tweakline.validation.pools import known_pools
    from tweakline.validation.trust import code_trainer_problems

    settings = _settings()
    try:
        # The platform's pools when known here (TWEAKLINE_POOLS); else the platform checks the pool.
        tweak = validate_tweak_file(file, settings.allowed_estimators, pools=known_pools(settings))
        refused = code_trainer_problems(tweak, settings.code_trainers, repository) if platform else []
        if refused:
            raise InvalidTweakFileError(str(file), refused)
    except InvalidTweakFileError as exc:
        _invalid(exc)
    spec = tweak.spec
    from tweakline.search.pruning import pruning_for

    stopping = ""
    if pruning_for(spec).enabled:
        stopping = f", early stopping {spec.search.pruner}"
        resource = spec.search.resource
        if resource is not None:
            amounts = ", ".join(f"{resource.value(r.amount):.3g}" for r in resource.rungs())
            stopping += f" on rungs of {resource.name.value} ({amounts})"
    err.print(
        f"[green]ok[/green] {file}: {tweak.metadata.name}: {spec.model.name} on {spec.dataset.source}, "
        f"{spec.search.algorithm} search over {len(spec.search.space)} parameter(s), "
        f"{spec.budget.max_trials} trials, objective {spec.objective.metric}{stopping}",
        highlight=False,
    )


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="The tweak file.")],
    state_dir: StateDirOption = None,
    ephemeral: Annotated[
        bool, typer.Option("--ephemeral", help="Run on a throwaway state directory (no history is kept).")
    ] = False,
    runners: Annotated[str | None, typer.Option("--runners", help=RUNNERS_HELP, callback=runners_callback)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout; progress goes to stderr.")] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Give up (exit 2) if no decision after this many seconds.")
    ] = None,
    report_dir: Annotated[
        Path | None, typer.Option("--report-dir", help="Write report.md, build-status.json and summary.json here.")
    ] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Write the HTML report here at the end.")] = None,
) -> None:
    """Run an experiment end to end on the embedded local stack (NATS with mTLS and every service)."""
    from tweakline.cli.overlap import start_while_checking
    from tweakline.reporting.console import err
    from tweakline.stack.local import LocalStack
    from tweakline.validation import precheck_tweak_file, validate

    settings = _settings()
    pools = cast("dict[str, int] | None", runners)  # parsed by runners_callback
    # The stack's pools are the ones --runners starts (the default pool when it names none).
    pool_names = list(pools or {DEFAULT_POOL: 1})
    try:
        # Refused here (limits, structure, pools, a csv: file's content): nothing starts at all.
        tweak = precheck_tweak_file(file, settings.allowed_estimators, pools=pool_names)
    except InvalidTweakFileError as exc:
        _invalid(exc)
    if tweak.spec.model.trainer is not None:
        # Your machine, your code: the embedded stack runs the trainer from the working tree.
        from tweakline.client.submission import with_local_code

        tweak = with_local_code(tweak, file.resolve().parent)
        if not settings.code_trainers:
            settings = settings.model_copy(update={"code_trainers": ["*"]})
    if "check_cache" not in settings.model_fields_set:  # TWEAKLINE_CHECK_CACHE=false turns it off
        settings = settings.model_copy(update={"check_cache": True})
    from tweakline.validation.verdicts import check_cache_of

    verdicts = check_cache_of(settings)
    # Checked and passed before, unchanged: neither this process nor the scheduler imports scikit-learn first.
    checked_before = verdicts is not None and verdicts.passed(tweak.spec, settings.allowed_estimators)
    # Closing TLS connections makes asyncio log a harmless line that users should not see.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)

    tmp: tempfile.TemporaryDirectory[str] | None = None
    if ephemeral:
        tmp = tempfile.TemporaryDirectory(prefix="tweakline-")
        root = Path(tmp.name)
    else:
        root = state_dir or DEFAULT_STATE_DIR
    created = not root.exists()  # removed again if the file is refused after the stack started
    stack = LocalStack(root, runners=pools, settings=settings, host_paths=True, scheduler_preload=not checked_before)
    # SIGTERM (a CI job cancelled) must clean up like Ctrl-C does. SIGINT gets the same handler:
    # asyncio.run's own one only cancels the main task, and a cancellation absorbed on the way
    # (a wait that treats it as a failure) ended a Ctrl-C'd run as an error, not as interrupted.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    code = EXIT_ERROR
    refused: InvalidTweakFileError | None = None

    def check() -> None:  # the checks that import scikit-learn, on the tweak file submitted below
        validate(tweak, settings.allowed_estimators, file.resolve().parent, source=str(file), pools=pool_names, verdicts=verdicts)
        # What the submission imports (nats-py, OpenTelemetry, FastStream, Rich), imported here while
        # the main thread mostly waits on nats-server, the topology and the fork server.
        import tweakline.client.follow
        import tweakline.reporting.console
        import tweakline.reporting.html  # noqa: F401

    try:
        with err.status(f"starting the local stack in {stack.layout.root} ({stack.runners} runner(s))"):
            # The stack starts while the file is checked; nothing is submitted unless the check passed.
            start_while_checking(stack.start, stack.stop, check, abandon=stack.abandon)
        code = asyncio.run(_run_experiment(stack, tweak, file, as_json, timeout, report_dir, report))
    except KeyboardInterrupt:
        err.print("[yellow]interrupted: stopping the local stack[/yellow]")
        code = 130
    except InvalidTweakFileError as exc:
        refused = exc
    except TweaklineError as exc:
        err.print(f"[bold red]error:[/bold red] {exc}", highlight=False)
        code = EXIT_ERROR
    finally:
        if refused is None:
            with err.status("stopping the local stack"):
                stack.stop()
        else:  # the stack (already stopped) leaves no trace of a refused file: no state directory it made
            stack.stop()
            if created:
                shutil.rmtree(root, ignore_errors=True)
        if tmp is not None:
            tmp.cleanup()
    if refused is not None:
        _invalid(refused)
    raise typer.Exit(code)


async def _run_experiment(
    stack, tweak, file: Path, as_json: bool, timeout: float | None, report_dir: Path | None = None, report: Path | None = None
) -> int:
    from tweakline.client.follow import Outcome, experiment_span, follow, new_experiment_id, submit
    from tweakline.client.submission import source_from_ci
    from tweakline.observability.telemetry import setup_telemetry
    from tweakline.observability.telemetry import shutdown as telemetry_shutdown
    from tweakline.proto.permissions import Identity
    from tweakline.reporting.console import ProgressView, decision_panel, err, leaderboard_table, out, print_json, summary
    from tweakline.reporting.html import write_report
    from tweakline.runtime.bus import connect

    nc = await connect(stack.settings_for(Identity.ADMIN), "tweakline-cli")
    setup_telemetry("cli", stack.base_settings.model_copy(update={"metrics_port": 0}))
    try:
        exp_id = new_experiment_id(tweak)
        outcome = Outcome(experiment_id=exp_id, tweak=tweak)
        with experiment_span(exp_id, tweak) as span:  # the root of the experiment's trace
            outcome.trace_id = format(span.get_span_context().trace_id, "032x")
            # in CI, the branch and pull request (the deployer's environments rule); by hand, none
            await submit(nc, tweak, source_from_ci(str(file.resolve()), os.environ), exp_id)
            if stack.deferred:  # what the first trial does not need, after the submission: the runners, deployer, evaluator
                with err.status(f"submitted {exp_id}; starting {stack.runners} runner(s)"):
                    stack.finish_start()
            with ProgressView(outcome, tweak.spec.budget.max_trials) as view:
                await follow(nc, outcome, view.update, timeout=timeout, alive=stack.check)
        if report is not None:
            await write_report(nc, exp_id, report, trace_url_template=stack.base_settings.trace_url)
    except TimeoutError as exc:
        raise TweaklineError(str(exc)) from None
    finally:
        await nc.close()
        telemetry_shutdown()
    if report_dir is not None:
        from tweakline.cli.submit import write_outcome_report

        write_outcome_report(outcome, file, report_dir, summary(outcome))
    if as_json:
        print_json(summary(outcome))
    else:
        if outcome.completed is not None:
            out.print(leaderboard_table(outcome))
        out.print(decision_panel(outcome))
    return outcome.exit_code()


@app.command()
def service(
    name: Annotated[str, typer.Argument(help="scheduler, trial-runner, evaluator, deployer, webhook or console.")],
) -> None:
    """Run one service until SIGTERM (the container entry point; the local stack uses it too)."""
    from tweakline.cli.services import SERVICES, app_factory
    from tweakline.observability.telemetry import setup_logging
    from tweakline.runtime.service import run_service

    if name not in SERVICES:
        _fail(f"unknown service {name!r}; expected one of {', '.join(SERVICES)}")
    settings = _settings()
    setup_logging(name, settings)
    try:
        run_service(name, settings, app_factory(name))
    except TweaklineError as exc:
        logging.getLogger("tweakline").error("%s", exc)
        raise typer.Exit(EXIT_ERROR) from None


from tweakline.cli.submit import submit as _submit_command  # noqa: E402

app.command("submit")(_submit_command)
app.command("report")(report_command)


@pki_app.command("init")
def pki_init(state_dir: StateDirOption = None) -> None:
    """Create the dev CA and a certificate per identity under <state-dir>/pki (idempotent)."""
    from tweakline.reporting.console import err
    from tweakline.runtime.pki import ensure_pki

    root = (state_dir or DEFAULT_STATE_DIR) / "pki"
    ensure_pki(root)
    err.print(f"dev PKI ready in {root} (ca.crt, and tls.crt/tls.key/ca.crt per identity)")


def main() -> None:
    """Console-script entry point: run the app, turning any tweakline error into a clean message."""
    try:
        app()
    except TweaklineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

"""``tweakline up`` / ``down`` / ``status``: a long-running local stack, and what it is doing.

``up`` starts a small supervisor process in the background (its own session, so closing the
terminal does not stop it). The supervisor owns the :class:`~tweakline.stack.LocalStack`: it
restarts a service that dies (as Kubernetes would restart a pod) and stops everything on
SIGTERM. ``down`` sends it SIGTERM and waits. ``status`` reads the bus: running experiments,
the runners' work queue, the stack's processes and the latest dead letters with their reasons.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, cast

import psutil
import typer

from tweakline.errors import StackError
from tweakline.runtime.settings import DEFAULT_STATE_DIR, Settings
from tweakline.stack.runners import RUNNERS_HELP, format_runners, parse_runners, runners_callback

log = logging.getLogger(__name__)

UP_TIMEOUT_S = 180.0
DOWN_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = 2.0
RESTART_BACKOFF_MAX_S = 30.0
CONNECT_TIMEOUT_S = 10.0

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        envvar="TWEAKLINE_STATE_DIR",
        help="The stack's state directory (default: ./.tweakline).",
        show_default=False,
    ),
]


def _root(state_dir: Path | None) -> Path:
    return (state_dir or DEFAULT_STATE_DIR).resolve()


def _info(root: Path) -> dict[str, Any] | None:
    """The running stack's ``run/stack.json``, or ``None`` when no supervisor owns ``root``."""
    from tweakline.stack.local import StackLayout

    try:
        info = json.loads(StackLayout(root).info.read_text())
    except (OSError, ValueError):
        return None
    try:
        alive = psutil.Process(int(info["pid"])).is_running()
    except (psutil.Error, KeyError, ValueError):
        alive = False
    return info if alive else None


def stack_url(root: Path) -> str | None:
    """The NATS address of the stack a supervisor runs in ``root`` (``None``: no stack there)."""
    info = _info(root)
    return None if info is None else info.get("url")


def stack_pools(root: Path) -> list[str] | None:
    """The runner pools of the stack a supervisor runs in ``root`` (``None``: no stack there)."""
    info = _info(root)
    return None if info is None else info.get("pools")


# ------------------------------------------------------------------------------ the supervisor


def supervise(root: Path, runners: int | Mapping[str, int] | None, cluster: int = 1, schedulers: int = 1) -> int:
    """Run the stack in the foreground until SIGTERM/SIGINT, restarting services that die."""
    from tweakline.stack.local import LocalStack

    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    from tweakline.console.settings import ConsoleSettings

    # The web console comes up with the stack, on TWEAKLINE_CONSOLE_PORT (8090) or a free port if that is taken.
    stack = LocalStack(
        root,
        runners=runners,
        settings=Settings(),
        console_port=ConsoleSettings().port,
        cluster=cluster,
        schedulers=schedulers,
    )
    try:
        stack.start()
        log.info("stack up at %s", stack.url)
        restarts: dict[str, float] = {}

        def due(name: str) -> bool:
            # Exponential back-off per process (2 s, 4 s, ... at most 30 s): a crash loop does not spin.
            backoff = min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_S * 2 ** max(0, stack.restarts.get(name, 0) - 1))
            return time.monotonic() - restarts.get(name, -backoff) >= backoff

        while not stopping:
            time.sleep(0.5)
            for label in stack.servers_down():  # nats-server first: the services need it
                if stopping or not due(label):
                    continue
                log.warning("%s is not running; restarting it", label)
                restarts[label] = time.monotonic()
                try:
                    stack.revive_server(label)
                except StackError as exc:
                    log.error("could not restart %s: %s", label, exc)
            for service in list(stack.services):
                if service.alive() or stopping:
                    continue
                if not due(service.name):
                    continue
                log.warning("service %s exited with code %s; restarting it", service.name, service.process.returncode)
                restarts[service.name] = time.monotonic()
                stack.respawn(service.name)
    finally:
        stack.stop()
    return 0


# --------------------------------------------------------------------------------- commands


def up(
    state_dir: StateDir = None,
    runners: Annotated[str | None, typer.Option("--runners", help=RUNNERS_HELP, callback=runners_callback)] = None,
    foreground: Annotated[bool, typer.Option("--foreground", help="Stay attached; Ctrl-C stops the stack.")] = False,
    cluster: Annotated[
        int, typer.Option("--cluster", min=1, max=5, help="nats-servers in a JetStream cluster (3: R3 storage).")
    ] = 1,
    schedulers: Annotated[int, typer.Option("--schedulers", min=1, help="Scheduler replicas sharing the experiments.")] = 1,
) -> None:
    """Start a long-running local stack (nats-server with mTLS and every service) in the background."""
    from tweakline.reporting.console import err
    from tweakline.stack.local import StackLayout

    root = _root(state_dir)
    if foreground:
        raise typer.Exit(supervise(root, cast("dict[str, int] | None", runners), cluster, schedulers))
    existing = _info(root)
    if existing is not None:
        err.print(f"already up: {existing['url']} (supervisor pid {existing['pid']}, state {root})", highlight=False)
        return
    layout = StackLayout(root)
    layout.logs.mkdir(parents=True, exist_ok=True)
    pools = cast("dict[str, int] | None", runners)  # parsed by runners_callback
    command = [sys.executable, "-m", "tweakline.stack.control", str(root), format_runners(pools), str(cluster), str(schedulers)]
    with open(layout.logs / "supervisor.log", "ab") as handle:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + UP_TIMEOUT_S
    with err.status(f"starting the local stack in {root}"):
        while (info := _info(root)) is None or info.get("pid") != process.pid:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = (layout.logs / "supervisor.log").read_text(errors="replace").splitlines()[-15:]
                if process.poll() is None:
                    process.terminate()
                raise StackError("the local stack did not start:\n" + "\n".join(tail))
            time.sleep(0.2)
    err.print(f"[green]up[/green] {info['url']} (supervisor pid {process.pid}); stop it with 'tweakline down'", highlight=False)
    if info.get("console"):
        from tweakline.stack.console import credentials_path

        err.print(f"console: {info['console']} (log in with a token from {credentials_path(root)})", highlight=False)
    typer.echo(f"TWEAKLINE_NATS_URL={info['url']}")
    typer.echo(f"TWEAKLINE_STATE_DIR={root}")


def down(state_dir: StateDir = None) -> None:
    """Stop the local stack started by ``tweakline up`` (its trials are handed back first)."""
    from tweakline.reporting.console import err

    root = _root(state_dir)
    info = _info(root)
    if info is None:
        err.print(f"no local stack is running in {root}", highlight=False)
        return
    supervisor = psutil.Process(int(info["pid"]))
    if "tweakline" not in " ".join(supervisor.cmdline()):
        raise StackError(f"pid {supervisor.pid} in {root}/run/stack.json is not a tweakline supervisor; not stopping it")
    supervisor.send_signal(signal.SIGTERM)
    with err.status("stopping the local stack"):
        try:
            supervisor.wait(DOWN_TIMEOUT_S)
        except psutil.TimeoutExpired:
            supervisor.kill()
            raise StackError(f"the stack did not stop within {DOWN_TIMEOUT_S:.0f}s; killed pid {supervisor.pid}") from None
    err.print("[green]down[/green]", highlight=False)


def status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    letters: Annotated[int, typer.Option("--dead-letters", min=0, help="How many recent dead letters to show.")] = 10,
) -> None:
    """Show running experiments, the runners' queue, the stack's processes and recent dead letters."""
    from tweakline.reporting.console import out, print_json

    root = _root(state_dir)
    info = _info(root)
    settings = Settings()
    if info is not None:
        settings = settings.model_copy(update={"nats_url": info["url"], "state_dir": root, "tls_dir": None})
    elif state_dir is not None:
        settings = settings.model_copy(update={"state_dir": root})
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    if info is not None and info.get("pools"):
        settings = settings.model_copy(update={"pools": info["pools"]})
    report = asyncio.run(collect_status(settings, letters))
    report["stack"] = _processes(info)
    if as_json:
        print_json(report)
    else:
        out.print(*render_status(report))


def _processes(info: dict[str, Any] | None) -> dict[str, Any] | None:
    if info is None:
        return None
    services = {}
    restarts = info.get("restarts") or {}
    pids = {"nats-server": info.get("server")} if info.get("server") else {}
    pids.update({f"nats-{i}": pid for i, pid in enumerate(info.get("nodes") or [])})
    servers = {}
    for name, pid in pids.items():
        try:
            alive = bool(pid) and psutil.Process(pid).is_running() and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        servers[name] = {"pid": pid, "alive": alive, "restarts": restarts.get(name, 0)}
    for name, pid in sorted(info.get("services", {}).items()):
        try:
            alive = psutil.Process(pid).is_running() and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        services[name] = {"pid": pid, "alive": alive, "restarts": restarts.get(name, 0)}
        pool = (info.get("runner_pools") or {}).get(name)
        if pool is not None:
            services[name]["pool"] = pool
    return {"url": info.get("url"), "supervisor": info.get("pid"), "servers": servers, "services": services}


async def collect_status(settings: Settings, letters: int = 10) -> dict[str, Any]:
    """What the bus knows: running experiments (KV), each runner pool's consumer, recent dead letters."""
    from nats.js.errors import BadRequestError, NotFoundError

    from tweakline.proto.messages import DeadLetter, ExperimentStatus
    from tweakline.proto.permissions import Identity
    from tweakline.proto.subjects import Stream, pool_consumer
    from tweakline.runtime.bus import connect
    from tweakline.runtime.records import ExperimentStore

    try:  # nats-py may retry a refused first connection for ever: bound it
        nc = await asyncio.wait_for(
            connect(
                settings.model_copy(update={"identity": Identity.ADMIN}),
                "tweakline-status",
                allow_reconnect=False,
                max_reconnect_attempts=0,
            ),
            CONNECT_TIMEOUT_S,
        )
    except TimeoutError:
        raise StackError(
            f"cannot reach NATS at {settings.nats_url} within {CONNECT_TIMEOUT_S:.0f}s; "
            "start a local stack with 'tweakline up' or set TWEAKLINE_NATS_URL"
        ) from None
    try:
        js = nc.jetstream()
        store = await ExperimentStore.open_bucket(js)
        experiments = []
        for key in await store.keys():
            found = await store.get_stored(key)  # counts and trials in flight: no segment read
            if found is None or found[0].status is not ExperimentStatus.RUNNING:
                continue
            state = found[0]
            experiments.append(
                {
                    "experiment_id": state.experiment_id,
                    "name": state.tweak.metadata.name,
                    "started_at": state.started_at.isoformat(),
                    "results": state.trials_recorded,
                    "max_trials": state.tweak.spec.budget.max_trials,
                    "in_flight": len(set(state.issued) - set(state.results)),
                }
            )
        pools: dict[str, dict[str, int]] = {}
        for pool in settings.pools:  # one consumer per runner pool
            try:
                queue = await js.consumer_info(Stream.TRIALS.value, pool_consumer(pool))
            except NotFoundError:
                continue  # a pool configured here but not (yet) on this bus
            pools[pool] = {
                "queued": queue.num_pending,
                "training": queue.num_ack_pending,
                "idle_pulls": queue.num_waiting,
                "redelivered": queue.num_redelivered,
            }
        fields = ("queued", "training", "idle_pulls", "redelivered")
        runners: dict[str, Any] = {f: sum(p[f] for p in pools.values()) for f in fields}
        runners["pools"] = pools
        recent: list[dict[str, Any]] = []
        try:
            stream = await js.stream_info(Stream.DEAD_LETTERS.value)
            total = stream.state.messages
            last = stream.state.last_seq
            first = max(stream.state.first_seq, last - letters + 1, 1)
            for seq in range(first, last + 1) if letters and total else []:
                try:
                    raw = await js.get_msg(Stream.DEAD_LETTERS.value, seq)
                except (NotFoundError, BadRequestError):  # purged meanwhile
                    continue
                letter = DeadLetter.model_validate_json(raw.data or b"{}")
                recent.append({"seq": seq, "service": letter.service, "subject": letter.subject, "reason": letter.reason})
        except NotFoundError:
            total = 0
        return {"experiments": experiments, "runners": runners, "dead_letters": {"total": total, "recent": recent}}
    finally:
        await nc.close()


def render_status(report: dict[str, Any]) -> list[Any]:
    """Rich tables of a :func:`collect_status` report."""
    from rich.table import Table

    parts: list[Any] = []
    stack = report.get("stack")
    if stack is not None:
        table = Table(title=f"Local stack {stack['url']} (supervisor {stack['supervisor']})")
        table.add_column("service")
        table.add_column("pid", justify="right")
        table.add_column("state")
        table.add_column("restarts", justify="right")
        table.add_column("pool")
        for name, proc in {**stack.get("servers", {}), **stack["services"]}.items():
            state = "[green]running[/green]" if proc["alive"] else "[red]down (restarting)[/red]"
            table.add_row(name, str(proc["pid"]), state, str(proc.get("restarts", 0)), proc.get("pool", ""))
        parts.append(table)
    experiments = Table(title="Running experiments")
    for column in ("experiment", "name", "results", "in flight", "started"):
        experiments.add_column(column)
    for exp in report["experiments"]:
        experiments.add_row(
            exp["experiment_id"], exp["name"], f"{exp['results']}/{exp['max_trials']}", str(exp["in_flight"]), exp["started_at"]
        )
    parts.append(experiments)
    runners = report["runners"]
    lines = [
        # Counted in requests: one trial, or a batch of fast ones (docs/architecture.md, Performance).
        f"Runners: {runners['training']} request(s) training, {runners['queued']} queued, "
        f"{runners['idle_pulls']} idle pull(s), {runners['redelivered']} redelivered"
    ]
    if len(runners.get("pools") or {}) > 1:  # per pool, where there are several
        for pool, queue in runners["pools"].items():
            lines.append(
                f"  pool {pool}: {queue['training']} training, {queue['queued']} queued, {queue['idle_pulls']} idle pull(s)"
            )
    parts.append("\n".join(lines))
    dead = Table(title=f"Dead letters ({report['dead_letters']['total']} in total, latest first)")
    for column in ("seq", "service", "subject", "reason"):
        dead.add_column(column, overflow="fold")
    for letter in reversed(report["dead_letters"]["recent"]):
        dead.add_row(str(letter["seq"]), letter["service"], letter["subject"], letter["reason"])
    parts.append(dead)
    return parts


def register(app: typer.Typer) -> None:
    """Add ``up``, ``down`` and ``status`` to the CLI."""
    app.command()(up)
    app.command()(down)
    app.command()(status)


if __name__ == "__main__":  # the background supervisor started by 'tweakline up'
    from tweakline.observability.telemetry import setup_logging

    setup_logging("supervisor", Settings())
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    pools = None if sys.argv[2] == "0" else parse_runners(sys.argv[2])
    sys.exit(supervise(Path(sys.argv[1]), pools, *(int(a) for a in sys.argv[3:5])))

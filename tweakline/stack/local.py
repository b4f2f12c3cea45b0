"""The embedded local stack: nats-server with mTLS, and every service as its own process.

Services are started through ``tweakline service NAME`` exactly as a container would run
them. The state directory keeps the JetStream store and the dev PKI between runs, so release
history, the model in production and trial history carry over. A lock file guarantees one
stack per state directory; children die with their parent (no orphans).
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

from tweakline.errors import StackError
from tweakline.proto.permissions import Identity, permission_map, runner_identity
from tweakline.proto.subjects import DEFAULT_POOL
from tweakline.runtime.bus import connect, ensure_topology
from tweakline.runtime.natsserver import EmbeddedCluster, EmbeddedNatsServer, ServerConfig
from tweakline.runtime.pki import TlsFiles, ensure_pki
from tweakline.runtime.settings import Settings
from tweakline.stack import early
from tweakline.stack.early import die_with_parent as _die_with_parent
from tweakline.stack.forkserver import ForkedProcess, ForkServer, ForkServerError
from tweakline.stack.runners import runner_pools

log = logging.getLogger(__name__)


@dataclass
class ServiceProcess:
    """One started service process and its log."""

    name: str
    process: subprocess.Popen[bytes] | ForkedProcess
    log_path: Path
    log_handle: IO[bytes] = field(repr=False)

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The last lines of its log, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass(frozen=True)
class StackLayout:
    """Where the local stack keeps its files under the state directory."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def jetstream(self) -> Path:
        return self.root / "jetstream"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock(self) -> Path:
        return self.root / "stack.lock"

    @property
    def info(self) -> Path:
        return self.root / "run" / "stack.json"


class LocalStack:
    """Start and stop nats-server and the four services on this machine."""

    def __init__(
        self,
        state_dir: Path,
        *,
        runners: int | Mapping[str, int] | None = None,
        port: int = -1,
        settings: Settings | None = None,
        monitor_port: int | None = None,
        host_paths: bool = False,
        console_port: int | None = None,
        cluster: int = 1,
        schedulers: int = 1,
        scheduler_preload: bool = True,
    ):
        self.layout = StackLayout(state_dir.resolve())
        # {pool: runners}; a count is that many runners of the default pool (as before pools existed).
        self.pools = runner_pools(runners, default=max(1, os.cpu_count() or 1))
        self.runners = sum(self.pools.values())
        self.pool_of: dict[str, str] = {}  # runner label -> its pool (shown by `status`)
        self.cluster_size = cluster  # > 1: a JetStream cluster of that many nats-servers, R3 storage
        self.schedulers = schedulers  # scheduler replicas sharing the experiments through leases
        self.cluster: EmbeddedCluster | None = None
        self.restarts: dict[str, int] = {}  # label -> restarts by the supervisor (shown by `status`)
        self.port = port
        self.monitor_port = monitor_port  # NATS HTTP monitoring (what KEDA reads in a cluster); off by default
        self.base_settings = settings or Settings()
        if self.pools and set(self.pools) != {DEFAULT_POOL}:
            # The stack's platform has exactly the pools it runs runners for (validation refuses others).
            self.base_settings = self.base_settings.model_copy(update={"pools": list(self.pools)})
        # `tweakline run`'s private stack: its scheduler accepts csv: paths (every client that can
        # reach it holds this user's own state directory); `tweakline up` and a platform refuse them.
        self.host_paths = host_paths
        # The web console on this loopback port (0: any free one); None: no console.
        self.console_port = console_port
        self.console_url: str | None = None
        self.server: EmbeddedNatsServer | None = None
        self.services: list[ServiceProcess] = []
        self.forks: ForkServer | None = None  # the pre-imported parent services are forked from
        self.url: str | None = None
        self._lock_fd: int | None = None
        self._abandoned = threading.Event()  # set by abandon(): a start under way gives up
        # False: the scheduler needs no scikit-learn to take the first submission (its check was
        # passed and recorded before: tweakline.validation.verdicts), so it is forked first, without
        # waiting for the fork server's import of scikit-learn, and everything else (the runners,
        # deployer and evaluator, which wait for that import) is left to finish_start(), after the
        # submission.
        self.scheduler_preload = scheduler_preload
        self._deferred: list[Callable[[], None]] = []

    # -- settings for this stack's clients ---------------------------------------------------

    def settings_for(self, identity: Identity) -> Settings:
        """Settings of a client of this stack connecting as ``identity``."""
        assert self.url is not None, "stack not started"
        return self.base_settings.model_copy(
            update={"nats_url": self.url, "identity": identity, "state_dir": self.layout.root, "tls_dir": None}
        )

    # -- lifecycle --------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        self.layout.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = ""
            try:
                owner = f" (pid {json.loads(self.layout.info.read_text())['pid']})"
            except (OSError, ValueError, KeyError):
                pass
            raise StackError(
                f"another tweakline stack is using {self.layout.root}{owner}; submit to it "
                f"('tweakline submit --wait FILE --state-dir {self.layout.root}'), stop it ('tweakline down') "
                "or choose another --state-dir"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def abandon(self) -> None:
        """Make a :meth:`start` under way (in another thread) give up at its next step: it stops what it started and raises."""
        self._abandoned.set()
        forks = self.forks
        if forks is not None:  # a spawn waiting for the fork server's preload stops waiting
            forks.interrupt()

    def _go_on(self) -> None:
        if self._abandoned.is_set():
            raise StackError("the start was abandoned")

    def start(self) -> str:
        """Start everything; return the NATS URL. On any failure, stop what was started."""
        self._acquire_lock()
        try:
            ca = ensure_pki(self.layout.pki)
            self.layout.logs.mkdir(parents=True, exist_ok=True)
            self._start_fork_server()  # its imports overlap with the certificates, the server's start and the topology
            for pool in self.base_settings.pools:  # each pool's runners have their own identity
                if not TlsFiles(self.layout.pki / runner_identity(pool)).exists():
                    ca.issue(runner_identity(pool))
            config = ServerConfig(
                store_dir=self.layout.jetstream,
                tls=TlsFiles(self.layout.pki / Identity.NATS_SERVER),
                port=self.port,
                monitor_port=self.monitor_port,
                permissions=permission_map(self.base_settings.pools),
                insecure_plaintext_for_benchmarks=self.base_settings.insecure_plaintext_for_benchmarks,
            )
            self._go_on()
            if self.cluster_size > 1:
                self.cluster = EmbeddedCluster(config, self.layout.run, size=self.cluster_size)
                self.url = self.cluster.start()
            else:
                self.server = EmbeddedNatsServer(config, self.layout.run)
                self.url = self.server.start()
            self._go_on()
            asyncio.run(self._topology())
            if not self.scheduler_preload:  # the first trial's path: the scheduler before anything else
                self._spawn_schedulers()
            # The next spawn that preloads waits for the fork server's import of every service's
            # modules (PRELOADED); the others are forked from it at once and share those pages.
            rest: list[Callable[[], None]] = []
            index = 0
            for pool, count in self.pools.items():
                for _ in range(count):
                    rest.append(functools.partial(self._spawn_runner, pool, index))
                    index += 1
            rest.append(functools.partial(self._spawn, "deployer"))
            if self.scheduler_preload:
                rest.append(self._spawn_schedulers)
            rest.append(functools.partial(self._spawn, "evaluator"))
            if self.scheduler_preload or not self.forks:
                for spawn in rest:
                    self._go_on()
                    spawn()
            else:
                # The caller submits while finish_start() forks the rest: a trial request waits in
                # the work queue for the first runner, and the evaluator is needed last.
                self._deferred = rest
            if self.console_port is not None:
                self._spawn_console()
            self._write_info()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _spawn_schedulers(self) -> None:
        for index in range(self.schedulers):
            self._go_on()
            self._spawn("scheduler", index)

    @property
    def deferred(self) -> bool:
        """Whether :meth:`start` left services for :meth:`finish_start`."""
        return bool(self._deferred)

    def finish_start(self) -> None:
        """Start what :meth:`start` left for later (all but the scheduler, when it went first); idempotent.

        Call it from the thread that called :meth:`start` (a service started without the fork
        server dies with that thread).
        """
        try:
            while self._deferred:
                self._go_on()
                self._deferred.pop(0)()
            self._write_info()
        except BaseException:
            self.stop()
            raise

    async def _topology(self) -> None:
        nc = await connect(self.settings_for(Identity.ADMIN), "tweakline-setup")
        try:
            # The stack knows its cluster's size (a client's view of the peers may still be partial).
            await ensure_topology(nc.jetstream(), self.base_settings, replicas=min(3, self.cluster_size))
        finally:
            await nc.close()

    def _common_env(self) -> dict[str, str]:
        """The environment every process of this stack starts with (the fork server's too)."""
        env = early.process_env(os.environ)  # PYTHONUNBUFFERED, one BLAS thread per process
        env.update(
            {
                "TWEAKLINE_STATE_DIR": str(self.layout.root),
                # Children follow this stack's (benchmark-only) transport, not the ambient environment.
                "TWEAKLINE_INSECURE_PLAINTEXT_FOR_BENCHMARKS": str(self.base_settings.insecure_plaintext_for_benchmarks).lower(),
            }
        )
        return env

    def _start_fork_server(self) -> None:
        """Start the fork server services are forked from (if enabled); without one, each is a fresh interpreter."""
        started = early.take()  # `tweakline run` started one before its own imports: adopt it
        if started is not None and self.base_settings.fork_server and started[0].alive():
            self.forks = started[0]
            log.info("fork server started early (its log: %s)", started[1])
            return
        if started is not None:
            started[0].stop()
        if not self.base_settings.fork_server:
            return
        try:
            self.forks = ForkServer(self._common_env(), self.layout.logs / "fork-server.log", preexec_fn=_die_with_parent)
        except (ForkServerError, OSError) as exc:
            log.warning("services start as separate interpreters: %s", exc)
            self.forks = None

    # What the fork server imports before forking these (services/<name>/ is tweakline.<name>):
    # every service's modules, scikit-learn with them (the scheduler checks submissions with it, the
    # evaluator refits, the runners' training children are forked from a zygote that needs it), so
    # all of them share one import instead of each importing its own after the fork (docs/benchmarks.md, memory).
    PRELOADED = dict.fromkeys(
        ("trial-runner", "deployer", "scheduler", "evaluator"),
        (
            "tweakline.trial_runner.app",
            "tweakline.trial_runner.worker",
            "tweakline.ml.training",
            "sklearn.datasets",  # the bundled datasets: each process loading one would import it (~5 MiB)
            "tweakline.deployer.app",
            "tweakline.scheduler.app",
            "tweakline.evaluator.app",
        ),
    )

    # Called by a runner the fork server forks before anything else: it forks its training zygote
    # while it still shares every page with the fork server (docs/benchmarks.md, memory).
    EARLY_ZYGOTE = "tweakline.trial_runner.worker:prepare_early"

    def _spawn(
        self,
        service: str,
        index: int = 0,
        extra: dict[str, str] | None = None,
        *,
        label: str | None = None,
        first: tuple[str, ...] = (),
    ) -> None:
        identity = Identity(service)
        label = label or (service if service != "trial-runner" else f"trial-runner-{index}")
        if service == "scheduler" and index:  # the first is "scheduler", as with one
            label = f"scheduler-{index}"
        settings = self.settings_for(identity)
        env = self._common_env()
        env.update({"TWEAKLINE_NATS_URL": settings.nats_url, "TWEAKLINE_IDENTITY": identity.value})
        env.update(self._settings_env())
        env.pop("TWEAKLINE_TLS_DIR", None)
        env.update(extra or {})
        # Never inherited from the caller's environment: only this stack's own choice, for its scheduler.
        env["TWEAKLINE_ALLOW_HOST_PATHS"] = str(self.host_paths and identity is Identity.SCHEDULER).lower()
        if settings.metrics_port:  # one Prometheus port per local process: base, base+1, ...
            env["TWEAKLINE_METRICS_PORT"] = str(settings.metrics_port + len(self.services))
        log_path = self.layout.logs / f"{label}.log"
        handle = open(log_path, "ab")
        process: subprocess.Popen[bytes] | ForkedProcess | None = None
        if self.forks is not None and self.forks.alive():
            try:
                preload = self.PRELOADED.get(service, ()) if service != "scheduler" or self.scheduler_preload else ()
                # A preload is an import of scikit-learn first: slow on a loaded machine, still bounded.
                timeout = 180.0 if preload else 60.0
                process = self.forks.spawn(
                    label, ["service", service], env, log_path, timeout=timeout, preload=preload, first=first
                )
            except ForkServerError as exc:
                self._go_on()  # interrupted by abandon(): no fallback, the start gives up
                log.warning("starting %s as a separate interpreter: %s", label, exc)
        if process is None:
            process = subprocess.Popen(
                [sys.executable, "-m", "tweakline", "service", service],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        self.services.append(ServiceProcess(label, process, log_path, handle))

    def _spawn_runner(self, pool: str, index: int) -> None:
        """Start runner ``index`` of ``pool``: ``trial-runner-<index>``, or ``trial-runner-<pool>-<index>`` off the default pool."""
        label = f"trial-runner-{index}" if pool == DEFAULT_POOL else f"trial-runner-{pool}-{index}"
        self.pool_of[label] = pool
        # Its training zygote is forked first thing, while the runner still shares every page with the fork server.
        self._spawn("trial-runner", index, {"TWEAKLINE_RUNNER_POOL": pool}, label=label, first=(self.EARLY_ZYGOTE,))

    def _spawn_console(self) -> None:
        from tweakline.stack.console import console_credentials, pick_port

        port = pick_port(self.console_port or 0)
        self.console_port = port  # a restart listens where the first one did
        self.console_url = f"http://127.0.0.1:{port}/"
        extra = {"TWEAKLINE_CONSOLE_HOST": "127.0.0.1", "TWEAKLINE_CONSOLE_PORT": str(port)}
        self._spawn("console", extra=extra | console_credentials(self.layout.root))

    def _settings_env(self) -> dict[str, str]:
        """The stack's non-default settings as ``TWEAKLINE_*`` variables, so every service sees them."""
        skip = {"nats_url", "identity", "state_dir", "tls_dir"}
        values = self.base_settings.model_dump(mode="json", exclude_defaults=True, exclude=skip)
        return {
            f"TWEAKLINE_{name.upper()}": value if isinstance(value, str) else json.dumps(value) for name, value in values.items()
        }

    def service(self, label: str) -> ServiceProcess:
        """The started service called ``label`` (``scheduler``, ``trial-runner-0``...)."""
        for candidate in self.services:
            if candidate.name == label:
                return candidate
        raise StackError(f"no service {label!r} in this stack; have {', '.join(s.name for s in self.services)}")

    def respawn(self, label: str) -> ServiceProcess:
        """Start service ``label`` again after it exited (the supervisor's and the fault tests' restart)."""
        old = self.service(label)
        if old.alive():
            raise StackError(f"service {label} is still running (pid {old.process.pid})")
        old.log_handle.close()
        self.services.remove(old)
        self.restarts[label] = self.restarts.get(label, 0) + 1
        if label == "console":
            self._spawn_console()
            self._write_info()
            return self.services[-1]
        if label in self.pool_of:
            self._spawn_runner(self.pool_of[label], int(label.rpartition("-")[2]))
            self._write_info()
            return self.services[-1]
        service, _, index = label.partition("-runner-")
        if label.startswith("scheduler-"):
            service, index = "scheduler", label.removeprefix("scheduler-")
        self._spawn("trial-runner" if service == "trial" else service, int(index or 0))
        self._write_info()
        return self.services[-1]

    def servers_down(self) -> list[str]:
        """Labels of this stack's nats-servers that are not running (``nats-server`` or ``nats-<i>``)."""
        if self.cluster is not None:
            return [
                f"nats-{i}"
                for i, node in enumerate(self.cluster.nodes)
                if node.process is None or node.process.poll() is not None
            ]
        if self.server is not None and (self.server.process is None or self.server.process.poll() is not None):
            return ["nats-server"]
        return []

    def revive_server(self, label: str) -> None:
        """Start the dead nats-server ``label`` again on its port and store (the supervisor's restart)."""
        self.restarts[label] = self.restarts.get(label, 0) + 1
        if label.startswith("nats-") and label != "nats-server":
            self.restart_node(int(label.removeprefix("nats-")))
            return
        assert self.server is not None and self.url is not None
        self.server.process = None  # already dead: start() again on the same port
        port = urlparse(self.url).port
        self.server.config = replace(self.server.config, port=port or self.port)
        self.server.start()
        self._write_info()

    def kill_node(self, index: int) -> None:
        """SIGKILL cluster node ``index`` (a crash)."""
        assert self.cluster is not None, "not a cluster stack"
        self.cluster.kill(index)
        self._write_info()

    def restart_node(self, index: int) -> None:
        """Start cluster node ``index`` again (after :meth:`kill_node`), or restart it if it runs."""
        assert self.cluster is not None, "not a cluster stack"
        self.cluster.restart(index)
        self._write_info()

    def restart_server(self) -> None:
        """Restart nats-server on the same port and store (services reconnect on their own)."""
        if self.cluster is not None:  # one node after the other: the cluster keeps a quorum
            for index in range(len(self.cluster.nodes)):
                self.restart_node(index)
            return
        assert self.server is not None and self.url is not None
        port = urlparse(self.url).port
        self.server.stop()
        self.server.config = replace(self.server.config, port=port or self.port)
        self.server.start()
        self._write_info()

    def _write_info(self) -> None:
        # Replaced in one step: `status`, `submit --state-dir` and the supervisor's readers must never
        # see a half-written file (an empty read was seen while the supervisor restarted nats-server).
        partial = self.layout.info.with_name(f".{self.layout.info.name}.{os.getpid()}.part")
        partial.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "url": self.url,
                    "server": self.server.pid if self.server else None,
                    "nodes": self.cluster.pids if self.cluster else [],
                    "restarts": self.restarts,
                    "services": {s.name: s.process.pid for s in self.services},
                    "fork_server": self.forks.process.pid if self.forks else None,
                    "console": self.console_url,
                    "runner_pools": self.pool_of,  # runner label -> pool
                    "pools": list(self.base_settings.pools),  # the pools this stack's platform has
                }
            )
        )
        os.replace(partial, self.layout.info)

    def check(self) -> None:
        """Raise :class:`StackError` with its log tail if a service process died."""
        for service in self.services:
            if not service.alive():
                raise StackError(
                    f"service {service.name} exited with code {service.process.returncode}; "
                    f"log {service.log_path}:\n{service.tail()}"
                )
        if self.server is not None and self.server.process is not None and self.server.process.poll() is not None:
            raise StackError(f"nats-server exited; see {self.server.log_file}")

    def stop(self, grace: float | None = None) -> None:
        """Stop the services (SIGTERM, then SIGKILL after ``grace``), then the server; idempotent.

        The default grace lets a runner use its own ``shutdown_grace_s`` to finish or hand back its trial.
        """
        if grace is None:
            grace = self.base_settings.shutdown_grace_s + 5.0
        for service in self.services:
            if service.alive():
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for service in self.services:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                service.process.wait(remaining)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait(5)
            service.log_handle.close()
        self.services.clear()
        if self.forks is not None:
            self.forks.stop()
            self.forks = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None
        try:
            self.layout.info.unlink()
        except OSError:
            pass
        self._release_lock()

    def pids(self) -> list[int]:
        """Process ids of everything this stack started (server first)."""
        pids = [self.server.pid] if self.server and self.server.pid else []
        pids += [pid for pid in (self.cluster.pids if self.cluster else []) if pid]
        pids += [self.forks.process.pid] if self.forks else []
        return pids + [s.process.pid for s in self.services]

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

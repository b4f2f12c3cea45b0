"""The fork server of ``tweakline run``, started before the command's own imports.

The first trial of ``tweakline run`` waits for the scheduler, which is forked from the fork server
once that has imported FastStream, nats-py, pydantic and OpenTelemetry (about a second of CPU). The
command itself imports about as much (Typer, Rich, pydantic, the validation) before it reaches
:meth:`LocalStack.start <tweakline.stack.local.LocalStack.start>`. Started here, from the command's
entry point (:mod:`tweakline.cli.entry`) with nothing but the standard library imported, the fork
server's imports run on the other core while the command's run, and the stack adopts it
(:func:`take`) instead of starting its own.

Its environment is the command's, with the thread settings the stack gives every process
(:func:`process_env`): the modules it preloads read nothing else, and every service it forks gets
its own environment with the request. A fork server nobody adopted (a refused file, a busy state
directory, ``--help``) is stopped when the command exits, and dies with it in any case.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tweakline.stack.forkserver import ForkServer, ForkServerError

PR_SET_PDEATHSIG = 1

# The scheduler's own modules (Optuna, numpy; not scikit-learn): imported while the command still
# imports its own, so the scheduler forked from it takes the first submission at once.
EARLY_PRELOAD = ("tweakline.scheduler.app",)

_early: tuple[ForkServer, Path] | None = None


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child when the process that started it dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    os.setsid()  # the terminal's Ctrl-C reaches the CLI only; the CLI stops the children in order


def process_env(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with what every process of a local stack starts with (before the stack's own variables)."""
    env = dict(environ)
    env["PYTHONUNBUFFERED"] = "1"
    # One trial per runner process: BLAS threads would fight over the cores.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = environ.get(name, "1")
    return env


def _switched_off() -> bool:
    # The typed setting (Settings.fork_server) decides in the stack; this only avoids starting one for nothing.
    return os.environ.get("TWEAKLINE_FORK_SERVER", "").strip().lower() in {"0", "false", "no", "off"}


def launch() -> None:
    """Start the fork server now, for a stack this process will start (best effort: the stack starts its own otherwise)."""
    global _early
    if _early is not None or _switched_off():
        return
    fd, name = tempfile.mkstemp(prefix="tweakline-fork-server-", suffix=".log")
    os.close(fd)
    log = Path(name)
    try:
        server = ForkServer(process_env(os.environ), log, preexec_fn=die_with_parent, preload=EARLY_PRELOAD)
    except (ForkServerError, OSError):
        log.unlink(missing_ok=True)
        return
    _early = (server, log)
    atexit.register(_discard, server, log)


def take() -> tuple[ForkServer, Path] | None:
    """The fork server :func:`launch` started, and its log, handed over once (``None``: none, or already taken)."""
    global _early
    early, _early = _early, None
    return early


def _discard(server: ForkServer, log: Path) -> None:
    """At exit: stop the fork server (a no-op if its stack stopped it) and remove its log if empty."""
    with contextlib.suppress(Exception):
        server.stop()
    with contextlib.suppress(OSError):
        if log.stat().st_size == 0:
            log.unlink()

"""The runner's zygote: a single-threaded process that forks training children on request.

A training child used to be a fresh interpreter (multiprocessing "spawn") importing scikit-learn:
about 100 MiB of its own per runner (docs/benchmarks.md, memory). Forking is cheaper — the child
shares every page it does not write — but the runner is a threaded asyncio process, and a fork of
one may inherit a lock some other thread held. So the runner forks this zygote once, when its
worker is prepared (before the service's threads start), and the zygote, which never starts a
thread, forks each training child. In the local stack that is the runner's first act, before it
reads its settings (``worker.prepare_early``, called by the fork server): the zygote then holds
almost no copied pages of its own, and each spawn request brings the child's arguments. The zygote imports what training needs first (``preload``: a
no-op when the local stack's fork server imported it already) and freezes the collector's
generations, so a child's collections never write to (and so never unshare) the pages of those
objects.

Lifetimes: the zygote dies with the runner and a child with the zygote (``PR_SET_PDEATHSIG``),
so a SIGKILLed runner leaves no orphan. The zygote reaps a child only when the runner asks, so
the runner may signal it by pid (it cannot be reused meanwhile); it waits on a pidfd where Linux
has them (5.3+) and learns the exit status from the zygote.

Protocol (private to this module, over a ``SOCK_SEQPACKET`` socket pair: one JSON message per
packet): ``{"op": "spawn", "kwargs": {...}}`` (the target's arguments) with the child's end of its pipe attached as a file descriptor,
answered ``{"pid": N}``; ``{"op": "reap", "pid": N}``, answered ``{"code": C}`` with the exit
code, or minus the signal that killed it, as :class:`multiprocessing.Process` reports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

import psutil

from tweakline.errors import TweaklineError

PR_SET_PDEATHSIG = 1
MAX_MESSAGE = 1 << 16  # requests and replies are small JSON (a spawn request: the child's few settings)
REPLY_TIMEOUT_S = 30.0  # a fork or a reap is milliseconds; bounded in case the zygote hangs
POLL_S = 0.02  # without a pidfd, how often a wait looks at the child's state


class ZygoteError(TweaklineError):
    """The zygote is gone or did not answer: no training child can be started by it."""


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _status(raw: int) -> int:
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def _run_child(target: Callable[..., None], fd: int, kwargs: dict[str, Any]) -> None:  # pragma: no cover - after fork
    """Become a training child: run ``target`` on the pipe ``fd`` with ``kwargs``; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        _die_with_parent()
        target(Connection(fd), **kwargs)
        code = 0
    except BaseException:  # a child must never return into the zygote's loop
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _serve(
    sock: socket.socket, parent: int, target: Callable[..., None], preload: Sequence[str]
) -> None:  # pragma: no cover - after fork
    """The zygote's loop: fork on ``spawn``, reap on ``reap``; exit when the runner closes its end."""
    code = 0
    try:
        _die_with_parent()
        if os.getppid() != parent:  # the runner died between the fork and the line above
            os._exit(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when training stops
        for name in preload:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the child's own import then reports it, per trial
                print(f"training zygote: cannot preload {name}: {exc!r}", file=sys.stderr)
        gc.freeze()  # everything imported so far: never traversed by a child's collections
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
            except OSError:
                break
            if not data:
                break
            try:
                request = json.loads(data)
                if request.get("op") == "spawn" and len(fds) == 1:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    pid = os.fork()
                    if pid == 0:
                        sock.close()
                        _run_child(target, fds[0], dict(request.get("kwargs") or {}))
                    reply: dict[str, Any] = {"pid": pid}
                elif request.get("op") == "reap":
                    _, raw = os.waitpid(int(request["pid"]), 0)
                    reply = {"code": _status(raw)}
                else:
                    reply = {"error": f"not a zygote request: {data[:80]!r}"}
            except (ValueError, KeyError, TypeError, OSError) as exc:
                reply = {"error": repr(exc)}
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            sock.send(json.dumps(reply).encode())
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


class ForkedChild:
    """A training child forked by the zygote, with the part of :class:`multiprocessing.Process`'s API the worker uses."""

    def __init__(self, zygote: Zygote, pid: int):
        self.pid = pid
        self.exitcode: int | None = None
        self._zygote = zygote
        # The zygote reaps the child only when asked (join), so until then its pid cannot be
        # reused: signalling it by pid is safe. A pidfd (Linux 5.3+) lets a wait sleep until the exit.
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(pid)
        self._closed = False

    def _exited(self, timeout: float = 0.0) -> bool:
        if self.exitcode is not None or self._closed:
            return True
        if self._pidfd is not None:
            readable, _, _ = select.select([self._pidfd], [], [], max(0.0, timeout))
            return bool(readable)
        deadline = time.monotonic() + max(0.0, timeout)
        while True:  # no pidfd: poll the process state (a zombie has exited)
            try:
                if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE:
                    return True
            except psutil.NoSuchProcess:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)

    def is_alive(self) -> bool:
        """Whether the child still runs."""
        return not self._exited()

    def kill(self) -> None:
        """SIGKILL the child, unless it was reaped already."""
        if self.exitcode is None and not self._closed:
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(self.pid, signal.SIGKILL)

    def join(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` seconds for the exit; once exited, :attr:`exitcode` is set."""
        if self.exitcode is not None or not self._exited(timeout if timeout is not None else REPLY_TIMEOUT_S):
            return
        try:
            self.exitcode = self._zygote.reap(self.pid)
        except ZygoteError:  # the zygote is gone: the kernel killed its children with it
            self.exitcode = -signal.SIGKILL

    def close(self) -> None:
        """Release the pidfd; the handle is no longer used."""
        self._closed = True
        if self._pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pidfd)
            self._pidfd = None


class Zygote:
    """The runner's side: fork the zygote (now), spawn children through it, stop it.

    ``target(conn, **kwargs)`` is what each child runs, on its end of the pipe and with the
    arguments its spawn request gave (so the zygote may be forked before they are known); ``preload``
    are modules the zygote imports before its first fork.
    """

    def __init__(self, target: Callable[..., None], preload: Sequence[str] = ()):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the zygote
            ours.close()
            _serve(theirs, parent, target, preload)
        theirs.close()
        ours.settimeout(REPLY_TIMEOUT_S)
        self.pid = pid
        self._sock = ours
        self._lock = threading.Lock()  # a join may run in a worker thread while the loop spawns
        self._exit: int | None = None

    def alive(self) -> bool:
        """Whether the zygote still runs (it is this process's child: reaped here)."""
        if self._exit is None:
            with contextlib.suppress(ChildProcessError):
                pid, raw = os.waitpid(self.pid, os.WNOHANG)
                if pid == 0:
                    return True
                self._exit = _status(raw)
            if self._exit is None:
                self._exit = -1
        return False

    def _ask(self, request: dict[str, Any], fd: int | None = None) -> dict[str, Any]:
        with self._lock:
            try:
                if fd is None:
                    self._sock.send(json.dumps(request).encode())
                else:
                    socket.send_fds(self._sock, [json.dumps(request).encode()], [fd])
                data = self._sock.recv(MAX_MESSAGE)
            except OSError as exc:
                raise ZygoteError(f"the training zygote (pid {self.pid}) is gone: {exc!r}") from None
        if not data:
            raise ZygoteError(f"the training zygote (pid {self.pid}) is gone")
        reply = json.loads(data)
        if "error" in reply:
            raise ZygoteError(f"the training zygote refused {request.get('op')}: {reply['error']}")
        return reply

    def spawn(self, conn: Connection, kwargs: dict[str, Any] | None = None) -> ForkedChild:
        """Fork a child that runs the target on ``conn`` with ``kwargs`` (JSON values; the caller then closes its copy of ``conn``)."""
        return ForkedChild(self, int(self._ask({"op": "spawn", "kwargs": kwargs or {}}, conn.fileno())["pid"]))

    def reap(self, pid: int) -> int:
        """The exit status of child ``pid``, which has exited (waits for it otherwise)."""
        return int(self._ask({"op": "reap", "pid": pid})["code"])

    def close(self, timeout: float = 5.0) -> None:
        """Stop the zygote (its children die with it) and reap it."""
        with contextlib.suppress(OSError):
            self._sock.close()  # the zygote sees EOF and exits
        if self._exit is not None:
            return
        with contextlib.suppress(OSError):
            pidfd = os.pidfd_open(self.pid)
            try:
                select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self._exit = -signal.SIGKILL

"""A fork server for the local stack: service processes forked from one pre-imported parent.

Every service is a Python process that imports FastStream, nats-py, pydantic, OpenTelemetry and
tweakline's runtime before it does anything (about a second of CPU and 60 MB each). The local stack
starts one fork server, which pays that once, and forks every service from it: a service then
starts in a fraction of the time, and its imported pages are shared copy-on-write.

What is always preloaded is safe to fork: pure-Python libraries that start no threads and read no
environment at import. A spawn request may name more modules to import first (``preload``): the
stack asks for every service's modules (Optuna, numpy, SciPy and scikit-learn with them, the
training modules: ``LocalStack.PRELOADED``) with its first service that needs them, so all the
services and the runners' training processes share those pages instead of holding a copy each.
Before it forks, the server also builds a TLS context and a broker and reads the settings once
(:func:`_warm_up`), and freezes the collector's generations. A BLAS library sizes its thread pool from
the environment when it is loaded, so once such modules are asked for, the server's thread
variables (:data:`THREAD_ENV`, as it was started) are pinned: a service whose environment sets
them differently is refused (the stack then starts that one as a fresh interpreter). With the
stack's one thread per process, no BLAS thread exists to be lost in a fork.

A spawn request may also name functions the child calls first, before its entry (``first``,
``module:function``): a trial runner forks its training zygote there, while it still shares every
page with the server (``tweakline.trial_runner.worker.prepare_early``).

The protocol is private to this module and the stack that started it: JSON lines on the server's
stdin (spawn requests) and stdout (the pid of each spawned service, and each one's exit status as
:class:`subprocess.Popen` reports it: the exit code, or minus the signal that killed it).
A service keeps the stack's guarantees: it dies with the fork server (which dies with the stack),
it is its own session, and its output goes to its log.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15

# Imported once by the server; every forked service finds them in sys.modules.
PRELOAD = (
    "faststream",
    "faststream.nats",
    "nats",
    "pydantic",
    "pydantic_settings",
    "tweakline.cli.main",
    "tweakline.cli.services",
    "tweakline.runtime.service",
    "tweakline.runtime.bus",
    "tweakline.observability.telemetry",
    "tweakline.proto.messages",
    # Imported by every service only once it connects (found with PYTHONPROFILEIMPORTTIME in the
    # services' logs): each import after a fork copies pages of the import system's state too.
    "anyio._core._sockets",
    "anyio.streams.memory",
    "encodings.idna",
    "faststream.nats.opentelemetry.provider",
    "importlib.readers",
)

# The variables a BLAS library (numpy's OpenBLAS, MKL, OpenMP) reads once, when it is loaded.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")

# What a forked child runs: the command line, as `python -m tweakline ARGV` would.
DEFAULT_ENTRY = "tweakline.cli.main:main"

MAX_LINE = 1 << 20  # a request holds an environment: bounded, as the server reads it from a pipe


def _prctl(option: int, value: Any) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


# ------------------------------------------------------------------------------------------ server


def _child(request: dict[str, Any], server_pid: int, server_fds: list[int]) -> None:  # pragma: no cover - after fork
    """Become the requested service: its session, environment, log and arguments; never returns."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        for fd in server_fds:  # the server's own pipes; 0-2 are replaced below (closing them first would hand their numbers out)
            if fd > 2:
                with contextlib.suppress(OSError):
                    os.close(fd)
        os.setsid()
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # dies with the fork server, as a service dies with its stack
        if os.getppid() != server_pid:  # the server died between the fork and the line above
            os._exit(1)
        _prctl(PR_SET_NAME, ctypes.c_char_p(("tl-" + request["name"]).encode()[:15]))
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        random.seed()  # not the server's (and every sibling's) state
        os.chdir(request.get("cwd") or os.getcwd())
        sys.argv = ["tweakline", *request["argv"]]
        for name in request.get("first") or ():
            module, _, function = name.partition(":")
            getattr(importlib.import_module(module), function)()
        module, _, function = request.get("entry", DEFAULT_ENTRY).partition(":")
        main = getattr(importlib.import_module(module), function)
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # a child must never return into the server's loop
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _status(raw: int) -> int:
    """A wait status as :class:`subprocess.Popen` reports it."""
    return -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)


def _warm_up() -> None:
    """Build once, here, what every service builds first: the caches it fills stay shared.

    OpenSSL's tables are filled by the first TLS context, FastStream's and pydantic's by the first
    broker; in each forked service that was 5-7 MiB of its own memory (docs/benchmarks.md, memory).
    Reading the settings once here (from the server's own environment) leaves a service's own read
    1.5 MiB instead of 3.3. Nothing connects: the broker is never started.
    """
    import ssl

    from faststream.nats import NatsBroker
    from faststream.security import BaseSecurity

    from tweakline.observability import telemetry
    from tweakline.runtime.settings import Settings

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    NatsBroker("nats://127.0.0.1:1", middlewares=telemetry.broker_middlewares(), security=BaseSecurity(ssl_context=context))
    Settings()


def serve(extra: tuple[str, ...] = ()) -> int:
    """The server's loop: fork on each request, report pids and exits; exit when stdin closes.

    ``extra``: modules imported after :data:`PRELOAD`, before the server says it is ready.
    """
    for name in (*PRELOAD, *extra):
        __import__(name)
    with contextlib.suppress(Exception):  # only an optimisation: a service builds its own anyway
        _warm_up()
    out = sys.stdout.fileno()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    children: set[int] = set()

    def send(message: dict[str, Any]) -> None:
        os.write(out, (json.dumps(message) + "\n").encode())

    def reap() -> None:
        while children:
            try:
                pid, raw = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            children.discard(pid)
            send({"exit": pid, "code": _status(raw)})

    server_pid = os.getpid()
    send({"ready": server_pid})
    buffer = b""
    stdin = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([stdin, wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
        reap()
        if stdin not in ready:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:  # the stack closed the pipe: it is stopping
            break
        buffer += chunk
        if len(buffer) > MAX_LINE and b"\n" not in buffer:
            send({"error": f"request longer than {MAX_LINE} bytes"})
            buffer = b""
            continue
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            try:
                request = json.loads(line)
            except ValueError:
                send({"error": "not a JSON request"})
                continue
            try:  # what this child (and every later one) needs beyond PRELOAD, imported here once
                for name in request.get("preload") or ():
                    importlib.import_module(name)
            except Exception as exc:
                send({"id": request.get("id"), "error": f"cannot preload for {request.get('name')}: {exc!r}"})
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            # Everything imported so far moves to the collector's permanent generation: a child's
            # collections then never write to those objects, whose pages stay shared (see docs/benchmarks.md).
            gc.freeze()
            pid = os.fork()
            if pid == 0:
                _child(request, server_pid, [stdin, out, wake_r, wake_w])
            children.add(pid)
            send({"id": request.get("id"), "pid": pid})
    reap()
    return 0


# ------------------------------------------------------------------------------------------ client


class ForkedProcess:
    """A service forked by the fork server, with the part of :class:`subprocess.Popen`'s API the stack uses."""

    def __init__(self, pid: int, name: str):
        self.pid = pid
        self.name = name
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _set_exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        """The exit status, or None while it runs."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit; :class:`subprocess.TimeoutExpired` after ``timeout`` seconds."""
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(f"service {self.name} (pid {self.pid})", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` unless it has exited (its pid may belong to another process by then)."""
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)


class ForkServerError(RuntimeError):
    """The fork server did not start or stopped answering."""


class ForkServer:
    """The stack's side of a fork server: start it, spawn services through it, stop it."""

    def __init__(
        self, env: dict[str, str], log_path: Path, preexec_fn: Callable[[], None] | None = None, preload: tuple[str, ...] = ()
    ):
        """Start the server with ``env``; ``preload``: modules it imports at start besides :data:`PRELOAD` (pins the thread settings)."""
        self._log: IO[bytes] = open(log_path, "ab")
        # Once a BLAS library may be loaded (a preload), a child must see the thread settings it was loaded with.
        self._threads = {name: env.get(name) for name in THREAD_ENV}
        self._pinned = bool(preload)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tweakline.stack.forkserver", *preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            preexec_fn=preexec_fn,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin
        self._stdout = self.process.stdout
        self._lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self._replied = threading.Condition()
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._next = 0
        self._closed = False
        self._ready = threading.Event()  # set once the preload is done (or the server is gone)
        self._interrupted = False  # interrupt(): spawns stop waiting
        self._log_path = log_path
        # Not waited for here: the preload overlaps with whatever the stack starts meanwhile.
        self._reader = threading.Thread(target=self._read, name="fork-server-reader", daemon=True)
        self._reader.start()

    def alive(self) -> bool:
        """Whether the server still runs and answers."""
        return self.process.poll() is None and not self._closed

    def interrupt(self) -> None:
        """Make every spawn waiting for the server (in other threads), and every later one, give up at once."""
        with self._replied:
            self._interrupted = True
            self._replied.notify_all()

    def _read(self) -> None:
        first = self._stdout.readline()
        if first.startswith(b'{"ready"'):
            self._ready.set()
            with self._replied:
                self._replied.notify_all()
        for line in self._stdout if self._ready.is_set() else ():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "exit" in message:
                with self._replied:
                    child = self._children.pop(message["exit"], None)
                    if child is None:  # exited before its spawn reply was handled
                        self._early_exits[message["exit"]] = message["code"]
                if child is not None:
                    child._set_exit(message["code"])
            else:
                with self._replied:
                    self._replies[message.get("id", -1)] = message
                    self._replied.notify_all()
        # The server is gone: its children got SIGTERM from the kernel (they die with it).
        with self._replied:
            self._closed = True
            orphans = list(self._children.values())
            self._children.clear()
            self._replied.notify_all()
        self._ready.set()
        for child in orphans:
            child._set_exit(-signal.SIGTERM)

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        timeout: float = 60.0,
        entry: str = DEFAULT_ENTRY,
        preload: tuple[str, ...] = (),
        first: tuple[str, ...] = (),
    ) -> ForkedProcess:
        """Fork ``name`` running ``tweakline ARGV`` (or ``entry``, a ``module:function``) with ``env``, output to ``log_path``.

        ``preload``: modules the server imports before this fork (kept for later children too);
        ``first``: functions (``module:function``) the child calls before its entry.
        """
        differ = [var for var, value in self._threads.items() if env.get(var) != value]
        if differ and (self._pinned or preload):
            raise ForkServerError(f"{name} sets {', '.join(differ)} unlike the fork server, which loads BLAS libraries with them")
        with self._replied:
            self._replied.wait_for(lambda: self._ready.is_set() or self._interrupted, timeout)
        if self._interrupted:
            raise ForkServerError(f"{name}: the fork server was interrupted")
        if not self._ready.is_set() or self._closed:
            raise ForkServerError(f"the fork server is not ready (exit {self.process.poll()}); see {self._log_path}")
        with self._lock:
            self._next += 1
            ident = self._next
            request = {
                "id": ident,
                "name": name,
                "argv": argv,
                "env": env,
                "log": str(log_path),
                "cwd": os.getcwd(),
                "entry": entry,
                "preload": list(preload),
                "first": list(first),
            }
            try:
                self._stdin.write((json.dumps(request) + "\n").encode())
                self._stdin.flush()
            except (BrokenPipeError, ValueError) as exc:
                raise ForkServerError(f"the fork server is gone: {exc}") from None
            with self._replied:
                if not self._replied.wait_for(lambda: ident in self._replies or self._closed or self._interrupted, timeout):
                    raise ForkServerError(f"the fork server did not answer within {timeout:.0f} s")
                reply = self._replies.pop(ident, None)
                self._pinned = self._pinned or bool(preload)
                if reply is None or "pid" not in reply:
                    raise ForkServerError(f"the fork server could not start {name}: {reply}")
                child = ForkedProcess(reply["pid"], name)
                early = self._early_exits.pop(child.pid, None)
                if early is None:
                    self._children[child.pid] = child
            if early is not None:
                child._set_exit(early)
            return child

    def stop(self, timeout: float = 5.0) -> None:
        """Close the request pipe (the server exits after its children are reaped) and wait."""
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._reader.join(5)
        self._log.close()


if __name__ == "__main__":
    sys.exit(serve(tuple(sys.argv[1:])))

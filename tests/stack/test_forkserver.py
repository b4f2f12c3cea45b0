"""The local stack's fork server: children get their own environment and log, and report exits as Popen does."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.waiting import wait_until
from tweakline.stack.forkserver import ForkServer, ForkServerError

TARGET = "tests.stack.forked"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ForkServer]:
    env = {**os.environ, "TL_SERVER_ONLY": "server"}
    forks = ForkServer(env, tmp_path / "server.log")
    try:
        yield forks
    finally:
        forks.stop()


def test_a_child_runs_with_its_own_environment_arguments_and_log(server: ForkServer, tmp_path: Path) -> None:
    log = tmp_path / "show.log"
    env = {"PATH": os.environ["PATH"], "TL_MARKER": "child-1"}
    child = server.spawn("show", ["a", "b"], env, log, entry=f"{TARGET}:show")
    assert child.wait(60) == 0
    # Only what it was given: the server's own variables are not inherited.
    assert log.read_text().strip() == "argv=['a', 'b'] marker=child-1 server_only=None"


def test_the_functions_named_first_run_in_the_child_before_its_entry(server: ForkServer, tmp_path: Path) -> None:
    log = tmp_path / "first.log"
    env = {"PATH": os.environ["PATH"], "TL_MARKER": "given"}
    child = server.spawn("first", [], env, log, entry=f"{TARGET}:show", first=(f"{TARGET}:first",))
    assert child.wait(60) == 0
    assert log.read_text().strip() == f"argv=[] marker=first-in-{child.pid} server_only=None"


def test_exit_codes_and_signals_are_reported_as_popen_reports_them(server: ForkServer, tmp_path: Path) -> None:
    env = dict(os.environ)
    assert server.spawn("three", ["3"], env, tmp_path / "three.log", entry=f"{TARGET}:exit_with").wait(60) == 3
    log = tmp_path / "sleep.log"
    sleeper = server.spawn("sleeper", [], env, log, entry=f"{TARGET}:sleep")
    wait_until(lambda: log.is_file() and "sleeping" in log.read_text(), timeout=60, what="the child to run")
    assert sleeper.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(0.2)
    # A separate session, and a child of the server (not of this process).
    proc = psutil.Process(sleeper.pid)
    assert os.getsid(sleeper.pid) == sleeper.pid and proc.ppid() == server.process.pid
    sleeper.kill()
    assert sleeper.wait(30) == -signal.SIGKILL
    assert sleeper.returncode == -signal.SIGKILL


def test_the_command_line_is_the_default_entry(server: ForkServer, tmp_path: Path) -> None:
    log = tmp_path / "version.log"
    assert server.spawn("version", ["--version"], dict(os.environ), log).wait(60) == 0
    assert log.read_text().strip() == __import__("tweakline").__version__
    bad = tmp_path / "bad.log"
    assert server.spawn("bad", ["service", "nope"], dict(os.environ), bad).wait(60) == 2
    assert "unknown service 'nope'" in bad.read_text()


def test_children_die_with_the_server_and_a_dead_server_refuses_to_spawn(server: ForkServer, tmp_path: Path) -> None:
    log = tmp_path / "sleep.log"
    sleeper = server.spawn("sleeper", [], dict(os.environ), log, entry=f"{TARGET}:sleep")
    wait_until(lambda: log.is_file() and "sleeping" in log.read_text(), timeout=60, what="the child to run")
    server.process.kill()
    server.process.wait(10)
    wait_until(
        lambda: not psutil.pid_exists(sleeper.pid) or psutil.Process(sleeper.pid).status() == psutil.STATUS_ZOMBIE,
        timeout=30,
        what="the child to die with its server",
    )
    assert sleeper.wait(30) < 0
    with pytest.raises(ForkServerError):
        server.spawn("late", ["--version"], dict(os.environ), tmp_path / "late.log")


def test_a_preload_comes_with_the_fork_and_pins_the_blas_thread_settings(tmp_path: Path) -> None:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    forks = ForkServer(env, tmp_path / "server.log")
    try:
        before = tmp_path / "before.log"
        assert forks.spawn("before", [], {**env, "OPENBLAS_NUM_THREADS": "4"}, before, entry=f"{TARGET}:preloaded").wait(60) == 0
        assert before.read_text().strip() == "colorsys=False"  # nothing preloaded yet, nothing pinned
        log = tmp_path / "preloaded.log"
        assert forks.spawn("preloaded", [], dict(env), log, entry=f"{TARGET}:preloaded", preload=("colorsys",)).wait(60) == 0
        assert log.read_text().strip() == "colorsys=True"
        later = tmp_path / "later.log"
        assert forks.spawn("later", [], dict(env), later, entry=f"{TARGET}:preloaded").wait(60) == 0
        assert later.read_text().strip() == "colorsys=True"  # kept for later children
        # Once a library may have loaded BLAS, a child asking for other thread settings is refused.
        with pytest.raises(ForkServerError, match="OPENBLAS_NUM_THREADS"):
            forks.spawn("other", [], {**env, "OPENBLAS_NUM_THREADS": "4"}, tmp_path / "other.log", entry=f"{TARGET}:preloaded")
        assert not (tmp_path / "other.log").exists()
        with pytest.raises(ForkServerError, match="cannot preload"):
            forks.spawn("missing", [], dict(env), tmp_path / "missing.log", preload=("tweakline_no_such_module",))
    finally:
        forks.stop()


def test_without_a_preload_nothing_more_is_preloaded(server: ForkServer, tmp_path: Path) -> None:
    log = tmp_path / "preloaded.log"
    assert server.spawn("preloaded", [], dict(os.environ), log, entry=f"{TARGET}:preloaded").wait(60) == 0
    assert log.read_text().strip() == "colorsys=False"


def test_an_interrupted_server_refuses_spawns_at_once(server: ForkServer, tmp_path: Path) -> None:
    server.interrupt()
    with pytest.raises(ForkServerError, match="interrupted"):
        server.spawn("late", ["--version"], dict(os.environ), tmp_path / "late.log", timeout=600)
    assert not (tmp_path / "late.log").exists()

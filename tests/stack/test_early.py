"""`tweakline run`'s fork server, started before the command's imports: adopted by the stack, or stopped.

What must hold: the stack adopts the one started early (no second fork server), whose children
find the scheduler's modules already imported; one nobody adopts does not outlive the command; the
command's entry point starts it for `run` only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.waiting import wait_until
from tweakline.stack import early
from tweakline.stack.local import LocalStack

TARGET = "tests.stack.forked"


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TWEAKLINE_FORK_SERVER", raising=False)
    # Something cheap to preload here: the scheduler's modules are what `run` preloads, tested below.
    monkeypatch.setattr(early, "EARLY_PRELOAD", ("colorsys",))
    early.launch()
    try:
        yield
    finally:
        left = early.take()
        if left is not None:
            left[0].stop()


def test_the_stack_adopts_the_fork_server_started_early(launched: None, tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "state", runners=1)
    try:
        stack._start_fork_server()
        assert stack.forks is not None
        assert early.take() is None, "the early fork server was not handed over"
        # Its children come with the early preload (imported by no one in the child).
        log = tmp_path / "child.log"
        child = stack.forks.spawn("probe", [], early.process_env(os.environ), log, entry=f"{TARGET}:preloaded")
        assert child.wait(60) == 0
        assert log.read_text().strip() == "colorsys=True"
        # A child whose BLAS thread settings differ is refused (the stack then starts it as an interpreter).
        with pytest.raises(Exception, match="OMP_NUM_THREADS"):
            stack.forks.spawn("odd", [], {**early.process_env(os.environ), "OMP_NUM_THREADS": "4"}, log)
        server = stack.forks.process
    finally:
        stack.stop()
    assert server.poll() is not None, "the stack's stop did not stop the adopted fork server"


def test_with_fork_servers_switched_off_the_early_one_is_stopped(launched: None, tmp_path: Path) -> None:
    from tweakline.runtime.settings import Settings

    stack = LocalStack(tmp_path / "state", runners=1, settings=Settings(fork_server=False))
    pending = early._early
    assert pending is not None
    stack._start_fork_server()
    assert stack.forks is None
    assert pending[0].process.poll() is not None


def test_run_starts_it_and_a_command_that_exits_early_leaves_none(tmp_path: Path) -> None:
    """`tweakline run` of a missing file exits 2 before any stack: its early fork server must go with it."""
    script = (
        "import sys, psutil; from tweakline.cli.entry import main; "
        "sys.argv = ['tweakline', 'run', sys.argv[1], '--state-dir', sys.argv[2]]; "
        "from tweakline.stack import early; "
        "orig = early.launch\n"
        "def launch():\n"
        "    orig(); print('fork-server', early._early[0].process.pid, flush=True)\n"
        "early.launch = launch\n"
        "main()"
    )
    env = {k: v for k, v in os.environ.items() if k != "TWEAKLINE_FORK_SERVER"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "missing.tweak.yaml"), str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("fork-server ")]
    assert lines, f"run did not start a fork server early: {done.stdout!r} {done.stderr!r}"
    pid = int(lines[0].split()[1])

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_until(gone, timeout=30, what="the unused early fork server to exit")
    assert not (tmp_path / "state").exists(), "a refused run left a state directory"

"""The training zygote: children are forked from it (no fresh interpreter, no resource tracker),
a dead zygote is replaced, nothing outlives a SIGKILLed runner, and one forked early is adopted."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.trial_runner.test_worker import ALLOWED, request
from tests.waiting import until, wait_until
from tweakline.proto.messages import TrialStatus
from tweakline.trial_runner import worker as worker_module
from tweakline.trial_runner.worker import (
    TrialWorker,
    WorkerConfig,
    WorkerCrashedError,
    _tree_memory_mb,
    take_early,
)


@pytest.fixture
async def worker():
    w = TrialWorker(WorkerConfig(allowed_estimators=ALLOWED, memory_limit_mb=600))
    w.prepare()
    yield w
    await w.close()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_the_child_is_forked_from_the_zygote_and_no_tracker_runs(worker: TrialWorker) -> None:
    outcome = await worker.run(request({"C": 1.0}, estimator="sklearn.svm.SVC"))
    assert outcome.status is TrialStatus.OK, outcome.error
    assert worker._zygote is not None and worker.pid is not None
    zygote = psutil.Process(worker._zygote.pid)
    child = psutil.Process(worker.pid)
    assert zygote.ppid() == os.getpid() and child.ppid() == zygote.pid
    # The same program as this process (forked), not a new interpreter's command line.
    assert child.cmdline() == psutil.Process().cmdline()
    # This process's only children are zygotes (of this worker and no other): no resource tracker.
    ours = [p for p in psutil.Process().children() if p.pid != zygote.pid]
    assert not any("resource_tracker" in " ".join(p.cmdline()) for p in ours)
    # The memory limit counts what the trial holds on its own, not the libraries it shares.
    assert _tree_memory_mb(child.pid) < child.memory_info().rss / 2**20


async def test_a_killed_zygote_is_replaced_and_the_next_trial_runs(worker: TrialWorker) -> None:
    await worker.start()
    assert worker._zygote is not None
    old_zygote, old_child = worker._zygote.pid, worker.pid
    assert old_child is not None
    os.kill(old_zygote, signal.SIGKILL)
    # The child dies with its zygote (PR_SET_PDEATHSIG).
    await until(lambda: _gone(old_child), what="the child to die with its zygote", timeout=30)
    outcome = await worker.run(request({"delay": 0.0}))
    assert outcome.status is TrialStatus.OK, outcome.error
    assert worker._zygote.pid != old_zygote and worker.spawned == 2


RUNNER = textwrap.dedent(
    """
    import asyncio, sys
    from tweakline.trial_runner.worker import TrialWorker, WorkerConfig

    async def main():
        worker = TrialWorker(WorkerConfig(allowed_estimators=("sklearn.",)))
        worker.prepare()
        await worker.start()
        print(worker._zygote.pid, worker.pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


def test_a_sigkilled_runner_leaves_neither_zygote_nor_child() -> None:
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout is not None
        line = wait_until(runner.stdout.readline, what="the runner's training child", timeout=180)
        zygote, child = (int(pid) for pid in line.split())
        assert psutil.Process(child).ppid() == zygote
        runner.kill()
        runner.wait(30)
        wait_until(lambda: _gone(zygote) and _gone(child), what="the zygote and child to die with the runner", timeout=30)
    finally:
        runner.kill()
        runner.wait(30)


async def test_without_pidfds_children_are_still_waited_for_killed_and_reported(
    worker: TrialWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(errno.ENOSYS, "pidfd_open is not implemented")  # Linux before 5.3

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    outcome = await worker.run(request({"delay": 60.0}), timeout=1.0)
    assert outcome.status is TrialStatus.FAILED and "time limit" in (outcome.error or "")
    req = request({"delay": 30.0}, number=1)
    task = asyncio.create_task(worker.run(req))
    await until(lambda: worker.current == req.trial_id, what="the trial to start", timeout=60)
    assert worker._process is not None and worker._process._pidfd is None
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="killed by SIGKILL"):
        await asyncio.wait_for(task, 60)
    assert (await worker.run(request({"delay": 0.0}, number=2))).status is TrialStatus.OK


async def test_a_zygote_forked_early_is_taken_once_and_its_children_get_the_workers_settings() -> None:
    # What the local stack's fork server runs first in a runner, before the runner reads its settings.
    worker_module.prepare_early()
    early = take_early()
    assert early is not None and early[1].alive()
    assert take_early() is None  # once
    worker = TrialWorker(WorkerConfig(allowed_estimators=ALLOWED, memory_limit_mb=600), early=early)
    try:
        worker.prepare()  # keeps the early zygote: it runs
        assert worker._zygote is early[1]
        # The allowed estimators come with the spawn request: the test estimator is allowed, a trial runs.
        assert (await worker.run(request({"delay": 0.0}))).status is TrialStatus.OK
        assert psutil.Process(worker.pid).ppid() == early[1].pid
    finally:
        await worker.close()
    assert not early[1].alive()


async def test_the_childs_settings_come_with_each_spawn(worker: TrialWorker) -> None:
    strict = TrialWorker(WorkerConfig(allowed_estimators=("sklearn.",)), early=(worker._signals, worker._zygote))
    outcome = await strict.run(request({"delay": 0.0}))
    # The same zygote as the permissive worker's, but this worker's child refuses the test estimator.
    assert outcome.status is TrialStatus.FAILED and "is not allowed" in (outcome.error or "")
    assert (await worker.run(request({"delay": 0.0}, number=1))).status is TrialStatus.OK
    strict._discard()

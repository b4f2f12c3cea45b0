"""The training zygote: children are forked from it (no fresh interpreter, no resource tracker),
a dead zygote is replaced, nothing outlives a SIGKILLed runner, and one forked early is adopted."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import json
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
from tweakline.runtime.settings import Settings
from tweakline.trial_runner import worker as worker_module
from tweakline.trial_runner.worker import (
    TrialWorker,
    WorkerConfig,
    WorkerCrashedError,
    _tree_memory_mb,
    take_early,
    worker_config,
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


async def test_a_worker_prepared_early_is_taken_once_and_only_with_the_services_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    # What the local stack's fork server runs first in a runner: the worker and its zygote, from the settings.
    monkeypatch.setenv("TWEAKLINE_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("TWEAKLINE_ALLOWED_ESTIMATORS", json.dumps(ALLOWED))
    config = worker_config(Settings())
    worker_module.prepare_early()
    early = worker_module._early
    assert early is not None and early._zygote is not None and early._zygote.alive()
    try:
        assert take_early(config) is early  # the app adopts it: same settings, same configuration
        assert take_early(config) is None  # once
        assert (await early.run(request({"delay": 0.0}))).status is TrialStatus.OK
    finally:
        await early.close()
    worker_module.prepare_early()
    zygote = worker_module._early._zygote if worker_module._early else None
    assert zygote is not None
    # Another configuration (the settings changed in between): not used, and its zygote is stopped.
    assert take_early(dataclasses.replace(config, n_jobs=7)) is None
    assert not zygote.alive() and worker_module._early is None


def test_a_runner_that_cannot_read_its_settings_prepares_nothing_early(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWEAKLINE_ALLOWED_ESTIMATORS", "not json")  # the service reports it itself
    children = {p.pid for p in psutil.Process().children()}
    worker_module.prepare_early()
    assert worker_module._early is None
    assert {p.pid for p in psutil.Process().children()} == children

"""The fault-test harness: a real local stack (nats-server with mTLS, every service a process).

Trials use :class:`tests.fault.estimators.SleepyClassifier` on iris with two folds: they take
wall-clock time without using the (small, shared) CPU, so a fault can be injected mid-trial.
Every wait is on an event (a stored result, a progress message, a process exit) with a generous
timeout; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from tests.conftest import REPO
from tests.factories import make_tweak
from tweakline.client.follow import Outcome, follow, submit
from tweakline.proto.messages import ExperimentState, Source, TrialProgress
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Subject, all_of
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.runtime.records import ExperimentStore
from tweakline.runtime.settings import Settings
from tweakline.stack.local import LocalStack

SLEEPY = "tests.fault.estimators.SleepyClassifier"
WAIT = 240.0  # generous: the machine is shared


def tweak(
    name: str, delays: list[float], *, max_trials: int = 6, parallelism: int = 2, hold: Path | None = None, **budget: Any
) -> TweakFile:
    """A tiny experiment: SleepyClassifier on iris, 2 folds, a random search over ``delays``.

    ``hold``: a file that, while it exists, keeps every trial from starting its fit.
    """
    return make_tweak(
        name,
        model={"estimator": SLEEPY, "fixed": {"hold": str(hold)} if hold else {}},
        search={"algorithm": "random", "seed": 3, "space": {"delay": {"type": "categorical", "choices": delays}}},
        objective={"metric": "accuracy", "cv": 2},
        budget={"max_trials": max_trials, "parallelism": parallelism, **budget},
    )


def fault_settings(**overrides: Any) -> Settings:
    """Settings of a fault-test stack: short redelivery so a lost runner's trial comes back quickly,
    and a short retry back-off (0.5 s instead of 2, 4, ... s) so a crashing trial's retries do not
    wait out seconds the story does not need."""
    base = {
        "allowed_estimators": ["sklearn.", "tests.fault."],
        "trial_ack_wait_s": 4.0,
        "trial_max_deliver": 4,
        "trial_retry_backoff_max_s": 0.5,
        "shutdown_grace_s": 3.0,
        "trial_memory_mb": 1024,
    }
    base.update(overrides)
    return Settings(**base)


class Watch:
    """Follows experiments on a live stack and lets a test wait for conditions on what it saw."""

    def __init__(self, stack: LocalStack, nc: Client):
        self.stack = stack
        self.nc = nc
        self.outcomes: dict[str, Outcome] = {}
        self.progress: list[TrialProgress] = []
        self.changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[Any]] = []
        self._follows: dict[str, asyncio.Task[Any]] = {}

    async def start(self) -> None:
        async def on_progress(msg) -> None:
            self.progress.append(TrialProgress.model_validate_json(msg.data))
            await self._notify()

        await self.nc.subscribe(all_of(Subject.TRIAL_PROGRESS), cb=on_progress)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def submit(self, tf: TweakFile) -> str:
        exp_id = await submit(self.nc, tf, Source(trigger="cli", path="fault-test"))
        self.track(exp_id, tf)
        return exp_id

    def track(self, exp_id: str, tf: TweakFile) -> Outcome:
        """Follow ``exp_id`` from the start of its stored events (also one submitted elsewhere)."""
        outcome = Outcome(experiment_id=exp_id, tweak=tf)
        self.outcomes[exp_id] = outcome

        def on_change(_: Outcome) -> None:
            asyncio.get_running_loop().create_task(self._notify())

        task = asyncio.create_task(follow(self.nc, outcome, on_change, timeout=WAIT * 2))
        task.add_done_callback(lambda _: on_change(outcome))  # a follow that failed wakes the waiter
        self._tasks.append(task)
        self._follows[exp_id] = task
        return outcome

    def describe(self, exp_id: str) -> str:
        """What was seen of ``exp_id`` (for a failure message): results, decision, its follower's fate."""
        outcome = self.outcomes[exp_id]
        task = self._follows.get(exp_id)
        failed = task.exception() if task is not None and task.done() and not task.cancelled() else None
        return (
            f"{exp_id}: {len(outcome.trials)} results {sorted(outcome.trials)}, "
            f"completed={outcome.completed is not None}, decision={outcome.evaluation is not None}"
            + (f", follower failed: {failed!r}" if failed else "")
        )

    async def until(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Wait until ``predicate()`` holds (re-checked on every event), or fail naming ``what``
        and what was seen of every experiment followed."""
        deadline = time.monotonic() + timeout
        async with self.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = "; ".join(self.describe(e) for e in self.outcomes)
                    raise AssertionError(
                        f"timed out after {timeout:.0f}s waiting for {what}; seen: {seen}; logs in {self.stack.layout.logs}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), min(remaining, 1.0))

    async def done(self, exp_id: str, timeout: float = WAIT) -> Outcome:
        outcome = self.outcomes[exp_id]
        task = self._follows.get(exp_id)
        await self.until(lambda: outcome.done or (task is not None and task.done()), f"experiment {exp_id} to finish", timeout)
        assert outcome.done, f"stopped following before the end: {self.describe(exp_id)}"
        return outcome

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.nc.close()


@pytest.fixture
def make_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Awaitable[LocalStack]]]:
    """Start a local stack with fault-test settings (stopped at the end, whatever happened)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    started: list[LocalStack] = []

    async def _make(runners: int = 2, *, cluster: int = 1, schedulers: int = 1, **settings: Any) -> LocalStack:
        stack = LocalStack(
            tmp_path / "state",
            runners=runners,
            settings=fault_settings(**settings),
            cluster=cluster,
            schedulers=schedulers,
        )
        started.append(stack)
        await asyncio.to_thread(stack.start)  # start() runs its own event loop
        return stack

    yield _make
    for stack in started:
        stack.stop(grace=5.0)


@contextlib.asynccontextmanager
async def watching(stack: LocalStack) -> AsyncIterator[Watch]:
    """A :class:`Watch` connected to ``stack`` as the admin identity."""
    nc = await connect(stack.settings_for(Identity.ADMIN), "fault-test")
    watch = Watch(stack, nc)
    await watch.start()
    try:
        yield watch
    finally:
        await watch.close()


async def wait_exit(stack: LocalStack, label: str, timeout: float = WAIT) -> int:
    """Wait for service ``label`` to exit; its return code."""
    process = stack.service(label).process
    return await asyncio.to_thread(process.wait, timeout)


def kill(stack: LocalStack, label: str, sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to service ``label``."""
    os.kill(stack.service(label).process.pid, sig)


async def stored_state(stack, exp_id: str) -> ExperimentState:
    """The experiment's whole state as the scheduler stored it in KV, its results segments joined in (read as the admin identity)."""
    nc = await connect(stack.settings_for(Identity.ADMIN), "fault-test-kv")
    try:
        store = await ExperimentStore.open_bucket(nc.jetstream())
        found = await store.get(exp_id)
        assert found is not None
        return found[0]
    finally:
        await nc.close()

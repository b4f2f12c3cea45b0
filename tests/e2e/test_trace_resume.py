"""A scheduler restarted mid-experiment keeps dispatching into the experiment's one trace.

The experiment is submitted without a root span of the submitter's (as a webhook would), so the
scheduler's intake roots the trace; its context is kept in the experiment's KV state and the new
scheduler process hangs its dispatches under the same span.

"Mid-experiment" is made certain, not timed: the first trial waits on a hold file while the first
scheduler is replaced (a trial takes milliseconds, so a restart after some results could come
after the last dispatch).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.factories import make_tweak
from tests.otlp import OtlpReceiver
from tweakline.client.follow import Outcome, follow, submit
from tweakline.proto.messages import Source
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Subject, all_of
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.runtime.settings import Settings
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.fault


def held_tweak(hold: Path) -> TweakFile:
    """Eight trials, one at a time; each waits to start while ``hold`` exists."""
    return make_tweak(
        "resumed",
        model={"estimator": "tests.fault.estimators.SleepyClassifier", "fixed": {"hold": str(hold)}},
        search={"algorithm": "random", "seed": 5, "space": {"delay": {"type": "categorical", "choices": [0.0, 0.01]}}},
        objective={"metric": "accuracy", "cv": 2},
        budget={"max_trials": 8, "parallelism": 1},
    )


def restart_scheduler(stack: LocalStack) -> None:
    """Stop the scheduler process (SIGTERM, it flushes its spans) and start a new one."""
    old = next(s for s in stack.services if s.name == "scheduler")
    old.process.send_signal(signal.SIGTERM)
    old.process.wait(30)
    old.log_handle.close()
    stack.services.remove(old)
    stack._spawn("scheduler")


async def scenario(stack: LocalStack, hold: Path) -> str:
    tweak = held_tweak(hold)
    nc = await connect(stack.settings_for(Identity.ADMIN), "test-resume")
    try:
        requested = asyncio.Event()

        async def on_request(msg) -> None:
            requested.set()

        await nc.subscribe(all_of(Subject.TRIAL_REQUESTED), cb=on_request)
        await nc.flush()
        hold.touch()
        exp_id = await submit(nc, tweak, Source(trigger="webhook"))
        await asyncio.wait_for(requested.wait(), timeout=120)  # the first scheduler dispatched trial 0, which waits
        await asyncio.to_thread(restart_scheduler, stack)
        hold.unlink()
        outcome = await follow(nc, Outcome(experiment_id=exp_id, tweak=tweak), timeout=240, alive=stack.check)
        assert outcome.evaluation is not None and len(outcome.trials) == 8
        return exp_id
    finally:
        await nc.close()


def test_dispatches_after_a_restart_stay_in_the_experiments_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        # The services import tests.fault.estimators from the repository.
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        settings = Settings(allowed_estimators=["sklearn.", "tests.fault."])
        stack = LocalStack(tmp_path / "state", runners=1, settings=settings)
        stack.start()
        try:
            exp_id = asyncio.run(scenario(stack, tmp_path / "hold"))
        finally:
            stack.stop()
    dispatches = [s for s in receiver.spans if s.name == "trial.dispatch" and s.attributes["tweakline.experiment.id"] == exp_id]
    schedulers = {s.instance for s in dispatches}
    assert len(schedulers) == 2, "expected dispatches from the scheduler before and after the restart"
    assert len({s.trace_id for s in dispatches}) == 1
    assert len({s.parent_id for s in dispatches}) == 1  # all under the experiment's span
    root_parent = dispatches[0].parent_id
    intake = next(s for s in receiver.spans if s.span_id == root_parent)
    assert intake.service == "tweakline-scheduler" and intake.name == "tweakline.experiments.submitted.{experiment} process"
    assert {s.attributes["tweakline.trial.id"] for s in dispatches} == {f"{exp_id}.{n}" for n in range(8)}

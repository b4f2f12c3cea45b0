"""A scheduler restarted mid-experiment keeps dispatching into the experiment's one trace.

The experiment is submitted without a root span of the submitter's (as a webhook would), so the
scheduler's intake roots the trace; its context is kept in the experiment's KV state and the new
scheduler process hangs its dispatches under the same span.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.otlp import OtlpReceiver
from tweakline.client.follow import Outcome, apply_event, follow, submit
from tweakline.proto.messages import Source
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, experiment_events
from tweakline.runtime.bus import connect
from tweakline.stack.local import LocalStack
from tweakline.validation.loading import parse_tweak_file

pytestmark = pytest.mark.fault

TWEAK = """
apiVersion: tweakline/v1
kind: Experiment
metadata: {name: resumed}
spec:
  dataset: {source: "sklearn:wine", test_size: 0.25, seed: 0}
  model: {estimator: sklearn.svm.SVC}
  search:
    algorithm: random
    seed: 5
    space:
      C:     {type: float, low: 1.0e-1, high: 1.0e+4, log: true}
      gamma: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
  objective: {metric: accuracy, cv: 3}
  budget: {max_trials: 8, parallelism: 1}
  gate: {thresholds: {accuracy: 0.5}}
"""


def restart_scheduler(stack: LocalStack) -> None:
    """Stop the scheduler process (SIGTERM, it flushes its spans) and start a new one."""
    old = next(s for s in stack.services if s.name == "scheduler")
    old.process.send_signal(signal.SIGTERM)
    old.process.wait(30)
    old.log_handle.close()
    stack.services.remove(old)
    stack._spawn("scheduler")


async def scenario(stack: LocalStack) -> str:
    tweak = parse_tweak_file(TWEAK)
    nc = await connect(stack.settings_for(Identity.ADMIN), "test-resume")
    try:
        exp_id = await submit(nc, tweak, Source(trigger="webhook"))
        early = Outcome(experiment_id=exp_id, tweak=tweak)
        seen = asyncio.Event()

        async def on_msg(msg) -> None:
            apply_event(early, msg.subject, msg.data)
            if len(early.trials) >= 3:
                seen.set()

        sub = await nc.jetstream().subscribe(
            experiment_events(exp_id), stream=Stream.EVENTS.value, ordered_consumer=True, cb=on_msg
        )
        await asyncio.wait_for(seen.wait(), timeout=120)
        await sub.unsubscribe()
        await asyncio.to_thread(restart_scheduler, stack)
        outcome = await follow(nc, Outcome(experiment_id=exp_id, tweak=tweak), timeout=240, alive=stack.check)
        assert outcome.evaluation is not None and len(outcome.trials) == 8
        return exp_id
    finally:
        await nc.close()


def test_dispatches_after_a_restart_stay_in_the_experiments_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        stack = LocalStack(tmp_path / "state", runners=1)
        stack.start()
        try:
            exp_id = asyncio.run(scenario(stack))
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

"""A runner's side of a batch of trials, over a real mTLS nats-server with a real training child.

One request carries several trials: each is trained and recorded on its own, their results
travel together (one ``TrialCompleted`` carrying the batch, on the events stream), and the
request is acknowledged once, after the results are stored. A runner that stops mid-batch keeps what finished and hands the rest back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from tests.factories import make_spec
from tests.waiting import until
from tweakline.proto.messages import BatchedTrial, TrialCompleted, TrialProgress, TrialRequested, TrialStatus, trial_id
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Subject
from tweakline.runtime.bus import connect
from tweakline.runtime.service import ServiceContext, make_broker
from tweakline.trial_runner.handlers import TrialRunner

SPEC = make_spec(objective={"metric": "accuracy", "cv": 2})


@dataclass
class Request:
    """A delivered trials.requested message as the handler sees it (ack, nack, heartbeat)."""

    acks: list[str] = field(default_factory=list)

    @property
    def raw_message(self) -> SimpleNamespace:
        return SimpleNamespace(metadata=SimpleNamespace(num_delivered=1))

    async def ack(self) -> None:
        self.acks.append("ack")

    async def nack(self, delay: float | None = None) -> None:
        self.acks.append("nack")

    async def in_progress(self) -> None:
        """A heartbeat: nothing to record."""


def batch(exp_id: str, count: int) -> TrialRequested:
    """One request carrying trials 0..count-1 of ``exp_id`` (C = 1, 2, 3, ...)."""
    trials = [BatchedTrial(trial_id=trial_id(exp_id, n), number=n, params={"C": float(n + 1)}) for n in range(count)]
    first = trials[0]
    return TrialRequested(
        experiment_id=exp_id, trial_id=first.trial_id, number=0, params=first.params, spec=SPEC, batch=trials[1:]
    )


@pytest.fixture
async def served(nats) -> AsyncIterator[SimpleNamespace]:
    """A started runner (training child warm), every result it publishes by experiment, and the watching client."""
    settings = nats.settings(Identity.TRIAL_RUNNER)
    broker = make_broker(settings, "trial-runner")
    await broker.connect()
    runner = TrialRunner(ServiceContext(settings, broker, "trial-runner"))
    await runner.start()
    results: dict[str, list[TrialCompleted]] = {}
    messages: dict[str, int] = {}  # result messages by experiment (a batch's results share one)
    watcher = await connect(nats.settings(Identity.ADMIN), "test-results")

    async def on_result(msg: Any) -> None:
        result = TrialCompleted.model_validate_json(msg.data)
        results.setdefault(result.experiment_id, []).extend(result.results())
        messages[result.experiment_id] = messages.get(result.experiment_id, 0) + 1

    progress: list[TrialProgress] = []

    async def on_progress(msg: Any) -> None:
        progress.append(TrialProgress.model_validate_json(msg.data))

    await watcher.subscribe(f"{Subject.TRIAL_COMPLETED.value}.>", cb=on_result)
    await watcher.subscribe(f"{Subject.TRIAL_PROGRESS.value}.>", cb=on_progress)
    await watcher.flush()
    try:
        yield SimpleNamespace(runner=runner, results=results, messages=messages, progress=progress, watcher=watcher)
    finally:
        await runner.worker.close()
        await watcher.close()
        await broker.stop()


async def test_every_trial_of_a_batch_is_reported_once_then_the_request_is_acked(served) -> None:
    runner, results = served.runner, served.results
    delivered = Request()
    await runner.on_trial_requested(batch("batch-ok", 3), delivered)
    assert delivered.acks == ["ack"]
    await until(lambda: len(results.get("batch-ok", [])) >= 3, timeout=30, what="three results on the bus")
    got = sorted(results["batch-ok"], key=lambda r: r.number)
    assert [(r.number, r.params, r.status) for r in got] == [(n, {"C": float(n + 1)}, TrialStatus.OK) for n in range(3)]
    assert all(r.score is not None and 0 < r.score <= 1 for r in got)
    await served.watcher.flush()
    assert served.messages["batch-ok"] == 1, "a batch's results travel in one message"
    assert not served.progress, "fast trials without a pruner send no fold scores (nobody reads them)"


async def test_a_runner_stopping_mid_batch_keeps_what_finished_and_hands_the_rest_back(served) -> None:
    runner, results, watcher = served.runner, served.results, served.watcher
    # SIGTERM arrives once the request is taken: the batch is in the child, which reads the stop
    # (shared memory, TrialRunner.stop sets it) before its next trial; the first one always runs.
    runner.worker.stop_between_trials()
    delivered = Request()
    await runner.on_trial_requested(batch("batch-stop", 3), delivered)
    assert delivered.acks == ["nack"], "handed back for another runner, not acknowledged"
    await until(lambda: results.get("batch-stop"), timeout=30, what="the first trial's result")
    await watcher.flush()  # anything published before the nack has arrived by now
    assert [r.number for r in results["batch-stop"]] == [0]


async def test_trials_of_a_cancelled_experiment_are_skipped_and_the_rest_reported(served) -> None:
    runner, results = served.runner, served.results
    for number in (0, 2):  # the first one too: the next trial then prepares the data itself
        runner.early._cancelled[trial_id("batch-cancel", number)] = "cancelled by a test"  # as trials.control would
    delivered = Request()
    await runner.on_trial_requested(batch("batch-cancel", 4), delivered)
    assert delivered.acks == ["ack"]
    await until(lambda: len(results.get("batch-cancel", [])) >= 2, timeout=30, what="two results")
    await served.watcher.flush()
    assert sorted((r.number, r.status) for r in results["batch-cancel"]) == [(1, TrialStatus.OK), (3, TrialStatus.OK)]

"""A batch of trials through the training child in one pipe message, each trial still limited on its own (real processes)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.trial_runner.test_worker import ALLOWED, request
from tests.waiting import until
from tweakline.ml.outcome import TrialOutcome
from tweakline.proto.messages import TrialRequested, TrialStatus
from tweakline.trial_runner import worker as worker_module
from tweakline.trial_runner.worker import TrialAbortedError, TrialWorker, WorkerConfig


class CountingPipe:
    """The parent's end of the pipe, recording what crosses it each way."""

    def __init__(self, conn: Any):
        self.conn = conn
        self.sent: list[Any] = []
        self.received: list[Any] = []

    def send(self, obj: Any) -> None:
        self.sent.append(obj)
        self.conn.send(obj)

    def recv(self) -> Any:
        obj = self.conn.recv()
        self.received.append(obj)
        return obj

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def trials(delays: list[float], *, cv: int = 2, pruner: str = "none") -> list[TrialRequested]:
    """One experiment's trials (sharing one spec object, as a batch's do), sleeping ``delays`` seconds per fold."""
    first = request({"delay": delays[0]}, cv=cv, pruner=pruner)
    return [first.model_copy(update={"trial_id": f"exp-{n}", "number": n, "params": {"delay": d}}) for n, d in enumerate(delays)]


@pytest.fixture
async def worker(monkeypatch: pytest.MonkeyPatch):
    # Outcomes go back when the batch ends, however slow the machine (the child is forked with this).
    monkeypatch.setattr(worker_module, "OUTCOME_FLUSH_S", 600.0)
    w = TrialWorker(WorkerConfig(allowed_estimators=ALLOWED, memory_limit_mb=600, cancel_grace_s=0.5))
    await w.start()
    yield w
    await w.close()


async def run(worker: TrialWorker, batch: list[TrialRequested], **kwargs: Any) -> dict[int, TrialOutcome | None]:
    outcomes: dict[int, TrialOutcome | None] = {}
    await worker.run_batch(batch, on_outcome=outcomes.__setitem__, **kwargs)
    return outcomes


async def test_a_batch_crosses_the_pipe_in_one_message_and_each_trial_is_reported(worker: TrialWorker) -> None:
    pipe = worker._conn = CountingPipe(worker._conn)  # type: ignore[assignment]
    batch = trials([0.0] * 5)
    outcomes = await run(worker, batch)
    assert sorted(outcomes) == [0, 1, 2, 3, 4]
    assert all(o is not None and o.status is TrialStatus.OK and len(o.fold_scores) == 2 for o in outcomes.values())
    assert len(pipe.sent) == 1, f"one message for the batch, got {len(pipe.sent)}"
    assert [m[0] for m in pipe.received] == ["outcomes"] and len(pipe.received[0][1]) == 5, "the outcomes in one message back"
    bodies, spec_json, _ = pipe.sent[0]
    assert len(bodies) == 5 and spec_json is not None
    await run(worker, [t.model_copy(update={"trial_id": f"exp-{t.number + 5}", "number": t.number + 5}) for t in batch[:3]])
    assert len(pipe.sent) == 2 and pipe.sent[1][1] is None, "the spec is not sent again to the same child"
    assert worker.spawned == 1


async def test_a_trial_over_its_time_limit_mid_batch_fails_alone_and_the_rest_run_in_a_new_child(worker: TrialWorker) -> None:
    # Each trial gets 4 s of its own: three of 1 s each (two folds of 0.5 s) pass although the
    # batch takes longer than 4 s; the second one (2 x 30 s) is stopped at its own limit.
    outcomes = await run(worker, trials([0.5, 30.0, 0.5, 0.5]), timeout=4.0)
    statuses = [outcomes[i].status if outcomes[i] else None for i in range(4)]
    assert statuses == [TrialStatus.OK, TrialStatus.FAILED, TrialStatus.OK, TrialStatus.OK]
    assert "time limit of 4s (budget.trial_timeout)" in (outcomes[1].error or "")
    assert worker.spawned == 2, "the child was killed for the second trial and one new child ran the rest"


async def test_outcomes_the_child_had_not_sent_when_killed_for_a_limit_are_trained_again(worker: TrialWorker) -> None:
    pipe = worker._conn = CountingPipe(worker._conn)  # type: ignore[assignment]
    outcomes = await run(worker, trials([0.0, 0.0, 30.0, 0.0]), timeout=2.0)
    assert not pipe.received, "the first two outcomes were still in the child when the third trial broke its limit"
    statuses = [outcomes[i].status if outcomes[i] else None for i in range(4)]
    assert statuses == [TrialStatus.OK, TrialStatus.OK, TrialStatus.FAILED, TrialStatus.OK]
    assert worker.spawned == 2


async def test_the_running_trial_of_a_batch_is_cancelled_and_a_waiting_one_skipped_in_the_next_child(worker: TrialWorker) -> None:
    batch = trials([0.0, 30.0, 0.0, 0.0], cv=3)
    task = asyncio.create_task(run(worker, batch))
    await until(lambda: worker.current == "exp-1", timeout=30, what="the second trial to start")
    assert not worker.skip("exp-1"), "a trial that started is cancelled, not skipped"
    assert worker.skip("exp-2")
    assert worker.cancel("exp-1", "pruned by the test")
    outcomes = await asyncio.wait_for(task, 60)
    assert outcomes[0] is not None and outcomes[0].status is TrialStatus.OK
    assert outcomes[1] is not None and outcomes[1].status is TrialStatus.PRUNED and outcomes[1].error == "pruned by the test"
    assert outcomes[2] is None, "skipped: nothing to report"
    assert outcomes[3] is not None and outcomes[3].status is TrialStatus.OK
    assert worker.spawned == 2, "killed after the cancel grace (a 30 s fold), the rest in a new child: the skip holds there too"


async def test_a_stop_between_trials_keeps_the_finished_trial_and_names_where_the_batch_stopped(worker: TrialWorker) -> None:
    worker.stop_between_trials()
    outcomes: dict[int, TrialOutcome | None] = {}
    with pytest.raises(TrialAbortedError) as raised:
        await worker.run_batch(trials([0.0, 0.0, 0.0]), on_outcome=outcomes.__setitem__)
    assert list(outcomes) == [0] and raised.value.index == 1  # type: ignore[attr-defined]


async def test_a_trial_cancelled_mid_batch_stops_at_a_fold_and_its_outcome_keeps_the_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker_module, "OUTCOME_FLUSH_S", 600.0)  # its outcome comes back after the child moved on
    worker = TrialWorker(WorkerConfig(allowed_estimators=ALLOWED, cancel_grace_s=60.0))
    try:
        task = asyncio.create_task(run(worker, trials([0.0, 0.3, 0.0], cv=5)))
        await until(lambda: worker.current == "exp-1", timeout=60, what="the second trial to start")
        assert worker.cancel("exp-1", "pruned by the test")
        outcomes = await asyncio.wait_for(task, 60)
        pruned = outcomes[1]
        assert pruned is not None and pruned.status is TrialStatus.PRUNED and pruned.error == "pruned by the test"
        assert 1 <= len(pruned.fold_scores) < 5, "stopped at a fold boundary"
        assert [outcomes[i].status for i in (0, 2)] == [TrialStatus.OK, TrialStatus.OK]  # type: ignore[union-attr]
        assert worker.spawned == 1, "no kill: the child stopped the trial itself"
    finally:
        await worker.close()


async def test_with_a_pruner_each_trial_of_a_batch_waits_for_its_verdicts_and_one_is_pruned_alone(worker: TrialWorker) -> None:
    folds: list[tuple[int, int]] = []

    def prune_the_second_trial(index: int, fold: int, value: float) -> bool:
        folds.append((index, fold))
        return index == 1

    outcomes = await run(worker, trials([0.0, 0.0, 0.0], cv=3, pruner="median"), on_fold=prune_the_second_trial)
    assert folds == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1), (2, 2)]
    statuses = [outcomes[i].status if outcomes[i] else None for i in range(3)]
    assert statuses == [TrialStatus.OK, TrialStatus.PRUNED, TrialStatus.OK]
    assert len(outcomes[1].fold_scores) == 1 and worker.spawned == 1  # type: ignore[union-attr]

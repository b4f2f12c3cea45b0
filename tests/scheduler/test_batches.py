"""Batches of fast trials: how the engine sizes them and what the scheduler publishes.

The sizing is the engine's own logic (no bus); what the scheduler sends is checked on a real
nats-server over mTLS, recording the requests it publishes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.factories import make_tweak
from tests.scheduler.test_handlers import Delivered, complete, result_body, submission, submit
from tweakline.proto.messages import ExperimentState, TrialCompleted, TrialRecord, TrialRequested, TrialStatus, trial_id
from tweakline.proto.subjects import Subject, subject_for
from tweakline.scheduler.engine import ExperimentRun
from tweakline.scheduler.handlers import Scheduler


def _run(parallelism: int) -> ExperimentRun:
    tweak = make_tweak(
        "batches",
        search={"algorithm": "random", "seed": 0, "space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
        budget={"max_trials": 200, "parallelism": parallelism},
    )
    return ExperimentRun(ExperimentState(experiment_id="batches-1", tweak=tweak))


def _result(run: ExperimentRun, number: int, duration_s: float = 0.0) -> TrialCompleted:
    """A successful result of in-flight trial ``number``, trained in ``duration_s``."""
    return TrialCompleted(
        experiment_id="batches-1",
        trial_id=trial_id("batches-1", number),
        number=number,
        status=TrialStatus.OK,
        params=run.state.issued[number],
        score=0.5,
        duration_s=duration_s,
    )


def _finish(run: ExperimentRun, duration_s: float) -> None:
    """Issue what the slots allow and record every one as done in ``duration_s``."""
    for number, _ in run.next_trials():
        run.record(_result(run, number, duration_s))


def test_no_batch_before_a_result_has_come_back() -> None:
    assert _run(parallelism=32).batch_size(batch_max=16, target_s=0.25) == 1


def test_fast_trials_share_requests_up_to_a_quarter_of_the_parallelism_and_the_maximum() -> None:
    run = _run(parallelism=32)
    _finish(run, duration_s=0.001)
    assert run.batch_size(batch_max=16, target_s=0.25) == 8, "a quarter of 32 in flight: several requests, several runners"
    assert run.batch_size(batch_max=4, target_s=0.25) == 4, "TWEAKLINE_TRIAL_BATCH_MAX caps it"
    assert run.batch_size(batch_max=1, target_s=0.25) == 1, "1 turns batching off"


def test_the_batch_is_sized_from_the_measured_durations_and_slow_trials_go_alone() -> None:
    run = _run(parallelism=64)
    _finish(run, duration_s=0.05)
    assert run.batch_size(batch_max=64, target_s=0.25) == 5, "0.25 s of 50 ms trials"
    slow = _run(parallelism=64)
    _finish(slow, duration_s=2.0)
    assert slow.batch_size(batch_max=64, target_s=0.25) == 1


def test_a_small_parallelism_never_batches() -> None:
    run = _run(parallelism=4)
    _finish(run, duration_s=0.001)
    assert run.batch_size(batch_max=16, target_s=0.25) == 1


async def test_the_scheduler_sends_fast_trials_in_batches_each_trial_once(scheduler: Scheduler, monkeypatch) -> None:
    sent: list[tuple[TrialRequested, str | None]] = []
    publish = scheduler.ctx.publish

    async def recording(message: Any, subject: str, **kwargs: Any) -> Any:
        if isinstance(message, TrialRequested):
            sent.append((message, kwargs.get("msg_id")))
        return await publish(message, subject, **kwargs)

    monkeypatch.setattr(scheduler.ctx, "publish", recording)
    exp_id, intake = submission("batched", parallelism=16)
    await submit(scheduler, intake)
    assert [len(m.trials()) for m, _ in sent] == [1] * 16, "the first trials go alone: their cost is unknown"
    state = scheduler.runs[exp_id][0].state
    sent.clear()

    results = [
        Delivered(result_body(exp_id, n, state.issued[n], 0.5), subject_for(Subject.TRIAL_COMPLETED, exp_id)) for n in range(16)
    ]
    await asyncio.gather(*(complete(scheduler, r) for r in results))  # fast trials (duration 0 s)

    assert [len(m.trials()) for m, _ in sent] == [4, 4, 4, 4], "16 in flight: batches of a quarter"
    numbers = [t.number for m, _ in sent for t in m.trials()]
    assert sorted(numbers) == list(range(16, 32)), "every new trial exactly once"
    for message, message_id in sent:
        for trial in message.trials():
            assert trial.params == state.issued[trial.number] and trial.trial_id == trial_id(exp_id, trial.number)
        assert message_id == "trial:" + ":".join([message.trial_id, *(str(t.number) for t in message.batch)])
    assert len({message_id for _, message_id in sent}) == 4


def test_freed_slots_wait_for_a_whole_batch_until_the_budgets_last_trials() -> None:
    run = _run(parallelism=16)
    first = run.next_trials()
    assert len(first) == 16

    def finish(count: int) -> None:
        for number in sorted(run.in_flight())[:count]:
            run.record(_result(run, number))

    finish(3)
    assert run.next_trials(batch=4) == [], "3 free slots: not a whole batch of 4 yet (13 still in flight)"
    finish(2)
    assert len(run.next_trials(batch=4)) == 4, "5 free slots: one batch of 4, the fifth waits"
    run.limit = len(run.state.issued) + 3  # the budget's last 3 trials
    finish(3)
    assert len(run.next_trials(batch=4)) == 3, "the last trials go out even though they are fewer than a batch"


async def test_a_batch_of_results_in_one_message_records_every_trial_then_acks_once(scheduler: Scheduler) -> None:
    exp_id, intake = submission("batched-results", parallelism=4)
    await submit(scheduler, intake)
    state = scheduler.runs[exp_id][0].state
    first, *rest = [TrialCompleted.model_validate_json(result_body(exp_id, n, state.issued[n], 0.1 * n)) for n in range(3)]
    first.batch = [TrialRecord.from_result(r) for r in rest]
    delivered = Delivered(first.model_dump_json().encode(), subject_for(Subject.TRIAL_COMPLETED, exp_id))
    await complete(scheduler, delivered)
    assert delivered.acked and not delivered.rejected
    stored = await scheduler.store.get(exp_id)
    assert stored is not None
    assert {n: r.score for n, r in stored[0].results.items()} == {0: 0.0, 1: 0.1, 2: 0.2}, "each trial saved once"

"""Scheduler handlers on a real bus: one state save per batch of results (group commit).

(The start-up race is the scaffold's: tests/runtime/test_service_intake.py.)

Real nats-server over mTLS (the session fixture), real KV bucket and streams; only the
incoming messages are small stand-ins carrying what the handlers read (body, headers, ack).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from nats.js.api import DeliverPolicy

from tests.factories import make_tweak
from tests.waiting import until
from tweakline.proto.messages import (
    DeadLetter,
    ExperimentCompleted,
    ExperimentState,
    ExperimentStatus,
    ExperimentSubmitted,
    TrialCompleted,
    TrialStatus,
    trial_id,
)
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Bucket, Stream, Subject, subject_for
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import SERVICE_MAX_DELIVER, connect
from tweakline.scheduler.engine import ExperimentRun
from tweakline.scheduler.handlers import Scheduler


@dataclass
class Delivered:
    """A delivered JetStream message as the handlers see it."""

    body: bytes
    subject: str
    headers: dict[str, str] = field(default_factory=dict)
    acked: bool = False
    rejected: bool = False

    @property
    def raw_message(self) -> SimpleNamespace:
        return SimpleNamespace(subject=self.subject, metadata=SimpleNamespace(num_delivered=1))

    async def ack(self) -> None:
        self.acked = True

    async def reject(self) -> None:
        self.rejected = True


def _tweak(parallelism: int) -> TweakFile:
    return make_tweak(
        "group-commit",
        search={"algorithm": "random", "seed": 0, "space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
        objective={"metric": "accuracy", "cv": 2},
        budget={"max_trials": 100, "parallelism": parallelism},
    )


def submission(prefix: str, parallelism: int) -> tuple[str, Delivered]:
    """A new experiment's id and its experiments.submitted delivery."""
    exp_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    submitted = ExperimentSubmitted(experiment_id=exp_id, tweak=_tweak(parallelism=parallelism))
    return exp_id, Delivered(submitted.model_dump_json().encode(), subject_for(Subject.EXPERIMENT_SUBMITTED, exp_id))


async def submit(scheduler: Scheduler, delivered: Delivered) -> None:
    """Hand a submission to the scheduler as FastStream does: the decoded payload and the message."""
    await scheduler.on_submitted(ExperimentSubmitted.model_validate_json(delivered.body), delivered)


async def complete(scheduler: Scheduler, delivered: Delivered) -> None:
    """Hand a result to the scheduler as FastStream does: the decoded payload and the message."""
    await scheduler.on_trial_completed(TrialCompleted.model_validate_json(delivered.body), delivered)


def result_body(exp_id: str, number: int, params: dict, score: float) -> bytes:
    """A successful trial's trials.completed payload."""
    return (
        TrialCompleted(
            experiment_id=exp_id,
            trial_id=trial_id(exp_id, number),
            number=number,
            status=TrialStatus.OK,
            params=params,
            score=score,
        )
        .model_dump_json()
        .encode()
    )


async def test_a_batch_of_results_is_saved_once_and_refills_every_slot(scheduler: Scheduler) -> None:
    exp_id, intake = submission("group-commit", parallelism=6)
    await submit(scheduler, intake)
    assert intake.acked
    kv = await scheduler.ctx.js.key_value(Bucket.EXPERIMENTS.value)
    before = await kv.get(exp_id)
    state = scheduler.runs[exp_id][0].state
    assert sorted(state.issued) == [0, 1, 2, 3, 4, 5]

    results = [
        Delivered(result_body(exp_id, n, state.issued[n], 0.5 + n / 100), subject_for(Subject.TRIAL_COMPLETED, exp_id))
        for n in range(6)
    ]
    # As FastStream delivers one fetched batch: every handler at once.
    await asyncio.gather(*(complete(scheduler, r) for r in results))

    assert all(r.acked for r in results)
    after = await kv.get(exp_id)
    assert after.revision - before.revision == 1, "one save for the whole batch, not one per result"
    record = scheduler.store.model.model_validate_json(after.value)
    assert sorted(record.results) == [0, 1, 2, 3, 4, 5]
    assert sorted(record.issued) == list(range(12)), "every freed slot refilled in the same commit"

    # A redelivered result changes nothing and is still acknowledged.
    again = Delivered(results[0].body, results[0].subject)
    await complete(scheduler, again)
    assert again.acked
    assert (await kv.get(exp_id)).revision == after.revision


@dataclass
class Redeliverable(Delivered):
    """A delivered message that may also be handed back for redelivery."""

    nacked: bool = False

    async def nack(self, delay: float | None = None) -> None:
        self.nacked = True


async def stale_experiment(scheduler: Scheduler, prefix: str, parallelism: int) -> tuple[str, Any, Any]:
    """A running experiment whose KV record another writer has just bumped: the next save fails.

    Returns its id, its in-memory state and the experiments KV bucket.
    """
    exp_id, intake = submission(prefix, parallelism)
    await submit(scheduler, intake)
    kv = await scheduler.ctx.js.key_value(Bucket.EXPERIMENTS.value)
    await kv.put(exp_id, (await kv.get(exp_id)).value)
    return exp_id, scheduler.runs[exp_id][0].state, kv


async def test_a_failed_batch_save_acks_no_result_that_is_not_stored(scheduler: Scheduler) -> None:
    exp_id, state, kv = await stale_experiment(scheduler, "stale", parallelism=3)

    def batch() -> list[Redeliverable]:
        return [
            Redeliverable(result_body(exp_id, n, state.issued[n], 0.5 + n / 100), subject_for(Subject.TRIAL_COMPLETED, exp_id))
            for n in range(3)
        ]

    first = batch()
    await asyncio.gather(*(complete(scheduler, r) for r in first))
    stored = scheduler.store.model.model_validate_json((await kv.get(exp_id)).value)
    for message in first:  # acked only if a saved state holds it; otherwise handed back
        number = TrialCompleted.model_validate_json(message.body).number
        assert message.acked == (number in stored.results)
        assert message.acked != message.nacked
    # The redeliveries apply every result once, from the state rebuilt out of KV.
    second = [r for r, m in zip(batch(), first) if m.nacked]
    await asyncio.gather(*(complete(scheduler, r) for r in second))
    assert all(r.acked for r in second)
    stored = scheduler.store.model.model_validate_json((await kv.get(exp_id)).value)
    assert sorted(stored.results) == [0, 1, 2]


@dataclass
class LastDelivery(Redeliverable):
    """The consumer's last delivery of a message: nats-server will not send it again."""

    @property
    def raw_message(self) -> SimpleNamespace:
        return SimpleNamespace(subject=self.subject, metadata=SimpleNamespace(num_delivered=SERVICE_MAX_DELIVER))


async def test_a_result_that_cannot_be_applied_on_its_last_delivery_is_dead_lettered(nats, scheduler: Scheduler) -> None:
    admin = await connect(nats.settings(Identity.ADMIN), "test-dead-letters")
    try:
        letters = await admin.jetstream().subscribe(
            f"{Subject.DEAD_LETTER.value}.scheduler",
            stream=Stream.DEAD_LETTERS.value,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
        )
        exp_id, state, _ = await stale_experiment(scheduler, "last", parallelism=1)
        last = LastDelivery(result_body(exp_id, 0, state.issued[0], 0.5), subject_for(Subject.TRIAL_COMPLETED, exp_id))
        await complete(scheduler, last)
        assert last.rejected and not last.nacked and not last.acked
        letter = DeadLetter.model_validate_json((await letters.next_msg(timeout=30)).data)
        assert letter.subject == subject_for(Subject.TRIAL_COMPLETED, exp_id)
        assert f"not applied after {SERVICE_MAX_DELIVER} deliveries" in letter.reason
        assert TrialCompleted.model_validate_json(letter.payload).number == 0  # the result itself is kept
    finally:
        await admin.close()


async def test_a_costly_sampler_asks_in_the_sampler_thread_and_a_random_one_on_the_event_loop(
    scheduler: Scheduler, monkeypatch
) -> None:
    # TPE's ask grows with history and shares the GIL with the loop: one sampler thread takes it
    # off the loop. A random draw is cheaper than the hop, so it stays on the loop.
    threads: dict[str, set[str]] = {}
    next_trials = ExperimentRun.next_trials

    def recording(run: ExperimentRun, *args: Any, **kwargs: Any) -> Any:
        threads.setdefault(run.spec.search.algorithm, set()).add(threading.current_thread().name)
        return next_trials(run, *args, **kwargs)

    monkeypatch.setattr(ExperimentRun, "next_trials", recording)
    random_id, random_intake = submission("cheap-ask", parallelism=2)
    tpe = make_tweak(
        "costly-ask",
        search={"algorithm": "tpe", "seed": 0, "space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
        budget={"max_trials": 10, "parallelism": 2},
    )
    tpe_id = f"costly-ask-{uuid.uuid4().hex[:8]}"
    tpe_intake = Delivered(
        ExperimentSubmitted(experiment_id=tpe_id, tweak=tpe).model_dump_json().encode(),
        subject_for(Subject.EXPERIMENT_SUBMITTED, tpe_id),
    )
    await submit(scheduler, random_intake)
    await submit(scheduler, tpe_intake)
    for exp_id in (random_id, tpe_id):  # a result each: the next asks come from the result path too
        state = scheduler.runs[exp_id][0].state
        await complete(
            scheduler, Delivered(result_body(exp_id, 0, state.issued[0], 0.5), subject_for(Subject.TRIAL_COMPLETED, exp_id))
        )
        assert sorted(state.issued) == [0, 1, 2]

    assert threads["random"] == {threading.main_thread().name}
    assert len(threads["tpe"]) == 1, threads
    assert next(iter(threads["tpe"])).startswith("sampler"), threads


async def _stored_within(kv, exp_id: str, limit: int) -> ExperimentState:
    """The experiment's stored state, checked to be under the bus's message limit."""
    entry = await kv.get(exp_id)
    assert len(entry.value) < limit
    return ExperimentState.model_validate_json(entry.value)


async def _answer_in_flight(scheduler: Scheduler, state: ExperimentState, answered: set[int]) -> None:
    """A result for every trial of ``state`` in flight and not answered yet, delivered together."""
    pending = [n for n in sorted(state.issued) if n not in answered]
    assert pending, "running with nothing in flight"
    answered.update(pending)
    exp_id = state.experiment_id
    await asyncio.gather(
        *(
            complete(
                scheduler, Delivered(result_body(exp_id, n, state.issued[n], 0.5), subject_for(Subject.TRIAL_COMPLETED, exp_id))
            )
            for n in pending
        )
    )


async def test_an_experiment_larger_than_the_bus_limit_runs_every_trial_with_its_results_sealed_into_segments(
    scheduler: Scheduler, monkeypatch
) -> None:
    # The stored state is one KV value: past the server's max_payload a save would fail and the
    # experiment stall. The 100 trials of this experiment (~200 bytes each) do not fit in 16 kB.
    limit = 16_000
    scheduler.ctx.broker.connection._max_payload = limit  # as the server's INFO would say
    built_in: list[str] = []
    init = ExperimentRun.__init__

    def recording(run: ExperimentRun, *args: Any, **kwargs: Any) -> None:
        if args[0].issued:  # a rebuild of a running experiment, not a new one
            built_in.append(threading.current_thread().name)
        init(run, *args, **kwargs)

    monkeypatch.setattr(ExperimentRun, "__init__", recording)
    exp_id, intake = submission("full-state", parallelism=32)
    await submit(scheduler, intake)
    kv = await scheduler.ctx.js.key_value(Bucket.EXPERIMENTS.value)
    answered: set[int] = set()
    rebuilt = False
    for _ in range(100):
        state = await _stored_within(kv, exp_id, limit)
        if state.status is not ExperimentStatus.RUNNING:
            break
        if state.sealed and not rebuilt:
            # As after a restart or a handover: the next result rebuilds the run from the stored
            # state and the segments it names.
            await scheduler.drop(exp_id)
            rebuilt = True
        await _answer_in_flight(scheduler, state, answered)
    assert rebuilt and state.status is ExperimentStatus.COMPLETED and state.message is None
    # The rebuilt study replayed every result off the event loop (25,000 take about a second).
    assert built_in and all(name.startswith("sampler") for name in built_in), built_in
    assert state.sealed and state.trials_recorded == 100 and len(state.results) < 100
    for ref in state.sealed:
        assert len((await kv.get(ref.key)).value) < limit
    whole, _ = await scheduler.store.get(exp_id)
    assert sorted(whole.results) == list(range(100)) and sorted(whole.issued) == list(range(100))
    keys = await scheduler.store.keys()
    assert exp_id in keys and not any(ref.key in keys for ref in state.sealed), "segments are not experiments"


async def test_an_experiment_whose_results_segment_is_gone_fails_once_and_says_which(scheduler: Scheduler, nats) -> None:
    # A segment deleted by hand: the experiment can never be rebuilt. It is failed with the key
    # named (and its completion published for whoever waits on it), not retried every round.
    limit = 16_000
    scheduler.ctx.broker.connection._max_payload = limit
    exp_id, intake = submission("lost-segment", parallelism=32)
    nc = await connect(nats.settings(Identity.ADMIN), "test-lost-segment")
    completions: list[ExperimentCompleted] = []

    async def on_completed(msg) -> None:
        completions.append(ExperimentCompleted.model_validate_json(msg.data))

    try:
        await nc.subscribe(subject_for(Subject.EXPERIMENT_COMPLETED, exp_id), cb=on_completed)
        await nc.flush()
        await submit(scheduler, intake)
        kv = await scheduler.ctx.js.key_value(Bucket.EXPERIMENTS.value)
        answered: set[int] = set()
        state = await _stored_within(kv, exp_id, limit)
        while not state.sealed:
            await _answer_in_flight(scheduler, state, answered)
            state = await _stored_within(kv, exp_id, limit)
        lost = state.sealed[0].key
        await kv.delete(lost)
        await scheduler.drop(exp_id)

        assert await scheduler.adopt(exp_id) is False, "an experiment that cannot be rebuilt does not run here"
        failed, _ = await scheduler.store.get_stored(exp_id)
        assert failed.status is ExperimentStatus.FAILED and lost in (failed.message or "")
        assert await scheduler.adopt(exp_id) is False and exp_id not in scheduler.runs, "and is not tried again"
        await until(lambda: completions, "the failed experiment's completion")
        (done,) = completions
        assert done.status is ExperimentStatus.FAILED and lost in (done.message or "") and done.total == state.trials_recorded
    finally:
        await nc.close()

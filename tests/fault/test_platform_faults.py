"""Platform faults on the real stack: scheduler and nats-server restarts, poison messages, load."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
from nats.js import api

from tests.fault.conftest import kill, stored_state, tweak, wait_exit, watching
from tweakline.proto.messages import DeadLetter, TrialStatus
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import DEFAULT_POOL, Stream, Subject, subject_for, trial_subject
from tweakline.runtime.bus import connect

pytestmark = pytest.mark.fault


async def test_sigkill_scheduler_mid_experiment_and_restart(make_stack) -> None:
    stack = await make_stack(runners=2)
    async with watching(stack) as watch:
        exp = await watch.submit(tweak("kill-scheduler", [0.4, 0.6], max_trials=8, parallelism=2))
        outcome = watch.outcomes[exp]
        await watch.until(lambda: len(outcome.trials) >= 3, "three results")
        kill(stack, "scheduler")
        assert await wait_exit(stack, "scheduler") == -signal.SIGKILL
        stack.respawn("scheduler")
        await watch.done(exp)
    trials = outcome.completed.trials
    assert sorted(t.number for t in trials) == list(range(8))  # none lost, none counted twice
    assert all(t.status is TrialStatus.OK for t in trials)
    state = await stored_state(stack, exp)
    assert state.status.value == "completed"
    assert sorted(state.results) == list(range(8)) and sorted(state.issued) == list(range(8))


async def test_nats_server_restart_mid_experiment(make_stack) -> None:
    stack = await make_stack(runners=2)
    async with watching(stack) as watch:
        # Six trials of 1-1.5 s are left after the second result: the restart lands mid-experiment.
        exp = await watch.submit(tweak("restart-nats", [0.5, 0.75], max_trials=8, parallelism=2))
        outcome = watch.outcomes[exp]
        await watch.until(lambda: len(outcome.trials) >= 2, "two results")
        assert outcome.completed is None  # the restart below really is mid-experiment
    # The follower's connection goes with the server; a new one reads the stored events again.
    await asyncio.to_thread(stack.restart_server)
    async with watching(stack) as watch:
        watch.track(exp, outcome.tweak)
        outcome = await watch.done(exp)
    assert sorted(t.number for t in outcome.completed.trials) == list(range(8))
    stack.check()  # every service survived the restart


# Every subject a service consumes, and what arrives there that can never be valid.
# The subjects read by durable consumers. Results (TrialCompleted) are not among them since the
# scheduler leases (#19): the owning scheduler reads its experiment's results through its own
# feed (services/scheduler/ownership.py), which skips and logs an undecodable one, and a result
# for an experiment no scheduler owns is never read by anyone, so it cannot be dead-lettered.
CONSUMED = [
    Subject.EXPERIMENT_SUBMITTED,
    Subject.TRIAL_REQUESTED,
    Subject.EXPERIMENT_COMPLETED,
    Subject.EVALUATION_COMPLETED,
]
STORED_IN = {Subject.TRIAL_REQUESTED: Stream.TRIALS}
POISON = {
    "garbage": b"\x00\xff not json at all \x13\x37",
    "truncated": b'{"experiment_id": "x", "trial_id": "x.0", "number": 0, "params": {"C": 1.0',
    "wrongly-typed": json.dumps({"experiment_id": 42, "number": "zero", "params": [1, 2], "status": "maybe"}).encode(),
    "oversized": json.dumps({"experiment_id": "x", "padding": "z" * 20_000}).encode(),
}


async def test_poison_messages_on_every_subject_go_to_dead_letters(make_stack) -> None:
    stack = await make_stack(runners=1, max_payload_bytes=8192)
    nc = await connect(stack.settings_for(Identity.ADMIN), "fault-test-poison")
    js = nc.jetstream()
    letters: list[DeadLetter] = []
    got = asyncio.Event()
    expected = len(CONSUMED) * len(POISON)

    async def on_letter(msg) -> None:
        letters.append(DeadLetter.model_validate_json(msg.data))
        if len(letters) >= expected:
            got.set()

    sub = await js.subscribe(
        f"{Subject.DEAD_LETTER.value}.>",
        stream=Stream.DEAD_LETTERS.value,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
        cb=on_letter,
    )
    try:
        for family in CONSUMED:
            for kind, payload in POISON.items():
                # trial requests carry the runner pool: the default pool's runner reads them
                exp = f"poison-{kind}"
                subject = trial_subject(DEFAULT_POOL, exp) if family is Subject.TRIAL_REQUESTED else subject_for(family, exp)
                await js.publish(subject, payload, stream=STORED_IN.get(family, Stream.EVENTS).value)
        await asyncio.wait_for(got.wait(), 240)
    finally:
        await sub.unsubscribe()
        await nc.close()

    seen = {
        (letter.subject.rsplit(".", 1)[0].removesuffix(f".{DEFAULT_POOL}"), letter.subject.split(".poison-", 1)[-1]): letter
        for letter in letters
    }
    assert len(letters) == expected
    for family in CONSUMED:
        for kind in POISON:
            letter = seen[(family.value, kind)]
            assert letter.reason
            if kind == "oversized":
                assert "exceeds the limit of 8192" in letter.reason
            else:
                assert letter.reason.startswith("not a valid ")
    stack.check()  # every service still running

    async with watching(stack) as watch:  # and the platform still works
        exp = await watch.submit(tweak("after-poison", [0.1], max_trials=2, parallelism=2))
        outcome = await watch.done(exp)
    assert [t.status for t in outcome.completed.trials] == [TrialStatus.OK, TrialStatus.OK]


async def test_ten_experiments_at_once_share_the_runners_fairly(make_stack) -> None:
    stack = await make_stack(runners=3)
    async with watching(stack) as watch:
        ids = [await watch.submit(tweak(f"load-{i}", [0.2, 0.3], max_trials=4, parallelism=2)) for i in range(10)]
        outcomes = [await watch.done(exp, timeout=600) for exp in ids]
    for outcome in outcomes:
        assert sorted(t.number for t in outcome.completed.trials) == [0, 1, 2, 3]
        # Per-experiment parallelism: at no moment were more than 2 of its trials training.
        spans = [(t.finished_at.timestamp() - t.duration_s, t.finished_at.timestamp()) for t in outcome.trials.values()]
        for start, _ in spans:
            assert sum(1 for s, e in spans if s <= start < e) <= 2
    # Fair sharing: every experiment had a result before any experiment had all of its results.
    first = max(min(t.finished_at for t in o.trials.values()) for o in outcomes)
    last = min(max(t.finished_at for t in o.trials.values()) for o in outcomes)
    assert first < last


async def test_evaluator_down_picks_up_the_finished_experiment_when_back(make_stack) -> None:
    stack = await make_stack(runners=1)
    kill(stack, "evaluator")
    assert await wait_exit(stack, "evaluator") == -signal.SIGKILL
    async with watching(stack) as watch:
        exp = await watch.submit(tweak("evaluator-down", [0.1], max_trials=2, parallelism=2))
        outcome = watch.outcomes[exp]
        await watch.until(lambda: outcome.completed is not None, "the search to finish")
        assert outcome.evaluation is None  # nobody to evaluate it yet: the work waits in the stream
        stack.respawn("evaluator")
        await watch.done(exp)
    assert outcome.evaluation.experiment_id == exp

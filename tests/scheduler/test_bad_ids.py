"""Submissions with ids that cannot be a subject token or a KV key are dead-lettered once; scheduling goes on.

A 5,000-character experiment id used to make nats-server close the scheduler's connection
("maximum control line exceeded") and stop all scheduling; ``"a b"`` and ``""`` failed on every
delivery without a dead letter (#16). Here a scheduler and a trial-runner run as their apps (in
this process) against the real mTLS nats-server: a control experiment is timed alone, then the
same experiment right behind a burst of such submissions.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.factories import make_tweak, tweak_dict
from tests.waiting import until
from tweakline.proto.messages import DeadLetter, ExperimentCompleted, ExperimentStatus, ExperimentSubmitted
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, subject_for
from tweakline.runtime.bus import connect
from tweakline.runtime.service import connection_watch
from tweakline.scheduler.app import create_app as scheduler_app
from tweakline.trial_runner.app import create_app as runner_app

BAD_IDS = {"huge": "x" * 5000, "space": "a b", "empty": "", "dot": "a.b", "wildcard": "a>"}
TWEAK = make_tweak(
    "bad-ids",
    objective={"metric": "accuracy", "cv": 2},
    budget={"max_trials": 2, "parallelism": 2},
    search={"algorithm": "random", "seed": 0, "space": {"C": {"type": "float", "low": 0.1, "high": 10.0}}},
)
COMPLETION_TIMEOUT_S = 120.0


@pytest.fixture
async def stack(nats) -> AsyncIterator[object]:
    """A scheduler and a trial-runner as their apps; yields the scheduler's app."""
    apps = [scheduler_app(nats.settings(Identity.SCHEDULER)), runner_app(nats.settings(Identity.TRIAL_RUNNER))]
    for app in apps:
        await app.start()
    try:
        yield apps[0]
    finally:
        for app in reversed(apps):
            await app.stop()


async def _time_experiment(nc, before: list[tuple[str, bytes]] = ()) -> float:
    """Publish ``before`` (subject, raw body), then a good experiment; seconds until it completed."""
    js = nc.jetstream()
    exp_id = f"bad-ids-{uuid.uuid4().hex[:8]}"
    done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def on_completed(msg) -> None:
        if not done.done():
            done.set_result(msg.data)

    sub = await nc.subscribe(subject_for(Subject.EXPERIMENT_COMPLETED, exp_id), cb=on_completed)
    try:
        started = time.monotonic()
        for subject, body in before:
            await js.publish(subject, body, stream=Stream.EVENTS.value)
        good = ExperimentSubmitted(experiment_id=exp_id, tweak=TWEAK)
        await js.publish(
            subject_for(Subject.EXPERIMENT_SUBMITTED, exp_id), good.model_dump_json().encode(), stream=Stream.EVENTS.value
        )
        completed = ExperimentCompleted.model_validate_json(await asyncio.wait_for(done, COMPLETION_TIMEOUT_S))
        elapsed = time.monotonic() - started
    finally:
        await sub.unsubscribe()
    assert completed.status is ExperimentStatus.COMPLETED and len(completed.trials) == 2
    return elapsed


async def test_bad_ids_are_dead_lettered_once_and_do_not_delay_other_experiments(nats, stack) -> None:
    nc = await connect(nats.settings(Identity.ADMIN), "test-bad-ids")
    letters: list[DeadLetter] = []

    async def on_letter(msg) -> None:
        letters.append(DeadLetter.model_validate_json(msg.data))

    await nc.subscribe(f"{Subject.DEAD_LETTER.value}.scheduler", cb=on_letter)
    try:
        control = await _time_experiment(nc)
        # The attacker's subject token is valid (the server would refuse anything else); the id
        # inside the body is not. Each must give exactly one dead letter.
        run = uuid.uuid4().hex[:8]
        poison = {
            kind: (
                subject_for(Subject.EXPERIMENT_SUBMITTED, f"poison-{run}-{kind}"),
                json.dumps({"experiment_id": bad, "tweak": tweak_dict("bad-ids")}).encode(),
            )
            for kind, bad in BAD_IDS.items()
        }
        poisoned = await _time_experiment(nc, [*poison.values()])
        subjects = {subject for subject, _ in poison.values()}

        def mine() -> list[DeadLetter]:
            return [letter for letter in letters if letter.subject in subjects]

        await until(lambda: len(mine()) >= len(poison), "a dead letter for every bad submission", timeout=30)
        # The scheduler stayed connected the whole time (no close, no reconnect) and is live.
        broker = stack.broker
        assert broker.connection.is_connected and broker.connection.stats["reconnects"] == 0
        assert connection_watch(broker).alive()
        # A final round trip through the scheduler's consumer: everything before it was handled.
        info = await nc.jetstream().consumer_info(Stream.EVENTS.value, "scheduler-intake")
        assert info.num_ack_pending == 0 and info.num_pending == 0
    finally:
        await nc.close()

    by_subject = {letter.subject: letter for letter in mine()}
    assert len(mine()) == len(poison), [letter.subject for letter in mine()]  # once each, never redelivered
    for kind, (subject, _) in poison.items():
        reason = by_subject[subject].reason
        assert reason.startswith("not a valid ExperimentSubmitted: experiment_id:"), (kind, reason)
    assert "at most 100 characters" in by_subject[poison["huge"][0]].reason
    # Not delayed: the same experiment behind the burst takes about as long as alone (the bug
    # stopped all scheduling for minutes). Generous for a loaded 2-core machine.
    print(f"control experiment {control:.1f} s, behind {len(poison)} bad submissions {poisoned:.1f} s")
    assert poisoned < max(3 * control, control + 15), (control, poisoned)

"""What the scheduler saves per group of results (real bus, mTLS).

The state is written from JSON cached per entry (``tweakline.scheduler.snapshot``): the KV value
must be exactly the state's ``model_dump_json()`` after every commit, so every reader parses
the same document as before.
"""

from __future__ import annotations

import asyncio
import uuid

from tests.factories import make_tweak
from tests.scheduler.test_handlers import Delivered, complete, result_body, submit
from tweakline.proto.messages import ExperimentSubmitted
from tweakline.proto.subjects import Bucket, Subject, subject_for
from tweakline.scheduler.handlers import Scheduler


def _submission(algorithm: str, parallelism: int = 4) -> tuple[str, Delivered]:
    exp_id = f"saves-{algorithm}-{uuid.uuid4().hex[:8]}"
    tweak = make_tweak(
        "saves",
        search={"algorithm": algorithm, "seed": 0, "space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
        objective={"metric": "accuracy", "cv": 2},
        budget={"max_trials": 40, "parallelism": parallelism},
    )
    submitted = ExperimentSubmitted(experiment_id=exp_id, tweak=tweak)
    return exp_id, Delivered(submitted.model_dump_json().encode(), subject_for(Subject.EXPERIMENT_SUBMITTED, exp_id))


async def test_every_saved_state_is_the_states_own_json(scheduler: Scheduler) -> None:
    exp_id, intake = _submission("random")
    await submit(scheduler, intake)
    kv = await scheduler.ctx.js.key_value(Bucket.EXPERIMENTS.value)
    for round_ in range(3):
        state = scheduler.runs[exp_id][0].state
        numbers = sorted(set(state.issued) - set(state.results))
        results = [
            Delivered(result_body(exp_id, n, state.issued[n], 0.5 + n / 100), subject_for(Subject.TRIAL_COMPLETED, exp_id))
            for n in numbers
        ]
        await asyncio.gather(*(complete(scheduler, r) for r in results))
        assert all(r.acked for r in results)
        saved = (await kv.get(exp_id)).value
        assert saved == state.model_dump_json().encode(), f"round {round_}"
        assert sorted(scheduler.store.model.model_validate_json(saved).results) == sorted(state.results)

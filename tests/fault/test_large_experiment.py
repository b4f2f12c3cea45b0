"""An experiment whose leaderboard does not fit in one message still gets its decision.

Every service refuses a message over its limit (TWEAKLINE_MAX_PAYLOAD_BYTES, 1 MiB by default:
about 2,700 trial records). Before the completion was bounded, a larger experiment's
``ExperimentCompleted`` went to the dead letters and the evaluator never decided. Here the limit is
48 KiB, so 300 trials (about 120 KiB of records) are over it.
"""

from __future__ import annotations

from tests.fault.conftest import tweak, watching

LIMIT = 48 * 1024


async def test_an_experiment_larger_than_one_message_is_evaluated_with_its_leaderboards_first_trials(make_stack) -> None:
    stack = await make_stack(runners=2, max_payload_bytes=LIMIT)
    async with watching(stack) as watch:
        exp_id = await watch.submit(tweak("big-leaderboard", [0.0], max_trials=300, parallelism=32))
        outcome = await watch.done(exp_id, timeout=120)

    assert len(outcome.trials) == 300, "every result reached the follower"
    completed = outcome.completed
    assert completed is not None and outcome.evaluation is not None, watch.describe(exp_id)
    assert sum(len(r.model_dump_json()) for r in outcome.trials.values()) > LIMIT, "the case under test"
    assert len(completed.model_dump_json()) < LIMIT
    assert completed.total == 300 and 0 < len(completed.trials) < 300
    assert completed.best is not None and completed.trials[0].number == completed.best.number
    assert outcome.evaluation.trials_total == 300, "the evaluator counts every trial, not the listed ones"

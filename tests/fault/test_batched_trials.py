"""Fast trials travel in batches through the real stack, and a runner killed while batches flow
loses none and counts none twice."""

from __future__ import annotations

import signal

from tests.fault.conftest import kill, tweak, wait_exit, watching
from tweakline.proto.messages import TrialRequested, TrialStatus
from tweakline.proto.subjects import Subject, all_of


async def test_a_runner_killed_while_batches_flow_still_gives_exactly_max_trials(make_stack) -> None:
    # A batch target far above any trial's duration: every request after the first results
    # carries a quarter of the parallelism (4 trials), whatever the machine's speed.
    stack = await make_stack(runners=2, trial_batch_target_s=1000.0)
    async with watching(stack) as watch:
        requests: list[TrialRequested] = []

        async def on_request(msg) -> None:
            requests.append(TrialRequested.model_validate_json(msg.data))
            await watch._notify()

        await watch.nc.subscribe(all_of(Subject.TRIAL_REQUESTED), cb=on_request)
        exp = await watch.submit(tweak("batched-kill", [0.02, 0.04], max_trials=48, parallelism=16))
        outcome = watch.outcomes[exp]
        await watch.until(
            lambda: len(outcome.trials) >= 16 and any(r.batch for r in requests), "batched requests after the first results"
        )
        kill(stack, "trial-runner-0")  # busy with a request at nearly every moment: most likely mid-batch
        assert await wait_exit(stack, "trial-runner-0") == -signal.SIGKILL
        await watch.done(exp)
    completed = outcome.completed
    assert completed is not None and completed.status.value == "completed"
    assert sorted(t.number for t in completed.trials) == list(range(48)), "every trial once: none lost, none twice"
    assert all(t.status is TrialStatus.OK for t in completed.trials)
    sizes = [len(r.trials()) for r in requests]
    assert sizes[:16] == [1] * 16, "the first trials go alone"
    assert max(sizes) == 4, sizes

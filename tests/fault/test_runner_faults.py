"""Runner faults on the real stack: killed or stopped mid-trial, trials over their limits, trials that raise."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import psutil
import pytest

from tests.conftest import REPO
from tests.fault.conftest import fault_settings, kill, tweak, wait_exit, watching
from tests.waiting import until
from tweakline.proto.messages import TrialStatus
from tweakline.proto.tweakfile import TweakFile
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def shared_runner_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One stack with one runner for the stories where a trial fails and the runner goes on.

    Those stories leave the stack whole (that the runner and every service live on is what they
    show), so they share it instead of starting one each; each submits its own experiment and
    waits on that experiment's own events. The stories that kill or stop a runner get their own.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        stack = LocalStack(
            tmp_path_factory.mktemp("one-runner") / "state", runners=1, settings=fault_settings(trial_max_deliver=3)
        )
        stack.start()
        try:
            yield stack
        finally:
            stack.stop(grace=5.0)


@pytest.fixture
def one_runner(shared_runner_stack: LocalStack) -> LocalStack:
    """The shared one-runner stack, checked whole before the test (a story before it left every service running)."""
    shared_runner_stack.check()
    return shared_runner_stack


def numbers_of(outcome) -> list[int]:
    return sorted(t.number for t in outcome.completed.trials)


def started(watch, exp: str) -> set[int]:
    """Trials of ``exp`` that reported at least one fold."""
    return {p.number for p in watch.progress if p.experiment_id == exp}


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_sigkill_runner_mid_trial_still_gives_exactly_max_trials(make_stack) -> None:
    stack = await make_stack(runners=2)
    async with watching(stack) as watch:
        # Four trials: two in flight when a runner dies, and two more after (max_trials is still exact).
        exp = await watch.submit(tweak("kill-runner", [1.5, 2.0], max_trials=4, parallelism=2))
        outcome = watch.outcomes[exp]
        # Two trials past their first fold and not finished: each runner is mid-trial.
        await watch.until(lambda: len(started(watch, exp) - set(outcome.trials)) >= 2, "two trials in flight")
        [runner] = [s for s in stack.services if s.name == "trial-runner-0"]
        # Its training zygote was forked as it started (the fork server's first call), and trains through its child.
        assert "forked as the runner started" in runner.log_path.read_text()
        training = psutil.Process(runner.process.pid).children(recursive=True)
        assert len(training) == 2
        kill(stack, "trial-runner-0")
        assert await wait_exit(stack, "trial-runner-0") == -signal.SIGKILL
        # Neither the zygote nor the child outlives the runner.
        await until(lambda: all(_gone(p) for p in training), what="the runner's zygote and child to die with it", timeout=60)
        await watch.done(exp)
    completed = outcome.completed
    assert completed is not None and completed.status.value == "completed"
    assert numbers_of(outcome) == list(range(4))  # exactly max_trials: none lost, none counted twice
    assert all(t.status is TrialStatus.OK for t in completed.trials)
    assert max(t.attempt for t in outcome.trials.values()) >= 2  # the killed runner's trial was redelivered


async def test_runner_killed_on_the_last_delivery_still_reports_the_trial(make_stack) -> None:
    # max_deliver 1: the first runner dies on the only allowed delivery; the next runner records it as failed.
    stack = await make_stack(runners=1, trial_max_deliver=1)
    async with watching(stack) as watch:
        exp = await watch.submit(tweak("last-delivery", [2.0], max_trials=1, parallelism=1))
        await watch.until(lambda: bool(started(watch, exp)), "the trial's first fold")
        kill(stack, "trial-runner-0")
        await wait_exit(stack, "trial-runner-0")
        stack.respawn("trial-runner-0")
        outcome = await watch.done(exp)
    [trial] = outcome.completed.trials
    assert trial.status is TrialStatus.FAILED
    assert "gave up after 1 deliveries" in trial.error


async def test_sigterm_runner_finishes_its_trial_within_the_grace(make_stack) -> None:
    stack = await make_stack(runners=1, shutdown_grace_s=60.0)
    async with watching(stack) as watch:
        # Two folds of 1.5 s: SIGTERM lands after the first, so the runner is mid-trial when it starts stopping.
        exp = await watch.submit(tweak("sigterm-finish", [1.5], max_trials=1, parallelism=1))
        await watch.until(lambda: bool(started(watch, exp)), "the trial's first fold")
        kill(stack, "trial-runner-0", signal.SIGTERM)
        assert await wait_exit(stack, "trial-runner-0") == 0
        outcome = await watch.done(exp)
    [trial] = outcome.completed.trials
    assert trial.status is TrialStatus.OK
    assert outcome.trials[0].attempt == 1  # finished by the runner that was stopping


async def test_sigterm_runner_hands_back_a_long_trial(make_stack) -> None:
    # Three folds of 2 s and a 1 s grace: SIGTERM lands after the first fold, so at least 2 s of
    # training are left, twice the grace: the stopping runner cannot finish, so it naks the trial.
    stack = await make_stack(runners=1, shutdown_grace_s=1.0)
    async with watching(stack) as watch:
        exp = await watch.submit(_with_cv(tweak("sigterm-handback", [2.0], max_trials=1, parallelism=1), 3))
        await watch.until(lambda: bool(started(watch, exp)), "the trial's first fold")
        kill(stack, "trial-runner-0", signal.SIGTERM)
        assert await wait_exit(stack, "trial-runner-0") == 0
        assert not watch.outcomes[exp].trials  # handed back, not reported
        stack.respawn("trial-runner-0")  # a replacement pod
        outcome = await watch.done(exp)
    trial = outcome.trials[0]
    assert trial.status is TrialStatus.OK
    assert trial.attempt == 2


async def test_trial_over_its_time_limit_fails_and_the_runner_takes_the_next(one_runner: LocalStack) -> None:
    stack = one_runner
    tf = tweak("trial-timeout", [0.1, 30.0, 0.2], max_trials=3, parallelism=1, trial_timeout="3s")
    tf = _with_search(tf, algorithm="grid")
    async with watching(stack) as watch:
        exp = await watch.submit(tf)
        outcome = await watch.done(exp)
    by_delay = {t.params["delay"]: t for t in outcome.completed.trials}
    assert set(by_delay) == {0.1, 30.0, 0.2}
    slow = by_delay[30.0]
    assert slow.status is TrialStatus.FAILED
    assert "time limit of 3s (budget.trial_timeout)" in slow.error
    assert by_delay[0.1].status is TrialStatus.OK and by_delay[0.2].status is TrialStatus.OK
    assert len({t.runner for t in outcome.completed.trials}) == 1  # the same runner went on


async def test_estimator_raising_for_some_params_fails_those_trials_only(one_runner: LocalStack) -> None:
    # Real scikit-learn: lbfgs refuses an L1 penalty (l1_ratio=1), saga accepts it.
    stack = one_runner
    tf = TweakFile.model_validate(
        {
            "apiVersion": "tweakline/v1",
            "kind": "Experiment",
            "metadata": {"name": "raising"},
            "spec": {
                "dataset": {"source": "sklearn:iris", "seed": 0},
                "model": {
                    "estimator": "sklearn.linear_model.LogisticRegression",
                    "pipeline": ["sklearn.preprocessing.StandardScaler"],
                    "fixed": {"l1_ratio": 1.0},
                },
                "search": {
                    "algorithm": "grid",
                    "space": {
                        "solver": {"type": "categorical", "choices": ["lbfgs", "saga"]},
                        "C": {"type": "categorical", "choices": [0.5, 1.0]},
                    },
                },
                "objective": {"metric": "accuracy", "cv": 2},
                "budget": {"max_trials": 4, "parallelism": 2},
            },
        }
    )
    async with watching(stack) as watch:
        exp = await watch.submit(tf)
        outcome = await watch.done(exp)
    trials = outcome.completed.trials
    assert len(trials) == 4
    for trial in trials:
        if trial.params["solver"] == "lbfgs":
            assert trial.status is TrialStatus.FAILED
            assert "Solver lbfgs supports only 'l2' or None penalties" in trial.error
        else:
            assert trial.status is TrialStatus.OK, trial.error
    assert outcome.completed.status.value == "completed"
    assert outcome.evaluation is not None  # the experiment went on to its decision


async def test_trial_that_always_crashes_is_failed_after_max_deliver(one_runner: LocalStack) -> None:
    # delay 0.3 kills the training process every time: retried with back-off, then failed with the reason.
    stack = one_runner  # trial_max_deliver 3
    tf = _with_model(tweak("crashing", [0.1, 0.3], max_trials=2, parallelism=1), fixed={"crash_if": 0.3})
    tf = _with_search(tf, algorithm="grid")
    async with watching(stack) as watch:
        exp = await watch.submit(tf)
        outcome = await watch.done(exp)
    by_delay = {t.params["delay"]: t for t in outcome.trials.values()}
    assert by_delay[0.1].status is TrialStatus.OK
    crashed = by_delay[0.3]
    assert crashed.status is TrialStatus.FAILED
    assert crashed.attempt == 3
    assert "the training process died (killed by SIGKILL)" in crashed.error
    stack.check()  # the runner itself lived on


def _with_model(tf: TweakFile, **changes: object) -> TweakFile:
    data = tf.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["spec"]["model"].update(changes)
    return TweakFile.model_validate(data)


def _with_search(tf: TweakFile, **changes: object) -> TweakFile:
    data = tf.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["spec"]["search"].update(changes)
    return TweakFile.model_validate(data)


def _with_cv(tf: TweakFile, cv: int) -> TweakFile:
    data = tf.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["spec"]["objective"]["cv"] = cv
    return TweakFile.model_validate(data)

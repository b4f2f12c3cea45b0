"""The training child: limits, cancellation and crash handling, with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import psutil
import pytest

from tweakline.proto.messages import TrialRequested, TrialStatus
from tweakline.proto.tweakfile import ExperimentSpec
from tweakline.trial_runner.worker import TrialAbortedError, TrialWorker, WorkerConfig, WorkerCrashedError

ALLOWED = ("sklearn.", "tests.fault.")
SLEEPY = "tests.fault.estimators.SleepyClassifier"


def request(
    params: dict[str, Any],
    *,
    estimator: str = SLEEPY,
    cv: int = 2,
    number: int = 0,
    pruner: str = "none",
    resource: dict[str, Any] | None = None,
) -> TrialRequested:
    spec = ExperimentSpec.model_validate(
        {
            "dataset": {"source": "sklearn:iris", "seed": 0},
            "model": {"estimator": estimator},
            "search": {
                "space": {"delay": {"type": "float", "low": 0.0, "high": 60.0}},
                "pruner": pruner,
                **({"resource": resource} if resource else {}),
            },
            "objective": {"metric": "accuracy", "cv": cv},
        }
    )
    return TrialRequested(experiment_id="exp", trial_id=f"exp-{number}", number=number, params=params, spec=spec)


@pytest.fixture
async def worker():
    w = TrialWorker(WorkerConfig(allowed_estimators=ALLOWED, memory_limit_mb=600, cancel_grace_s=0.5))
    yield w
    await w.close()


async def test_trials_reuse_one_child_and_forward_fold_scores(worker: TrialWorker) -> None:
    folds: list[tuple[int, float]] = []
    first = await worker.run(request({"C": 1.0}, estimator="sklearn.svm.SVC", cv=3), on_fold=lambda i, v: folds.append((i, v)))
    assert first.status is TrialStatus.OK, first.error
    assert [i for i, _ in folds] == [0, 1, 2]
    assert [v for _, v in folds] == first.fold_scores
    pid = worker.pid
    second = await worker.run(request({"delay": 0.0}))
    assert second.status is TrialStatus.OK, second.error
    assert worker.pid == pid and worker.spawned == 1


async def test_a_fast_trial_sends_its_fold_scores_with_its_outcome_not_one_by_one(worker: TrialWorker) -> None:
    folds: list[tuple[int, float]] = []
    fast = await worker.run(request({"delay": 0.0}, cv=3), on_fold=lambda i, v: folds.append((i, v)), folds_after_s=30.0)
    assert fast.status is TrialStatus.OK and len(fast.fold_scores) == 3
    assert folds == [], "no fold message before the trial has trained for folds_after_s"
    slow = await worker.run(request({"delay": 1.0}, cv=3), on_fold=lambda i, v: folds.append((i, v)), folds_after_s=1.5)
    assert slow.status is TrialStatus.OK
    assert [i for i, _ in folds] == [1, 2] and [v for _, v in folds] == slow.fold_scores[1:], "live once past 1.5 s"


async def test_time_limit_fails_the_trial_and_the_next_one_runs(worker: TrialWorker) -> None:
    await worker.start()
    old = worker.pid
    slow = request({"delay": 60.0})
    outcome = await worker.run(slow, timeout=1.0)
    assert outcome.status is TrialStatus.FAILED
    assert "time limit of 1s (budget.trial_timeout)" in (outcome.error or "")
    assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
    # The same spec object (as a batch's next trial): the new child has not seen it yet.
    after = await worker.run(slow.model_copy(update={"params": {"delay": 0.0}}))
    assert after.status is TrialStatus.OK and worker.spawned == 2


async def test_memory_limit_fails_the_trial(worker: TrialWorker) -> None:
    outcome = await worker.run(request({"delay": 30.0, "hog_mb": 900}), timeout=60.0)
    assert outcome.status is TrialStatus.FAILED
    assert "over the runner's limit of 600 MiB" in (outcome.error or "")
    assert (await worker.run(request({"delay": 0.0}))).status is TrialStatus.OK


async def test_cancel_prunes_the_running_trial(worker: TrialWorker) -> None:
    req = request({"delay": 30.0}, cv=3)
    task = asyncio.create_task(worker.run(req))
    while worker.current != req.trial_id:
        await asyncio.sleep(0.05)
    assert not worker.cancel("someone-else", "no")
    assert worker.cancel(req.trial_id, "pruned by the test")
    outcome = await asyncio.wait_for(task, 60)
    assert outcome.status is TrialStatus.PRUNED
    assert outcome.error == "pruned by the test"


async def test_child_crash_is_reported_for_retry(worker: TrialWorker) -> None:
    req = request({"delay": 30.0})
    task = asyncio.create_task(worker.run(req))
    while worker.current != req.trial_id:
        await asyncio.sleep(0.05)
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashedError, match="SIGKILL"):
        await asyncio.wait_for(task, 60)
    assert (await worker.run(request({"delay": 0.0}))).status is TrialStatus.OK


async def test_abort_hands_the_trial_back(worker: TrialWorker) -> None:
    req = request({"delay": 30.0})
    task = asyncio.create_task(worker.run(req))
    while worker.current != req.trial_id:
        await asyncio.sleep(0.05)
    assert worker.abort()
    with pytest.raises(TrialAbortedError):
        await asyncio.wait_for(task, 60)


async def test_with_a_pruner_the_child_waits_for_each_verdict_and_stops_without_a_kill(worker: TrialWorker) -> None:
    verdicts: list[int] = []

    def prune_after_second_fold(fold: int, value: float) -> bool:
        verdicts.append(fold)
        return fold == 1

    outcome = await worker.run(
        request({"C": 1.0}, estimator="sklearn.svm.SVC", cv=5, pruner="median"), on_fold=prune_after_second_fold
    )
    assert outcome.status is TrialStatus.PRUNED
    assert verdicts == [0, 1] and len(outcome.fold_scores) == 2  # no fold trained after the verdict
    assert worker.spawned == 1  # stopped at the fold boundary: the child (and its data cache) lives on
    # a "continue" verdict on every fold runs the trial to the end
    full = await worker.run(request({"C": 1.0}, estimator="sklearn.svm.SVC", cv=3, pruner="median"), on_fold=lambda i, v: False)
    assert full.status is TrialStatus.OK and len(full.fold_scores) == 3


async def test_with_a_resource_the_child_waits_for_each_rungs_verdict(worker: TrialWorker) -> None:
    verdicts: list[int] = []

    def prune_after_second_rung(rung: int, value: float) -> bool:
        verdicts.append(rung)
        return rung == 1

    forest = "sklearn.ensemble.RandomForestClassifier"
    rungs = {"name": "n_estimators", "min": 3, "max": 27}  # 3, 9, 27 trees
    outcome = await worker.run(
        request({}, estimator=forest, cv=3, pruner="asha", resource=rungs), on_fold=prune_after_second_rung
    )
    assert outcome.status is TrialStatus.PRUNED
    assert verdicts == [0, 1] and len(outcome.rung_scores) == 2  # no rung trained after the verdict
    assert outcome.score == outcome.rung_scores[-1] and len(outcome.fold_scores) == 3
    full = await worker.run(request({}, estimator=forest, cv=3, pruner="asha", resource=rungs), on_fold=lambda i, v: False)
    assert full.status is TrialStatus.OK and len(full.rung_scores) == 3


async def test_a_random_estimator_scores_the_same_every_time_without_a_search_seed(worker: TrialWorker) -> None:
    # The child seeds estimators from dataset.seed: a configuration's score does not depend on
    # luck (or on search.seed, which the tweak file here does not even set).
    forest = request({}, estimator="sklearn.ensemble.RandomForestClassifier", cv=3)
    small = {"n_estimators": 2, "max_features": 1, "max_depth": 2}  # very random: scores vary run to run unseeded
    forest = forest.model_copy(
        update={"spec": forest.spec.model_copy(update={"model": forest.spec.model.model_copy(update={"fixed": small})})}
    )
    assert forest.spec.search.seed is None
    first = await worker.run(forest)
    again = await worker.run(forest)
    assert first.status is TrialStatus.OK and first.fold_scores == again.fold_scores

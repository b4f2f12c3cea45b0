"""The runner's side of early stopping over a real mTLS nats-server.

A trial's ``on_fold`` hook runs on a training thread: it must publish the fold's score through
the runner's event loop, wait for the scheduler's verdict, and stop the trial (and call the
cancel hook) when the verdict is prune. The scheduler's side is played by an admin client.
"""

from __future__ import annotations

import asyncio

from tweakline.proto.messages import TrialControl, TrialControlAction, TrialProgress, TrialRequested
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Subject, all_of, subject_for
from tweakline.proto.tweakfile import ExperimentSpec
from tweakline.runtime.bus import connect
from tweakline.runtime.service import ServiceContext, make_broker
from tweakline.trial_runner.early_stopping import EarlyStopping

SPEC = ExperimentSpec.model_validate(
    {
        "dataset": {"source": "sklearn:iris"},
        "model": {"estimator": "sklearn.svm.SVC"},
        "search": {"space": {"C": {"type": "float", "low": 0.1, "high": 10}}, "pruner": "median"},
        "objective": {"metric": "accuracy", "cv": 5},
    }
)


def request(exp_id: str, number: int) -> TrialRequested:
    return TrialRequested(experiment_id=exp_id, trial_id=f"{exp_id}.{number}", number=number, params={"C": 1.0}, spec=SPEC)


async def test_verdicts_reach_the_training_thread_and_prune_stops_the_trial(nats) -> None:
    settings = nats.settings(Identity.TRIAL_RUNNER, prune_verdict_wait_s=10.0)
    broker = make_broker(settings, "trial-runner")
    cancelled: list[tuple[str, str]] = []
    early = EarlyStopping(ServiceContext(settings, broker, "trial-runner"), on_cancel=lambda t, r: cancelled.append((t, r)))

    broker.subscriber(all_of(Subject.TRIAL_CONTROL))(early.on_control)  # as the runner's app subscribes it

    # The scheduler: fold 0 may go on, fold 1 is pruned; it also prunes a trial this runner is not training.
    scheduler = await connect(nats.settings(Identity.ADMIN), "test-scheduler")
    seen: list[TrialProgress] = []

    async def on_progress(msg) -> None:
        progress = TrialProgress.model_validate_json(msg.data)
        seen.append(progress)
        action = TrialControlAction.PRUNE if progress.step == 1 else TrialControlAction.CONTINUE
        for trial in (progress.trial_id, "someone-else.0"):
            verdict = TrialControl(
                experiment_id=progress.experiment_id, trial_id=trial, action=action, step=progress.step, reason="median pruner"
            )
            await scheduler.publish(
                subject_for(Subject.TRIAL_CONTROL, progress.experiment_id), verdict.model_dump_json().encode()
            )

    await scheduler.subscribe(all_of(Subject.TRIAL_PROGRESS), cb=on_progress)
    await scheduler.flush()
    async with broker:
        await broker.start()
        await early.start()
        with early.watch(request("es-1", 3)) as watch:
            # As run_trial calls it: from the training thread, after each fold.
            verdicts = [await asyncio.to_thread(watch.on_fold, fold, [0.9, 0.6][fold]) for fold in range(2)]
        assert verdicts == [False, True]
        assert [(p.step, p.value, p.awaits_verdict) for p in seen] == [(0, 0.9, True), (1, 0.6, True)]
        assert cancelled == [("es-1.3", "median pruner")]  # only this runner's trial, once
        assert watch.reason == "median pruner"
    await scheduler.close()


async def test_without_an_answer_the_trial_goes_on_after_the_wait(nats) -> None:
    settings = nats.settings(Identity.TRIAL_RUNNER, prune_verdict_wait_s=0.2)
    broker = make_broker(settings, "trial-runner")
    early = EarlyStopping(ServiceContext(settings, broker, "trial-runner"))
    async with broker:
        await broker.start()
        await early.start()
        with early.watch(request("es-2", 0)) as watch:
            assert await asyncio.to_thread(watch.on_fold, 0, 0.5) is False  # nobody answered: keep training
            assert await asyncio.to_thread(watch.on_fold, 4, 0.5) is False  # the last fold never waits

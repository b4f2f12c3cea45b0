"""A cancel on the real bus: the state is saved before the event, and a redelivered cancel announces again."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from tests.scheduler.test_handlers import submission, submit
from tests.waiting import until
from tweakline.proto.messages import CancelExperiment, ExperimentCancelled, ExperimentStatus
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Subject, subject_for
from tweakline.runtime.bus import connect
from tweakline.scheduler.handlers import Scheduler


@dataclass
class Command:
    """A delivered experiments.cancel command, ``delivered`` times so far."""

    delivered: int = 1
    acked: bool = False

    @property
    def raw_message(self) -> SimpleNamespace:
        return SimpleNamespace(metadata=SimpleNamespace(num_delivered=self.delivered))

    async def ack(self) -> None:
        self.acked = True


async def test_whoever_reacts_to_the_cancelled_event_reads_the_cancelled_state(scheduler: Scheduler, nats) -> None:
    exp_id, intake = submission("cancel-order", parallelism=2)
    await submit(scheduler, intake)
    seen: list[ExperimentStatus | None] = []
    nc = await connect(nats.settings(Identity.ADMIN), "test-cancel-order")

    async def on_event(msg: Any) -> None:
        ExperimentCancelled.model_validate_json(msg.data)
        found = await scheduler.store.get(exp_id)  # what a client listing experiments reads now
        seen.append(found[0].status if found else None)

    try:
        await nc.subscribe(subject_for(Subject.EXPERIMENT_CANCELLED, exp_id), cb=on_event)
        await nc.flush()
        command = Command()
        await scheduler.on_cancel(CancelExperiment(experiment_id=exp_id, reason="enough", requested_by="test"), command)
        assert command.acked
        await until(lambda: seen, timeout=30, what="the cancelled event")
        assert seen == [ExperimentStatus.CANCELLED]
    finally:
        await nc.close()


async def test_a_redelivered_cancel_announces_the_stop_again_and_a_first_one_of_a_stopped_experiment_does_not(
    scheduler: Scheduler, monkeypatch
) -> None:
    exp_id, intake = submission("cancel-again", parallelism=2)
    await submit(scheduler, intake)
    command = CancelExperiment(experiment_id=exp_id, reason="enough", requested_by="test")
    await scheduler.on_cancel(command, Command())
    announced: list[ExperimentCancelled] = []
    publish = scheduler.ctx.publish

    async def recording(message: Any, subject: str, **kwargs: Any) -> Any:
        if isinstance(message, ExperimentCancelled):
            announced.append(message)
        return await publish(message, subject, **kwargs)

    monkeypatch.setattr(scheduler.ctx, "publish", recording)
    await scheduler.on_cancel(command, Command(delivered=1))  # a new command: the experiment is not running
    assert announced == []
    await scheduler.on_cancel(command, Command(delivered=2))  # the same command again: its event may be lost
    assert [(e.experiment_id, e.status, e.reason) for e in announced] == [(exp_id, ExperimentStatus.CANCELLED, "enough")]

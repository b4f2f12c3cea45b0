"""The scheduler service: turns submitted experiments into trials and results into decisions to search on."""

from __future__ import annotations

from faststream import AckPolicy, FastStream
from faststream.nats import NatsMessage

from tweakline.proto.subjects import Consumer, Subject, all_of
from tweakline.runtime.service import ServiceContext, durable_subscription, make_app, make_broker
from tweakline.runtime.settings import Settings
from tweakline.scheduler.handlers import Scheduler

NAME = "scheduler"


def create_app(settings: Settings) -> FastStream:
    """Build the scheduler's broker, subscribers and lifecycle hooks."""
    broker = make_broker(settings, NAME)
    app = make_app(broker, NAME)
    scheduler = Scheduler(ServiceContext(settings, broker, NAME))

    @broker.subscriber(**durable_subscription(Consumer.SCHEDULER_INTAKE, batch_size=16), ack_policy=AckPolicy.MANUAL)
    async def experiment_submitted(msg: NatsMessage) -> None:
        await scheduler.on_submitted(msg)

    @broker.subscriber(**durable_subscription(Consumer.SCHEDULER_RESULTS, batch_size=64), ack_policy=AckPolicy.MANUAL)
    async def trial_completed(msg: NatsMessage) -> None:
        await scheduler.on_trial_completed(msg)

    @broker.subscriber(all_of(Subject.TRIAL_PROGRESS))
    async def trial_progress(msg: NatsMessage) -> None:
        await scheduler.on_progress(msg)

    async def _resume_first() -> None:
        # Resume from KV before the subscribers start: a redelivered submission or result arriving
        # while an experiment is being rebuilt would otherwise race the rebuild.
        await broker.connect()
        await scheduler.start()

    app.on_startup(_resume_first)
    app.on_shutdown(scheduler.stop)
    return app

"""The trial-runner service: a long-lived process pulling trials from the shared work queue."""

from __future__ import annotations

from faststream import AckPolicy, FastStream
from faststream.nats import NatsMessage

from tweakline.ml.uploads import use_uploaded_datasets
from tweakline.proto.subjects import Consumer, Subject, all_of
from tweakline.runtime.service import ServiceContext, durable_subscription, make_app, make_broker
from tweakline.runtime.settings import Settings
from tweakline.trial_runner.handlers import TrialRunner

NAME = "trial-runner"


def create_app(settings: Settings) -> FastStream:
    """Build the runner's broker and its work-queue subscriber (one trial at a time)."""
    broker = make_broker(settings, NAME)
    app = make_app(broker, NAME)
    runner = TrialRunner(ServiceContext(settings, broker, NAME))

    @broker.subscriber(**durable_subscription(Consumer.TRIAL_RUNNERS, batch_size=1), ack_policy=AckPolicy.MANUAL)
    async def trial_requested(msg: NatsMessage) -> None:
        await runner.on_trial_requested(msg)

    @broker.subscriber(all_of(Subject.TRIAL_CONTROL))  # early stopping: verdicts for this runner's trials
    async def trial_control(msg: NatsMessage) -> None:
        await runner.early.on_control(msg)

    app.after_startup(runner.early.start)

    app.after_startup(use_uploaded_datasets(ServiceContext(settings, broker, NAME)))
    app.after_startup(runner.start)
    app.on_shutdown(runner.stop)  # before the broker closes: the trial's result or nak still goes out
    return app

"""The evaluator service: decides whether a tuned model may be promoted."""

from __future__ import annotations

from faststream import AckPolicy, FastStream
from faststream.nats import NatsMessage

from tweakline.evaluator.handlers import Evaluator
from tweakline.ml.uploads import use_uploaded_datasets
from tweakline.proto.subjects import Consumer
from tweakline.runtime.service import ServiceContext, durable_subscription, make_app, make_broker
from tweakline.runtime.settings import Settings

NAME = "evaluator"


def create_app(settings: Settings) -> FastStream:
    """Build the evaluator's broker and subscriber (one experiment at a time)."""
    broker = make_broker(settings, NAME)
    app = make_app(broker, NAME)
    evaluator = Evaluator(ServiceContext(settings, broker, NAME))

    @broker.subscriber(**durable_subscription(Consumer.EVALUATOR, batch_size=1), ack_policy=AckPolicy.MANUAL)
    async def experiment_completed(msg: NatsMessage) -> None:
        await evaluator.on_experiment_completed(msg)

    app.after_startup(use_uploaded_datasets(ServiceContext(settings, broker, NAME)))
    return app

"""The deployer service: makes promoted models live and keeps the release history."""

from __future__ import annotations

from faststream import AckPolicy, FastStream
from faststream.nats import NatsMessage

from tweakline.deployer.handlers import Deployer
from tweakline.proto.subjects import Consumer
from tweakline.runtime.service import ServiceContext, durable_subscription, make_app, make_broker
from tweakline.runtime.settings import Settings

NAME = "deployer"


def create_app(settings: Settings) -> FastStream:
    """Build the deployer's broker and subscriber."""
    broker = make_broker(settings, NAME)
    app = make_app(broker, NAME)
    deployer = Deployer(ServiceContext(settings, broker, NAME))

    @broker.subscriber(**durable_subscription(Consumer.DEPLOYER, batch_size=1), ack_policy=AckPolicy.MANUAL)
    async def evaluation_completed(msg: NatsMessage) -> None:
        await deployer.on_evaluation_completed(msg)

    app.after_startup(deployer.start)
    return app

"""The deployer service: makes promoted models live and keeps the release history."""

from __future__ import annotations

from faststream import AckPolicy, FastStream
from faststream.nats import NatsRouter

from tweakline.deployer.handlers import Deployer
from tweakline.proto.subjects import Consumer, Subject, all_of
from tweakline.runtime.service import ServiceContext, durable_subscription, make_app, make_broker
from tweakline.runtime.settings import Settings

NAME = "deployer"


def create_app(settings: Settings) -> FastStream:
    """Build the deployer's broker, router and app (the release history is bound before any message)."""
    broker = make_broker(settings, NAME)
    ctx = ServiceContext(settings, broker, NAME)
    deployer = Deployer(ctx)
    router = NatsRouter()
    ctx.subscribe(
        router,
        deployer.on_evaluation_completed,
        **durable_subscription(Consumer.DEPLOYER, batch_size=1),
        ack_policy=AckPolicy.MANUAL,
        # Several releases at once (each release's own deployments in order, by a lock), so one
        # slow upgrade never holds up another experiment's deployment.
        max_workers=settings.deployer_concurrency,
    )
    # An operator's rollback requests (the console); in order, one at a time.
    ctx.subscribe(
        router,
        deployer.on_rollback_requested,
        **durable_subscription(Consumer.DEPLOYER_CONTROL, batch_size=1),
        ack_policy=AckPolicy.MANUAL,
    )
    # The model servers' live figures, for the post-promotion watch (core NATS: every deployer
    # hears them; each judges the watches of the promotions it made).
    ctx.subscribe(router, deployer.on_model_stats, subject=all_of(Subject.MODEL_STATS))
    broker.include_router(router)
    return make_app(ctx, NAME, start=[deployer.start])

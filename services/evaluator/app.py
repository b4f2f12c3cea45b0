"""The evaluator service: decides whether a tuned model may be promoted."""

from __future__ import annotations

from faststream import AckPolicy, FastStream
from faststream.nats import NatsRouter

from tweakline.evaluator.handlers import Evaluator
from tweakline.ml.uploads import use_uploaded_datasets
from tweakline.proto.subjects import Consumer
from tweakline.runtime.service import ServiceContext, durable_subscription, make_app, make_broker
from tweakline.runtime.settings import Settings

NAME = "evaluator"


def create_app(settings: Settings) -> FastStream:
    """Build the evaluator's broker, router (``evaluator_concurrency`` experiments at a time) and app."""
    broker = make_broker(settings, NAME)
    ctx = ServiceContext(settings, broker, NAME)
    evaluator = Evaluator(ctx)
    router = NatsRouter()
    ctx.subscribe(
        router,
        evaluator.on_experiment_completed,
        **durable_subscription(Consumer.EVALUATOR, batch_size=1),
        ack_policy=AckPolicy.MANUAL,
        # Several experiments at once: one slow evaluation (a huge production model, a long
        # refit) never holds up another's decision; each is bounded by evaluation_timeout_s.
        max_workers=settings.evaluator_concurrency,
    )
    broker.include_router(router)
    return make_app(ctx, NAME, start=[use_uploaded_datasets(ctx)])

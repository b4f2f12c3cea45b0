"""The scheduler service: turns submitted experiments into trials and results into decisions to search on."""

from __future__ import annotations

from faststream import AckPolicy, FastStream
from faststream.nats import NatsRouter

from tweakline.proto.subjects import Consumer, Subject, all_of
from tweakline.runtime.service import ServiceContext, durable_subscription, make_app, make_broker
from tweakline.runtime.settings import Settings
from tweakline.scheduler.handlers import Scheduler

NAME = "scheduler"


def create_app(settings: Settings) -> FastStream:
    """Build the scheduler's broker, router and app (the experiments resume before any message is handled)."""
    broker = make_broker(settings, NAME)
    ctx = ServiceContext(settings, broker, NAME)
    scheduler = Scheduler(ctx)
    router = NatsRouter()
    manual = {"ack_policy": AckPolicy.MANUAL}
    ctx.subscribe(router, scheduler.on_submitted, **durable_subscription(Consumer.SCHEDULER_INTAKE, batch_size=16), **manual)
    # Results reach the owner of their experiment only, through its own feed (scheduler/ownership.py).
    ctx.subscribe(router, scheduler.on_cancel, **durable_subscription(Consumer.SCHEDULER_CONTROL, batch_size=16), **manual)
    ctx.subscribe(router, scheduler.on_progress, subject=all_of(Subject.TRIAL_PROGRESS))
    broker.include_router(router)
    return make_app(ctx, NAME, start=[scheduler.start], stop=[scheduler.stop])

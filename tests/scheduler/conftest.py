"""Shared fixtures of the scheduler's tests: a scheduler on the real bus (mTLS nats-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tweakline.proto.permissions import Identity
from tweakline.runtime.service import ServiceContext, make_broker
from tweakline.scheduler.handlers import Scheduler


@pytest.fixture
async def idle_scheduler(nats) -> AsyncIterator[Scheduler]:
    """A scheduler connected to the real bus, not yet started (the test starts it, or the fixture below)."""
    settings = nats.settings(Identity.SCHEDULER)
    broker = make_broker(settings, "scheduler")
    await broker.connect()
    scheduler = Scheduler(ServiceContext(settings, broker, "scheduler"))
    try:
        yield scheduler
    finally:
        await scheduler.stop()
        await broker.stop()


@pytest.fixture
async def scheduler(idle_scheduler: Scheduler) -> Scheduler:
    """A started scheduler on the real bus."""
    await idle_scheduler.start()
    return idle_scheduler

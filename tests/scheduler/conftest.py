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
async def scheduler(idle_scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch) -> Scheduler:
    """A started scheduler on the real bus, which takes every experiment submitted to it.

    The session's server keeps earlier tests' experiments and scheduler registrations: started, this
    scheduler claims the orphaned ones, and its fair share would then leave a new submission to a
    "less busy" scheduler that has gone (how many it claimed depends on test order). Fair sharing is
    tested with several schedulers of their own (tests/scheduler/test_ownership.py, the fault tier).
    """
    await idle_scheduler.start()
    ownership = idle_scheduler.ownership
    assert ownership is not None
    acquire = ownership.acquire

    async def unfair(experiment_id: str, *, fair: bool = False) -> bool:
        return await acquire(experiment_id)

    monkeypatch.setattr(ownership, "acquire", unfair)
    return idle_scheduler

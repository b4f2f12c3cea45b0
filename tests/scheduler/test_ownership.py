"""Ownership leases on a real bus: one owner at a time, expiry by the server, hand-over on loss."""

from __future__ import annotations

import asyncio
import time
import uuid

from tests.waiting import until
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import SCHEDULER_LEASE_TTL_S, lease_key
from tweakline.runtime.bus import connect
from tweakline.runtime.records import ExperimentStore
from tweakline.scheduler.ownership import Ownership


async def _ownership(nc, ident: str, events: list[tuple[str, str, str]]) -> Ownership:
    js = nc.jetstream()
    store = await ExperimentStore.open_bucket(js)

    async def adopt(exp_id: str) -> bool:
        events.append((ident, "adopt", exp_id))
        return True

    async def drop(exp_id: str) -> None:
        events.append((ident, "drop", exp_id))

    async def handle(result, msg) -> None:  # no results in these tests
        raise AssertionError("no result expected")

    return await Ownership.open(js, store, adopt=adopt, drop=drop, handle=handle, in_flight=lambda _: False, ident=ident)


async def test_one_owner_at_a_time_and_the_lease_expires_when_its_owner_stops_renewing(nats) -> None:
    nc = await connect(nats.settings(Identity.SCHEDULER), "test-ownership")
    try:
        events: list[tuple[str, str, str]] = []
        a = await _ownership(nc, "sched-a", events)
        b = await _ownership(nc, "sched-b", events)
        exp = f"lease-{uuid.uuid4().hex[:8]}"
        assert await a.acquire(exp)
        assert not await b.acquire(exp)  # compare-and-set: the live lease is a's
        await a.renew()
        assert a.owns(exp) and not b.owns(exp)
        # a "dies": it stops renewing. The server removes its lease within the TTL; b may take it.
        died = time.monotonic()
        await until(lambda: b.acquire(exp), what="the lease to expire", timeout=SCHEDULER_LEASE_TTL_S + 10, interval=0.2)
        waited = time.monotonic() - died
        assert SCHEDULER_LEASE_TTL_S - 1.5 <= waited <= SCHEDULER_LEASE_TTL_S + 10
        assert (await b.kv.get(lease_key(exp))).value == b"sched-b"
        # a comes back (a paused process): its renewal is refused and it drops the experiment.
        await a.renew()
        assert not a.owns(exp) and ("sched-a", "drop", exp) in events
        await b.release(exp)
        assert await a.acquire(exp)  # released: free at once, no TTL to wait for
    finally:
        await nc.close()


async def test_fair_intake_leaves_an_experiment_to_a_less_busy_scheduler(nats) -> None:
    nc = await connect(nats.settings(Identity.SCHEDULER), "test-ownership-fair")
    try:
        events: list[tuple[str, str, str]] = []
        a = await _ownership(nc, "fair-a", events)
        b = await _ownership(nc, "fair-b", events)
        await a.renew()
        await b.renew()  # two members
        first, second = (f"fair-{uuid.uuid4().hex[:8]}" for _ in range(2))
        assert await a.acquire(first, fair=True)
        assert not await a.acquire(second, fair=True)  # a has its share (1 of 2 running)
        assert await b.acquire(second, fair=True)
        await a.stop()
        await b.stop()
    finally:
        await nc.close()


async def test_fair_intake_of_a_concurrent_batch_takes_only_a_share(nats) -> None:
    # FastStream handles a fetched batch of submissions concurrently: every acquisition of the batch
    # must see the ones before it (this took the whole batch once, and the ten-experiment fault test
    # saw every experiment on one scheduler).
    nc = await connect(nats.settings(Identity.SCHEDULER), "test-ownership-burst")
    try:
        events: list[tuple[str, str, str]] = []
        a = await _ownership(nc, "burst-a", events)
        b = await _ownership(nc, "burst-b", events)
        await a.renew()
        await b.renew()  # two members
        batch = [f"burst-{uuid.uuid4().hex[:8]}" for _ in range(6)]
        taken = await asyncio.gather(*(a.acquire(exp, fair=True) for exp in batch))
        assert sum(taken) == 1, f"a took {sum(taken)} of a batch of {len(batch)} with 2 members: {taken}"
        await a.stop()
        await b.stop()
    finally:
        await nc.close()

"""Which scheduler owns which running experiment: leases in KV, and each owner's feed of results.

Any number of schedulers share the experiments. Each running experiment is owned by one
scheduler at a time through a lease, a key in the ``tweakline-scheduler-leases`` bucket:

- taken with compare-and-set (``create``: only if no live lease exists), renewed with
  compare-and-set on the revision the owner holds (``update``); a renewal refused by the server
  means someone else holds the lease now, and the owner drops the experiment at once;
- expired by the server, not by clocks: the bucket's TTL removes a lease its owner stopped
  renewing (crash, partition, SIGKILL), after which any scheduler's next claim round can take it;
- never the only guard: every write of the experiment's state is itself a compare-and-set on
  the state's revision (``RecordStore.update``), so even two schedulers that briefly both believe
  they own an experiment cannot both issue a trial or both record a result — the loser's write is
  refused and it rebuilds from KV.

Results reach the owner only: each owner reads its experiment's ``trials.completed.<id>`` subject
from the EVENTS stream through its own ephemeral ordered consumer, from the start of the stream.
A new owner therefore sees every result ever published for the experiment; those already in the
stored state are ignored (``ExperimentRun.record`` is idempotent by trial number), the others are
applied. The experiment's KV state is the cursor, so nothing is acknowledged, no result can be
lost between owners, and none is counted twice. Design and failure cases: docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from nats.js import api
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from tweakline.proto.messages import ExperimentStatus, TrialCompleted
from tweakline.proto.subjects import (
    SCHEDULER_LEASE_TTL_S,
    Bucket,
    Stream,
    Subject,
    lease_key,
    member_key,
    subject_for,
)
from tweakline.runtime.records import ExperimentStore

log = logging.getLogger(__name__)

# How often a scheduler renews its leases and looks for experiments without a live owner.
CLAIM_INTERVAL_S = 1.0
# A result feed silent this long while trials are in flight is re-created (its replay is harmless).
FEED_STALL_S = 15.0


def scheduler_id() -> str:
    """A name for this scheduler process, unique across restarts and pods (usable in a KV key)."""
    raw = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", raw)


class FeedMessage:
    """A result read from the stream, shaped like the FastStream message the results handler takes.

    The feed's consumer acknowledges nothing (the experiment's stored state is the cursor), so
    ``ack`` and ``reject`` do nothing and ``nack`` asks the feed to replay the experiment's results.
    """

    def __init__(self, msg: Any, attempt: int, replay: Callable[[float], None]):
        self.body: bytes = msg.data
        self.headers: dict[str, str] = dict(msg.headers or {})
        self.raw_message = SimpleNamespace(subject=msg.subject, metadata=SimpleNamespace(num_delivered=attempt))
        self._replay = replay

    async def ack(self) -> None:
        """Nothing to acknowledge: a saved state holds the result."""

    async def reject(self) -> None:
        """Nothing to do: the handler dead-lettered the result."""

    async def nack(self, delay: float | None = None) -> None:
        """Not applied: read the experiment's results again after ``delay``."""
        self._replay(delay or 0.0)


class ResultFeed:
    """One owned experiment's results, read from the EVENTS stream from its beginning."""

    def __init__(self, js: Any, experiment_id: str, handle: Callable[[TrialCompleted, FeedMessage], Awaitable[None]]):
        self.js = js
        self.experiment_id = experiment_id
        self.handle = handle
        self.sub: Any = None
        self.last_activity = time.monotonic()
        self.failures: dict[int, int] = {}  # trial number -> failed applications (dead-lettered at the limit)
        self._tasks: set[asyncio.Task[None]] = set()
        self._restart: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe from the start of the experiment's results."""
        self.last_activity = time.monotonic()
        self.sub = await self.js.subscribe(
            subject_for(Subject.TRIAL_COMPLETED, self.experiment_id),
            stream=Stream.EVENTS.value,
            ordered_consumer=True,
            idle_heartbeat=2.0,  # nats-py re-creates the consumer when heartbeats stop (a node lost)
            deliver_policy=api.DeliverPolicy.ALL,
            # Named, so it is created on a subject carrying its name (the permission map allows the
            # scheduler no other consumer creation on the events stream).
            config=api.ConsumerConfig(name=f"results-{self.experiment_id}-{uuid.uuid4().hex[:12]}"),
            cb=self._on_msg,
        )

    async def _on_msg(self, msg: Any) -> None:
        self.last_activity = time.monotonic()
        try:
            result = TrialCompleted.model_validate_json(msg.data)
        except ValueError:
            # The runners' publisher validates what it sends; a foreign message is not a result.
            log.warning("feed of %s: ignoring an undecodable message on %s", self.experiment_id, msg.subject)
            return
        number = result.number
        attempt = self.failures.get(number, 0) + 1

        def nacked(delay: float) -> None:  # counted, so a result that never applies is dead-lettered
            self.failures[number] = self.failures.get(number, 0) + 1
            self._schedule_replay(delay)

        wrapped = FeedMessage(msg, attempt, nacked)
        # Concurrently, as FastStream runs a fetched batch: the handler's group commit then saves
        # the state once for every result that arrived together.
        task = asyncio.create_task(self._apply(result, wrapped))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, result: TrialCompleted, wrapped: FeedMessage) -> None:
        try:
            await self.handle(result, wrapped)
        except Exception:  # the handler dead-letters what it cannot apply; anything else: replay
            log.exception("feed of %s: result %s not applied", self.experiment_id, result.number)
            await wrapped.nack(2.0)

    def _schedule_replay(self, delay: float) -> None:
        if self._restart is not None and not self._restart.done():
            return
        self._restart = asyncio.create_task(self._replay(delay))

    async def _replay(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self.restart()
        except Exception:  # the claim loop's stall check tries again
            log.exception("feed of %s: could not re-subscribe", self.experiment_id)

    async def restart(self) -> None:
        """Read the experiment's results again from the beginning (applied ones are ignored)."""
        await self._unsubscribe()
        await self.start()

    async def _unsubscribe(self) -> None:
        sub, self.sub = self.sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def stop(self) -> None:
        """Stop reading (the experiment completed or moved to another owner)."""
        if self._restart is not None and self._restart is not asyncio.current_task():
            self._restart.cancel()
        await self._unsubscribe()


class Ownership:
    """This scheduler's leases, result feeds and claim loop.

    ``adopt(experiment_id)`` is called (under no lock) when this scheduler has just taken an
    experiment over and must rebuild it from KV (it returns whether the experiment still runs:
    it may have completed between the scan and the lease); ``drop(experiment_id)`` when it lost the lease.
    """

    def __init__(
        self,
        js: Any,
        kv: KeyValue,
        store: ExperimentStore,
        *,
        adopt: Callable[[str], Awaitable[bool]],
        drop: Callable[[str], Awaitable[None]],
        handle: Callable[[TrialCompleted, FeedMessage], Awaitable[None]],
        in_flight: Callable[[str], bool],
        ident: str | None = None,
        interval: float = CLAIM_INTERVAL_S,
    ):
        self.js = js
        self.kv = kv
        self.store = store
        self.ident = ident or scheduler_id()
        self.adopt_cb = adopt
        self.drop_cb = drop
        self.handle = handle
        self.in_flight = in_flight
        self.interval = interval
        self.leases: dict[str, int] = {}  # experiment id -> revision of our lease
        self.feeds: dict[str, ResultFeed] = {}
        self.finished: set[str] = set()  # experiments seen completed or failed: never running again
        self._member_rev: int | None = None
        self._running_seen = 0  # running experiments at the last claim round
        self._loop: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._fair = asyncio.Lock()  # fair acquisitions one at a time (see acquire)

    @classmethod
    async def open(cls, js: Any, store: ExperimentStore, **kwargs: Any) -> Ownership:
        """Bind to the leases bucket (created by the topology)."""
        return cls(js, await js.key_value(Bucket.SCHEDULER_LEASES.value), store, **kwargs)

    # -- leases -------------------------------------------------------------------------------

    def owns(self, experiment_id: str) -> bool:
        """Whether this scheduler holds the experiment's lease."""
        return experiment_id in self.leases

    async def acquire(self, experiment_id: str, *, fair: bool = False) -> bool:
        """Take the experiment's lease if no live scheduler holds it (compare-and-set).

        ``fair``: not if this scheduler already holds its share of the running experiments (one
        scheduler's intake pulls a whole batch of submissions); a less busy one claims it instead.
        """
        if experiment_id in self.leases:
            return True
        if not fair:
            return await self._create(experiment_id)
        # Check and take as one step: FastStream handles a fetched batch of submissions concurrently,
        # and without the lock every handler of the batch saw the share still free (no lease created
        # yet), so the scheduler whose intake pulled the batch took all of it.
        async with self._fair:
            if experiment_id in self.leases:
                return True
            if self.leases:
                members = await self.members()
                if members > 1 and len(self.leases) >= math.ceil((self._running_seen + 1) / members):
                    return False
            return await self._create(experiment_id)

    async def _create(self, experiment_id: str) -> bool:
        # nats-py's create is two steps (a create, then a look at what is in the way); a lease that
        # expires between them surfaces as "key not found": the key is free then, so try once more.
        for _ in range(2):
            try:
                self.leases[experiment_id] = await self.kv.create(lease_key(experiment_id), self.ident.encode())
            except KeyWrongLastSequenceError:
                return False
            except KeyNotFoundError:
                continue
            log.info("scheduler %s owns experiment %s", self.ident, experiment_id)
            return True
        return False

    async def follow(self, experiment_id: str) -> None:
        """Start reading the owned experiment's results (idempotent)."""
        if experiment_id in self.feeds or experiment_id not in self.leases:
            return
        feed = ResultFeed(self.js, experiment_id, self.handle)
        self.feeds[experiment_id] = feed
        await feed.start()

    async def release(self, experiment_id: str) -> None:
        """Give the experiment up (it completed): stop its feed and delete the lease if still ours."""
        self.finished.add(experiment_id)
        feed = self.feeds.pop(experiment_id, None)
        if feed is not None:
            await feed.stop()
        revision = self.leases.pop(experiment_id, None)
        if revision is not None:
            with contextlib.suppress(Exception):  # it expires by itself anyway
                await self.kv.delete(lease_key(experiment_id), last=revision)

    async def _lose(self, experiment_id: str) -> None:
        log.warning("scheduler %s lost the lease of experiment %s", self.ident, experiment_id)
        self.leases.pop(experiment_id, None)
        feed = self.feeds.pop(experiment_id, None)
        if feed is not None:
            await feed.stop()
        await self.drop_cb(experiment_id)

    async def renew(self) -> None:
        """Renew membership and every lease; drop the experiments whose lease another took."""
        try:
            self._member_rev = await self.kv.put(member_key(self.ident), self.ident.encode())
        except Exception:  # a node lost: the next round retries well within the TTL
            log.debug("membership renewal failed", exc_info=True)
        for experiment_id, revision in list(self.leases.items()):
            try:
                renewed = await self.kv.update(lease_key(experiment_id), self.ident.encode(), last=revision)
                # Released (completed) while the update was on its way: keep it released; the renewed
                # key just expires (its experiment no longer runs, so nobody claims it).
                if self.leases.get(experiment_id) == revision:
                    self.leases[experiment_id] = renewed
            except KeyWrongLastSequenceError:
                if experiment_id not in self.leases:  # released meanwhile: nothing to take back
                    continue
                # Expired (we were too slow) or taken: take it back only if nobody else has.
                self.leases.pop(experiment_id, None)
                if not await self.acquire(experiment_id):
                    await self._lose(experiment_id)
            except Exception:
                log.debug("lease renewal of %s failed; retried next round", experiment_id, exc_info=True)

    async def members(self) -> int:
        """How many schedulers are alive (their membership keys have not expired)."""
        try:
            return max(1, len([k for k in await self.kv.keys() if k.startswith("member.")]))
        except NoKeysError:
            return 1

    # -- claiming -----------------------------------------------------------------------------

    async def running(self) -> list[str]:
        """Experiments whose stored state says running (finished ones are remembered and skipped)."""
        found: list[str] = []
        for key in await self.store.keys():
            if key in self.finished:
                continue
            if key in self.leases:
                found.append(key)
                continue
            record = await self.store.get_stored(key)  # its status only: no segment read
            if record is None:
                continue
            if record[0].status is ExperimentStatus.RUNNING:
                found.append(key)
            else:
                self.finished.add(key)
        return found

    async def claim(self, *, renew: bool = True) -> list[str]:
        """One round: renew, then take unowned running experiments up to a fair share; the ones taken.

        ``renew=False``: the background renewal loop renews (a slow round must not delay it).
        """
        if renew:
            await self.renew()
        running = await self.running()
        self._running_seen = len(running)
        share = math.ceil(len(running) / await self.members())
        taken: list[str] = []
        for experiment_id in running:
            if len(self.leases) >= max(1, share):
                break
            if experiment_id in self.leases:
                continue
            try:
                await self.kv.get(lease_key(experiment_id))
                continue  # a live owner holds it
            except KeyNotFoundError:
                pass
            if await self.acquire(experiment_id):
                try:
                    if not await self.adopt_cb(experiment_id):  # completed meanwhile: nothing to own
                        await self.release(experiment_id)
                        continue
                    taken.append(experiment_id)
                    await self.follow(experiment_id)
                except Exception:
                    log.exception("could not take experiment %s over; giving its lease back", experiment_id)
                    await self.release(experiment_id)
                    self.finished.discard(experiment_id)
        for experiment_id, feed in list(self.feeds.items()):
            if feed.sub is None and not (feed._restart is not None and not feed._restart.done()):
                # A re-subscription failed (JetStream electing leaders after a node was lost): the
                # feed reads nothing and nothing else will wake it. Seen in the node-loss fault test.
                log.info("result feed of %s is down; subscribing again", experiment_id)
                with contextlib.suppress(Exception):
                    await feed.start()
            elif self.in_flight(experiment_id) and time.monotonic() - feed.last_activity > FEED_STALL_S:
                log.info("result feed of %s silent for %.0fs; reading it again", experiment_id, FEED_STALL_S)
                with contextlib.suppress(Exception):
                    await feed.restart()
        return taken

    async def _run(self) -> None:
        while True:
            try:
                await self.claim(renew=False)
            except Exception:  # a node lost mid-round: the next round starts over
                log.debug("claim round failed", exc_info=True)
            await asyncio.sleep(self.interval)

    async def _renew_loop(self) -> None:
        # Its own task, not a step of the claim round: a round that adopts experiments (Optuna
        # studies rebuilt, trials published) can take longer than the TTL on a loaded machine, and a
        # renewal waiting behind it let live leases expire and pass to another scheduler.
        while True:
            started = time.monotonic()
            try:
                await self.renew()
            except Exception:  # a node lost: the next renewal retries well within the TTL
                log.debug("renewal failed", exc_info=True)
            took = time.monotonic() - started
            if took > SCHEDULER_LEASE_TTL_S / 2:
                log.warning("renewing %d leases took %.1fs (TTL %.0fs)", len(self.leases), took, SCHEDULER_LEASE_TTL_S)
            await asyncio.sleep(max(0.0, self.interval - took))

    def start(self) -> None:
        """Renew, and claim, every ``interval`` seconds in the background (two independent loops)."""
        self._renewer = asyncio.create_task(self._renew_loop())
        self._loop = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop claiming; stop the feeds; hand the leases back so another scheduler takes over at once."""
        for task in (self._loop, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Bounded: a stop must not hang on a bus that is going away (the leases then just expire).
        for experiment_id in list(self.leases):
            feed = self.feeds.pop(experiment_id, None)
            if feed is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(feed.stop(), 2.0)
            revision = self.leases.pop(experiment_id)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.kv.delete(lease_key(experiment_id), last=revision), 2.0)
        for feed in self.feeds.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(feed.stop(), 2.0)
        self.feeds.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.kv.delete(member_key(self.ident)), 2.0)


__all__ = ["FEED_STALL_S", "SCHEDULER_LEASE_TTL_S", "FeedMessage", "Ownership", "ResultFeed", "scheduler_id"]

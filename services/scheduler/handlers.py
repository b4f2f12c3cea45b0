"""The scheduler's message handling: intake, results, deadlines and resume after a restart.

State is written ahead of every publish of new trials (so a crash never loses an issued trial)
and every handler is idempotent (a redelivered submission or result changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from faststream.nats import NatsMessage

from tweakline.proto.messages import (
    ExperimentState,
    ExperimentStatus,
    ExperimentSubmitted,
    TrialCompleted,
    TrialRequested,
    msg_id,
    trial_id,
)
from tweakline.proto.subjects import Bucket, Stream, Subject, subject_for
from tweakline.records import RecordStore, StaleRecordError
from tweakline.scheduler.engine import ExperimentRun
from tweakline.service import ServiceContext

log = logging.getLogger(__name__)

# After the deadline, results still in flight are awaited this long before closing anyway.
DEADLINE_GRACE = timedelta(seconds=60)


class Scheduler:
    """Owns the running experiments of this process."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.store: RecordStore[ExperimentState] | None = None
        self.runs: dict[str, tuple[ExperimentRun, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._ticker: asyncio.Task[None] | None = None

    def _lock(self, experiment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(experiment_id, asyncio.Lock())

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind to state, resume unfinished experiments, start the deadline ticker."""
        self.store = await RecordStore.open(self.ctx.js, Bucket.EXPERIMENTS.value, ExperimentState)
        for key in await self.store.keys():
            try:
                async with self._lock(key):
                    found = await self.store.get(key)
                    if key in self.runs or not found or found[0].status is not ExperimentStatus.RUNNING:
                        continue
                    log.info("resuming experiment %s", key)
                    await self._resume(found[0], found[1])
            except Exception:  # one unreadable or contended record must not stop the others
                log.exception("could not resume experiment %s; its next message retries", key)
                self.runs.pop(key, None)
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        """Stop the ticker (state is already durable)."""
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker

    async def _resume(self, state: ExperimentState, revision: int) -> None:
        run = ExperimentRun(state)
        self.runs[state.experiment_id] = (run, revision)
        # Trials issued before the restart may be lost with an unacked publish: send them again
        # under the same message id (stored once inside the duplicate window; a late duplicate
        # result is ignored by record()).
        await self._publish_trials(run, sorted(run.in_flight()))
        await self._advance(state.experiment_id)

    # -- handlers -----------------------------------------------------------------------------

    async def on_submitted(self, msg: NatsMessage) -> None:
        """A new experiment: record it, then issue the first trials."""
        submitted = await self.ctx.decode(msg, ExperimentSubmitted)
        if submitted is None:
            return
        assert self.store is not None
        exp_id = submitted.experiment_id
        async with self._lock(exp_id):
            state = ExperimentState(experiment_id=exp_id, tweak=submitted.tweak, source=submitted.source)
            revision = await self.store.create(exp_id, state)
            if revision is None:  # redelivered submission: already known
                if exp_id not in self.runs:
                    found = await self.store.get(exp_id)
                    if found and found[0].status is ExperimentStatus.RUNNING:
                        await self._resume(*found)
                await msg.ack()
                return
            log.info("experiment %s submitted (%s)", exp_id, submitted.tweak.metadata.name)
            self.runs[exp_id] = (ExperimentRun(state), revision)
            await self._advance(exp_id)
        await msg.ack()

    async def on_trial_completed(self, msg: NatsMessage) -> None:
        """A trial's result: record it once, then issue more trials or close the experiment."""
        result = await self.ctx.decode(msg, TrialCompleted)
        if result is None:
            return
        exp_id = result.experiment_id
        try:
            await self._on_result(msg, result)
        except Exception:
            # The cached run may be ahead of KV now: forget it, rebuild from KV on the retry.
            log.exception("result %s of %s not applied; retrying", result.trial_id, exp_id)
            self.runs.pop(exp_id, None)
            await msg.nack(delay=2.0)

    async def _on_result(self, msg: NatsMessage, result: TrialCompleted) -> None:
        exp_id = result.experiment_id
        async with self._lock(exp_id):
            run = await self._run(exp_id)
            if run is None:
                await self.ctx.dead_letter(
                    msg.raw_message.subject, msg.body, f"result for unknown experiment {exp_id!r}", dict(msg.headers)
                )
                await msg.reject()
                return
            if run.record(result):
                log.info(
                    "trial %s %s score=%s (%d/%d)",
                    result.trial_id, result.status.value, result.score, len(run.state.results), run.limit,
                )
                await self._advance(exp_id)
        await msg.ack()

    # -- internals ----------------------------------------------------------------------------

    async def _run(self, exp_id: str) -> ExperimentRun | None:
        if exp_id in self.runs:
            return self.runs[exp_id][0]
        assert self.store is not None
        found = await self.store.get(exp_id)
        if found is None:
            return None
        run = ExperimentRun(found[0])
        self.runs[exp_id] = (run, found[1])
        return run

    async def _save(self, exp_id: str) -> None:
        assert self.store is not None
        run, revision = self.runs[exp_id]
        try:
            revision = await self.store.update(exp_id, run.state, revision)
        except StaleRecordError:
            # Someone else wrote (another scheduler replica, or a stale cache): rebuild from truth.
            found = await self.store.get(exp_id)
            if found is None:
                raise
            self.runs[exp_id] = (ExperimentRun(found[0]), found[1])
            raise
        self.runs[exp_id] = (run, revision)

    async def _advance(self, exp_id: str, now: datetime | None = None) -> None:
        """Issue what the budget allows, or complete the experiment; persist before publishing trials."""
        run, _ = self.runs[exp_id]
        if run.state.status is not ExperimentStatus.RUNNING:
            return
        if run.finished(now) or self._overdue(run, now):
            completed = run.complete(now)
            await self.ctx.publish(
                completed,
                subject_for(Subject.EXPERIMENT_COMPLETED, exp_id),
                msg_id=msg_id("experiment-completed", exp_id),
                stream=Stream.EVENTS,
            )
            await self._save(exp_id)
            log.info("experiment %s %s with %d trials", exp_id, completed.status.value, len(completed.trials))
            self.runs.pop(exp_id, None)
            return
        issued = run.next_trials(now)
        if issued:
            await self._save(exp_id)
            await self._publish_trials(run, [number for number, _ in issued])
        else:
            await self._save(exp_id)

    def _overdue(self, run: ExperimentRun, now: datetime | None) -> bool:
        deadline = run.deadline
        return deadline is not None and (now or datetime.now(UTC)) >= deadline + DEADLINE_GRACE

    async def _publish_trials(self, run: ExperimentRun, numbers: list[int]) -> None:
        exp_id = run.state.experiment_id
        for number in numbers:
            tid = trial_id(exp_id, number)
            await self.ctx.publish(
                TrialRequested(
                    experiment_id=exp_id, trial_id=tid, number=number, params=run.state.issued[number], spec=run.spec
                ),
                subject_for(Subject.TRIAL_REQUESTED, exp_id),
                msg_id=msg_id("trial", tid),
                stream=Stream.TRIALS,
            )

    async def _tick(self) -> None:
        """Close experiments whose time budget ran out with nothing left to wait for."""
        while True:
            await asyncio.sleep(1.0)
            for exp_id in list(self.runs):
                run, _ = self.runs.get(exp_id, (None, 0))
                if run is None or run.deadline is None or not run.expired():
                    continue
                try:
                    async with self._lock(exp_id):
                        if exp_id in self.runs:
                            await self._advance(exp_id)
                except Exception:  # keep ticking for the other experiments
                    log.exception("deadline check of %s failed", exp_id)

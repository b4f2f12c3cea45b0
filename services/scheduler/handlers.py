"""The scheduler's message handling: intake, results, deadlines and resume after a restart.

State is written ahead of every publish of new trials (so a crash never loses an issued trial)
and every handler is idempotent (a redelivered submission or result changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from faststream.nats import NatsMessage

from tweakline.observability import telemetry
from tweakline.proto.messages import (
    BatchedTrial,
    CancelExperiment,
    ExperimentCompleted,
    ExperimentState,
    ExperimentStatus,
    ExperimentSubmitted,
    TrialCompleted,
    TrialControl,
    TrialControlAction,
    TrialProgress,
    TrialRequested,
    msg_id,
    trial_id,
)
from tweakline.proto.subjects import Stream, Subject, subject_for, trial_subject
from tweakline.runtime.bus import SERVICE_MAX_DELIVER
from tweakline.runtime.records import ExperimentStore, MissingSegmentError, StaleRecordError
from tweakline.runtime.service import ServiceContext
from tweakline.scheduler import cancel
from tweakline.scheduler.engine import ExperimentRun
from tweakline.scheduler.lineage import LineageStore, lineage_of, select
from tweakline.scheduler.ownership import Ownership
from tweakline.scheduler.pools import run_pool
from tweakline.validation import intake

log = logging.getLogger(__name__)

# After the deadline, results still in flight are awaited this long before closing anyway.
DEADLINE_GRACE = timedelta(seconds=60)
# How long a thread holding the GIL runs before handing it to one that waits (Python's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005


class Scheduler:
    """Owns the running experiments of this process."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.store: ExperimentStore | None = None
        self.runs: dict[str, tuple[ExperimentRun, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # Group commit of results: how many were recorded, and how many a saved state covers.
        self._recorded: dict[str, int] = {}
        self._committed: dict[str, int] = {}
        self._ticker: asyncio.Task[None] | None = None
        self.lineage: LineageStore | None = None
        self.ownership: Ownership | None = None  # leases: several schedulers share the experiments
        # Costly samplers (TPE's ask grows with history) ask here, one at a time: they share the
        # GIL with the event loop, and one thread leaves the loop half of it where a thread per
        # experiment left it a quarter with three TPE experiments (docs/benchmarks.md, "Sampler cost").
        self._sampler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sampler")
        self._switch_interval: float | None = None  # the process's own, put back at stop

    def _lock(self, experiment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(experiment_id, asyncio.Lock())

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind to state, take over the unfinished experiments no live scheduler owns, start the ticker."""
        self.store = await ExperimentStore.open_bucket(self.ctx.js)
        self.lineage = await LineageStore.open(self.ctx.js)
        self.ownership = await Ownership.open(
            self.ctx.js,
            self.store,
            adopt=self.adopt,
            drop=self.drop,
            handle=self.on_trial_completed,
            # Not cached (dropped after a failed save or publish): unknown, so treated as in flight,
            # and a silent feed is read again (harmless) rather than waited on forever.
            in_flight=lambda exp_id: bool(exp_id not in self.runs or self.runs[exp_id][0].in_flight()),
        )
        # The event loop waits for the GIL each time it wakes while the sampler thread runs TPE:
        # 0.5 ms instead of Python's 5 ms hands it back sooner (a random experiment's dispatch
        # next to three TPE ones: p50 11-12 ms instead of 15-21; docs/benchmarks.md, "Sampler cost").
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        await self.ownership.claim()  # resume what is ours before any message is handled
        self.ownership.start()
        self._ticker = asyncio.create_task(self._tick())

    async def adopt(self, exp_id: str) -> bool:
        """This scheduler just took ``exp_id``'s lease: rebuild it from KV, as after a restart.

        Returns whether the experiment runs here now (``False``: it completed meanwhile).
        """
        assert self.store is not None
        async with self._lock(exp_id):
            if exp_id in self.runs:
                return True
            found = await self.store.get_stored(exp_id)
            if not found or found[0].status is not ExperimentStatus.RUNNING:
                return False
            log.info("resuming experiment %s", exp_id)
            try:
                await self._resume(*await self._rebuild(*found))
            except MissingSegmentError as exc:
                # Results it names are gone (deleted by hand): it can never resume. Fail it with
                # the reason, rather than retry every claim round for ever.
                self.runs.pop(exp_id, None)
                await self._fail_unreadable(*found, str(exc))
                return False
            except Exception:
                self.runs.pop(exp_id, None)
                raise
            return True

    async def drop(self, exp_id: str) -> None:
        """Another scheduler owns ``exp_id`` now: forget the cached run (KV is the truth)."""
        async with self._lock(exp_id):
            self.runs.pop(exp_id, None)
            self._recorded.pop(exp_id, None)
            self._committed.pop(exp_id, None)

    async def stop(self) -> None:
        """Stop the ticker and hand the leases back (state is already durable)."""
        if self.ownership:
            await self.ownership.stop()
        if self._ticker:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        # The sampler thread is left to end with the process: stop hooks run before the broker
        # closes, and a handler still finishing must be able to ask.
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)

    async def _rebuild(self, stored: ExperimentState, revision: int) -> tuple[ExperimentRun, int]:
        """The run of a stored state: its sealed segments read and joined in, its study replayed.

        The replay feeds every result to a new study (about a second for 25,000 trials), so it runs
        in the sampler thread: the event loop goes on acknowledging other experiments' results and
        renewing leases meanwhile.
        """
        assert self.store is not None
        whole = stored.with_segments(await self.store.segments(stored)) if stored.sealed else stored
        run = await asyncio.get_running_loop().run_in_executor(self._sampler, ExperimentRun, whole, stored.sealed)
        return run, revision

    async def _fail_unreadable(self, stored: ExperimentState, revision: int, reason: str) -> None:
        """Complete an experiment that cannot be rebuilt as failed, saying why (its results are kept)."""
        assert self.store is not None
        message = f"cannot resume: {reason}"
        log.error("experiment %s: %s", stored.experiment_id, message)
        failed = stored.model_copy(
            update={"status": ExperimentStatus.FAILED, "finished_at": datetime.now(UTC), "message": message}
        )
        await self.ctx.publish(
            ExperimentCompleted(
                experiment_id=stored.experiment_id,
                tweak=stored.tweak,
                source=stored.source,
                status=ExperimentStatus.FAILED,
                trials=[],
                trials_total=stored.trials_recorded,
                started_at=stored.started_at,
                finished_at=failed.finished_at,
                message=message,
                warm_start=stored.warm_start,
            ),
            subject_for(Subject.EXPERIMENT_COMPLETED, stored.experiment_id),
            msg_id=msg_id("experiment-completed", stored.experiment_id),
            stream=Stream.EVENTS,
            trace_parent=stored.traceparent,
        )
        with contextlib.suppress(StaleRecordError):  # another scheduler got there first
            await self.store.update(stored.experiment_id, failed, revision)

    async def _resume(self, run: ExperimentRun, revision: int) -> None:
        state = run.state
        self.runs[state.experiment_id] = (run, revision)
        # Trials issued before the restart may be lost with an unacked publish: send them again
        # under the same message id (stored once inside the duplicate window; a late duplicate
        # result is ignored by record()).
        await self._publish_trials(run, sorted(run.in_flight()))
        await self._advance(state.experiment_id)

    # -- handlers -----------------------------------------------------------------------------

    async def on_submitted(self, submitted: ExperimentSubmitted, msg: NatsMessage) -> None:
        """A new experiment: record it, then issue the first trials."""
        # the same checks as `tweakline validate`, and whether this platform runs this repository's code
        refused = await intake.refusal(self.ctx, msg, submitted.tweak, submitted.source.repository)
        assert self.store is not None
        exp_id = submitted.experiment_id
        async with self._lock(exp_id):
            # The submitter's root span, else this intake's span, roots the experiment's trace.
            traceparent = submitted.traceparent or telemetry.current_traceparent()
            state = ExperimentState(
                experiment_id=exp_id,
                tweak=submitted.tweak,
                source=submitted.source,
                traceparent=traceparent,
                submitted_at=submitted.submitted_at,
            )
            await self._warm_start(state)
            revision = await self.store.create(exp_id, state)
            if revision is None:  # redelivered submission: already known
                if exp_id in self.runs:  # the first delivery may have failed publishing its trials
                    run = self.runs[exp_id][0]
                    await self._publish_trials(run, sorted(run.in_flight()))
                elif await self._own(exp_id):
                    found = await self.store.get_stored(exp_id)
                    if found and found[0].status is ExperimentStatus.RUNNING:
                        await self._resume(*await self._rebuild(*found))
                await msg.ack()
                return
            log.info("experiment %s submitted (%s)", exp_id, submitted.tweak.metadata.name)
            # Another scheduler runs it if its claim round took it first, or if this one has its share
            # already (a refused experiment is closed here, at once).
            if not await self._own(exp_id, fair=not refused):
                await msg.ack()
                return
            self.runs[exp_id] = (ExperimentRun(state), revision)
            if refused:  # e.g. gp without PyTorch: fail the experiment with the reason, issue nothing
                await self._close(exp_id, refused)
            else:
                await self._advance(exp_id)
        if not refused and cancel.supersedes(self.ctx.settings.supersede, submitted.source):
            await self._supersede(state)
        await msg.ack()

    async def _supersede(self, newer: ExperimentState) -> None:
        """Cancel the older running experiments of the same lineage and branch (status superseded)."""
        for old in cancel.older_siblings(newer, [run.state for run, _ in list(self.runs.values())]):
            async with self._lock(old):
                await cancel.stop(
                    self,
                    old,
                    status=ExperimentStatus.SUPERSEDED,
                    reason=f"superseded by {newer.experiment_id} (commit {newer.source.commit or '?'})",
                    requested_by="scheduler",
                    superseded_by=newer.experiment_id,
                )

    async def on_cancel(self, command: CancelExperiment, msg: NatsMessage) -> None:
        """``tweakline cancel``: stop the experiment (idempotent: a finished one is left as it is)."""
        exp_id = command.experiment_id
        again = (msg.raw_message.metadata.num_delivered or 1) > 1  # the first delivery may have saved without announcing
        async with self._lock(exp_id):
            stopped = await cancel.stop(
                self,
                exp_id,
                status=ExperimentStatus.CANCELLED,
                reason=command.reason,
                requested_by=command.requested_by,
                again=again,
            )
        if stopped is None:
            log.info("cancel of %s ignored: not a running experiment", exp_id)
        await msg.ack()

    async def _own(self, exp_id: str, *, fair: bool = False) -> bool:
        """Take the experiment's lease and follow its results; ``False`` if another scheduler owns it
        (or, with ``fair``, should: this one has its share of the experiments)."""
        if self.ownership is None:  # not started through start() (unit tests of the handlers alone)
            return True
        if not await self.ownership.acquire(exp_id, fair=fair):
            return False
        await self.ownership.follow(exp_id)
        return True

    async def on_trial_completed(self, result: TrialCompleted, msg: NatsMessage) -> None:
        """A trial's result: record it once, then issue more trials or close the experiment."""
        exp_id = result.experiment_id
        try:
            await self._on_result(msg, result)
        except Exception as exc:
            # The cached run may be ahead of KV now: forget it, rebuild from KV on the retry.
            self.runs.pop(exp_id, None)
            self._recorded.pop(exp_id, None)  # counters of the dropped cache mean nothing now
            self._committed.pop(exp_id, None)
            attempt = msg.raw_message.metadata.num_delivered or 1
            if attempt < SERVICE_MAX_DELIVER:
                log.exception("result %s of %s not applied; retrying", result.trial_id, exp_id)
                await msg.nack(delay=2.0)
                return
            # The server will not deliver it again: keep it, with why, where an operator looks.
            log.exception("result %s of %s not applied after %d deliveries", result.trial_id, exp_id, attempt)
            await self.ctx.dead_letter(
                msg.raw_message.subject,
                msg.body,
                f"result of trial {result.number} not applied after {attempt} deliveries: {type(exc).__name__}: {exc}",
                dict(msg.headers or {}),
            )
            await msg.reject()

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
            if run.state.status is not ExperimentStatus.RUNNING:  # finished or cancelled: nothing to do
                self.runs.pop(exp_id, None)
                await msg.ack()
                return
            generation = 0
            results = result.results()  # a batched request's results come in one message
            recorded = []
            for one in results:
                if run.record(one):
                    generation = self._recorded[exp_id] = self._recorded.get(exp_id, 0) + 1
                    recorded.append(
                        f"trial {one.trial_id} {one.status.value} score={one.score} ({len(run.state.results)}/{run.limit})"
                    )
            if recorded:  # one line per message: a record (and a write) per trial was a cost of its own
                log.info("; ".join(recorded))
        numbers = [one.number for one in results]
        if generation and not await self._commit(exp_id, generation, numbers):
            # A batch-mate's save failed and the cached run was dropped: these results are not in KV.
            raise RuntimeError(f"state of {exp_id} not saved with trials {numbers}")
        await msg.ack()  # only once a saved state holds the results

    async def _commit(self, exp_id: str, generation: int, numbers: list[int]) -> bool:
        """Save the state and issue new trials once for every result recorded so far (group commit).

        FastStream runs the handlers of one fetched batch concurrently; after one yield and with the
        FIFO lock, the batch's results are all recorded before the first commit runs, and that one save (and one
        round of new trials) covers them all: the state is rewritten once per batch, not per trial.
        Returns whether a saved state holds trials ``numbers`` (only then may their message be acked).
        """
        await asyncio.sleep(0)  # let the batch's other handlers (already started) record first
        async with self._lock(exp_id):
            if exp_id not in self.runs:
                # Completed (its final state holds every result) or dropped after a failed save
                # (the result may be missing): the stored state decides.
                assert self.store is not None
                found = await self.store.get(exp_id)  # whole: a sealed result counts
                return found is not None and all(number in found[0].results for number in numbers)
            if self._committed.get(exp_id, 0) >= generation:
                return True
            covered = self._recorded.get(exp_id, generation)
            await self._advance(exp_id)
            self._committed[exp_id] = covered
            if exp_id not in self.runs:  # completed: forget its counters
                self._recorded.pop(exp_id, None)
                self._committed.pop(exp_id, None)
            return True

    async def on_progress(self, progress: TrialProgress) -> None:
        """A fold's score of a running trial: ask the pruner, answer on ``trials.control``.

        Core NATS (not stored): a lost progress message only means a trial runs a fold longer.
        """
        exp_id = progress.experiment_id
        async with self._lock(exp_id):
            entry = self.runs.get(exp_id)
            verdict = None if entry is None else entry[0].report(progress.number, progress.step, progress.value)
        if verdict is None or not (verdict or progress.awaits_verdict):
            return
        action = TrialControlAction.PRUNE if verdict else TrialControlAction.CONTINUE
        if verdict:
            stage = "rung" if entry and entry[0].rungs is not None else "fold"
            if entry and entry[0].spec.model.trainer is not None:
                stage = "step"  # a trainer's report (an epoch)
            log.info("trial %s pruned after %s %d (%.4f)", progress.trial_id, stage, progress.step + 1, progress.value)
        await self.ctx.broker.publish(
            TrialControl(
                experiment_id=exp_id,
                trial_id=progress.trial_id,
                action=action,
                step=progress.step,
                reason=f"{entry[0].pruning.name} pruner" if verdict and entry else "",
            ),
            subject_for(Subject.TRIAL_CONTROL, exp_id),
        )

    # -- warm start ---------------------------------------------------------------------------

    async def _warm_start(self, state: ExperimentState) -> None:
        """Seed a new experiment with the compatible trials of its lineage (kept in its state)."""
        lineage = lineage_of(state.tweak, state.source)
        if lineage is None or self.lineage is None:
            return
        try:
            history = await self.lineage.load(lineage)
        except Exception:  # warm start is an optimisation: a cold start is always correct
            log.exception("could not read lineage %s; starting cold", lineage)
            return
        state.warm_trials, state.warm_start = select(history, lineage, state.tweak.spec, state.source)
        report = state.warm_start
        if report.available:
            log.info(
                "experiment %s: warm start from %s reuses %d of %d earlier trials (%s)",
                state.experiment_id,
                lineage,
                report.reused,
                report.available,
                report.reasons or "all compatible",
            )

    async def _remember(self, run: ExperimentRun) -> None:
        """Add a finished experiment's trials to its lineage, for the next push to start from."""
        state = run.state
        lineage = lineage_of(state.tweak, state.source)
        if lineage is None or self.lineage is None:
            return
        try:
            await self.lineage.add(lineage, state.experiment_id, state.source, run.spec, list(state.results.values()))
        except Exception:  # the experiment's outcome does not depend on it
            log.exception("could not record experiment %s in lineage %s", state.experiment_id, lineage)

    # -- internals ----------------------------------------------------------------------------

    async def _run(self, exp_id: str) -> ExperimentRun | None:
        if exp_id in self.runs:
            return self.runs[exp_id][0]
        assert self.store is not None
        found = await self.store.get_stored(exp_id)
        if found is None:
            return None
        run, revision = await self._rebuild(*found)
        self.runs[exp_id] = (run, revision)
        if self.ownership is not None and run.state.status is ExperimentStatus.RUNNING:
            # The cache was dropped after a failure, perhaps a publish of new trials that failed after
            # their state was saved (a NATS node lost): send the in-flight ones again under their
            # message ids (stored once within the duplicate window), as a resume does.
            await self._publish_trials(run, sorted(run.in_flight()))
        return run

    async def _save(self, exp_id: str) -> None:
        assert self.store is not None
        run, revision = self.runs[exp_id]
        sealing = run.seal(self.ctx.broker.connection.max_payload)
        if sealing is not None:
            # The segment first, under a key no stored state names yet: the state that names it
            # is written only once it is there, so a reader never misses a result.
            await self.store.put_segment(sealing[0].key, *sealing[1:])
            run.sealed_as(*sealing)
        try:
            # The stored state's JSON from its cached parts: only entries new since the last save are serialised.
            stored = run.stored()
            revision = await self.store.update(exp_id, stored, revision, data=run.dump(stored))
        except StaleRecordError:
            # Someone else wrote (another scheduler replica, or a stale cache): rebuild from truth.
            found = await self.store.get_stored(exp_id)
            if found is None:
                raise
            self.runs[exp_id] = await self._rebuild(*found)
            raise
        self.runs[exp_id] = (run, revision)

    async def _advance(self, exp_id: str, now: datetime | None = None) -> None:
        """Issue what the budget allows, or complete the experiment; persist before publishing trials."""
        run, _ = self.runs[exp_id]
        if run.state.status is not ExperimentStatus.RUNNING:
            return
        if run.finished(now) or self._overdue(run, now):
            await self._close(exp_id, now=now)
            return
        size = run.batch_size(self.ctx.settings.trial_batch_max, self.ctx.settings.trial_batch_target_s)
        if run.strategy.cheap:  # a random draw: cheaper than a hop to a thread and back
            issued = run.next_trials(now, size)
        else:
            # A costly sampler asks off the event loop, so other experiments' results and acks keep
            # flowing; the experiment's lock, held here, serialises every use of its study.
            issued = await asyncio.get_running_loop().run_in_executor(self._sampler, run.next_trials, now, size)
        if issued:
            await self._save(exp_id)
            await self._publish_trials(run, [number for number, _ in issued], size)
        else:
            await self._save(exp_id)

    async def _close(self, exp_id: str, message: str | None = None, now: datetime | None = None) -> None:
        """Complete the experiment: lineage, the completed event, final state."""
        run, _ = self.runs[exp_id]
        # What the evaluator accepts, and what the server takes if that is less.
        limit = min(
            self.ctx.settings.max_payload_bytes, self.ctx.broker.connection.max_payload or self.ctx.settings.max_payload_bytes
        )
        completed = run.complete(now, message, limit)
        await self._remember(run)
        await self.ctx.publish(
            completed,
            subject_for(Subject.EXPERIMENT_COMPLETED, exp_id),
            msg_id=msg_id("experiment-completed", exp_id),
            stream=Stream.EVENTS,
            trace_parent=run.state.traceparent,
        )
        await self._save(exp_id)
        log.info("experiment %s %s with %d trials", exp_id, completed.status.value, completed.total)
        self.runs.pop(exp_id, None)
        if self.ownership is not None:
            await self.ownership.release(exp_id)

    def _overdue(self, run: ExperimentRun, now: datetime | None) -> bool:
        deadline = run.deadline
        return deadline is not None and (now or datetime.now(UTC)) >= deadline + DEADLINE_GRACE

    async def _publish_trials(self, run: ExperimentRun, numbers: list[int], size: int | None = None) -> None:
        exp_id = run.state.experiment_id
        pool = run_pool(run.spec, self.ctx.settings)
        if size is None:
            size = run.batch_size(self.ctx.settings.trial_batch_max, self.ctx.settings.trial_batch_target_s)

        async def _one(batch: list[int]) -> None:
            first, rest = batch[0], batch[1:]
            tid = trial_id(exp_id, first)
            await self.ctx.publish(
                TrialRequested(
                    experiment_id=exp_id,
                    trial_id=tid,
                    number=first,
                    params=run.state.issued[first],
                    spec=run.spec,
                    resources=run.spec.resources,
                    batch=[BatchedTrial(trial_id=trial_id(exp_id, n), number=n, params=run.state.issued[n]) for n in rest],
                ),
                # The pool's token routes it to that pool's runners only (their own consumer).
                trial_subject(pool, exp_id),
                # A batch's id names its trials: the same request re-sent after a restart is stored once.
                msg_id=msg_id("trial", tid) if not rest else msg_id("trial", tid, *rest),
                stream=Stream.TRIALS,
                trace_parent=run.state.traceparent,  # each dispatch is a child of the experiment
            )

        # Concurrently: one round trip for the lot instead of one per request (order is irrelevant
        # on the work queue; each is de-duplicated by its message id if re-sent).
        await asyncio.gather(*(_one(numbers[i : i + size]) for i in range(0, len(numbers), size)))

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

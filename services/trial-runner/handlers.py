"""The trial runner's message handling: train one trial at a time, heartbeat while training, report once.

Training runs in the runner's long-lived child process (:mod:`tweakline.trial_runner.worker`),
so the event loop keeps the connection alive and sends ``in_progress`` heartbeats (a long trial
is never redelivered while its runner lives; a dead runner's trial is redelivered after
``ack_wait``), and a trial over its time or memory limit is failed without taking the runner down.
On shutdown the running trial gets ``shutdown_grace_s`` to finish, then it is handed back (nak).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from faststream.nats import NatsMessage

from tweakline.errors import ArtifactError
from tweakline.ml.datasets import needs_prefetch, prefetch
from tweakline.ml.outcome import TrialOutcome
from tweakline.ml.trainers.bundles import fetch_code_bundle
from tweakline.observability import telemetry
from tweakline.proto.messages import TrialCompleted, TrialProgress, TrialRecord, TrialRequested, TrialStatus, msg_id
from tweakline.proto.subjects import Stream, Subject, subject_for
from tweakline.runtime.service import ServiceContext, keep_alive
from tweakline.search.pruning import pruning_for
from tweakline.trial_runner.early_stopping import EarlyStopping, TrialWatch
from tweakline.trial_runner.worker import TrialAbortedError, TrialWorker, awaits_verdict, worker_config

log = logging.getLogger(__name__)

# Without a pruner, a trial's fold scores go on the bus only once it has trained this long.
LIVE_PROGRESS_AFTER_S = 1.0
# A handed-back request is delivered again after this delay: long enough for the stopping runner,
# whose pull loop runs until its connection closes, not to fetch it again itself (each fetch is a
# delivery, and deliveries are bounded by trial_max_deliver); a full test run caught one burnt.
HAND_BACK_DELAY_S = 5.0
# After the shutdown grace and the hand-back, how long the stop waits for the handler to return.
HAND_BACK_WAIT_S = 30.0


class TrialRunner:
    """Trains the trials handed out by the shared work queue."""

    def __init__(self, ctx: ServiceContext, worker: TrialWorker | None = None):
        self.ctx = ctx
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.worker = worker or TrialWorker(worker_config(ctx.settings))
        self.early = EarlyStopping(ctx, on_cancel=self.cancel)  # verdicts in on trials.control
        self.stopping = False
        self._refused: TrialOutcome | None = None  # the current request's code bundle was refused
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        """Start the training process up front, so the first trial does not wait for it."""
        await self.worker.start()

    async def stop(self) -> None:
        """Stop taking trials; give the running one ``shutdown_grace_s``, then hand it back."""
        self.stopping = True
        self.worker.stop_between_trials()  # a running batch hands back the trials it has not started
        try:
            await asyncio.wait_for(self._idle.wait(), self.ctx.settings.shutdown_grace_s)
        except TimeoutError:
            log.warning("trial %s did not finish within the shutdown grace: handing it back", self.worker.current)
            self.worker.abort()
            try:  # bounded: a handler stuck outside training (a fetch, a publish) must not hold the stop
                await asyncio.wait_for(self._idle.wait(), HAND_BACK_WAIT_S)
            except TimeoutError:
                log.error("the trial handler did not stop within %gs of the hand-back; stopping anyway", HAND_BACK_WAIT_S)
        await self.worker.close()

    def cancel(self, trial_id: str, reason: str) -> bool:
        """Stop ``trial_id`` if this runner is training it; its result is then ``pruned`` with ``reason``.

        A trial still waiting in the running batch is skipped instead when its experiment was
        cancelled (reported by nobody, as a cancelled trial fetched later).
        """
        if self.worker.cancel(trial_id, reason):
            return True
        return self.early.cancelled(trial_id) is not None and self.worker.skip(trial_id)

    async def _fold(self, request: TrialRequested, watch: TrialWatch, fold: int, value: float) -> bool:
        """Report a fold; with a pruner, wait briefly for the scheduler's verdict. True: stop (pruned).

        The worker hands over only the folds someone reads (``folds_after_s`` in ``_run_one``).
        """
        wait = awaits_verdict(request, fold)
        await self._progress(request, fold, value, awaits=wait)
        if wait:
            return await watch.answered(fold, self.ctx.settings.prune_verdict_wait_s)
        return watch.cancelled

    async def _progress(self, request: TrialRequested, fold: int, value: float, awaits: bool = False) -> None:
        progress = TrialProgress(
            experiment_id=request.experiment_id,
            trial_id=request.trial_id,
            number=request.number,
            step=fold,
            value=value,
            awaits_verdict=awaits,
        )
        try:  # live progress is best effort (core NATS): a lost one only delays early stopping
            await self.ctx.broker.publish(progress, subject_for(Subject.TRIAL_PROGRESS, request.experiment_id))
        except Exception:
            log.debug("could not publish progress of %s", request.trial_id, exc_info=True)

    async def on_trial_requested(self, request: TrialRequested, msg: NatsMessage) -> None:
        """Run the request's trials (one, or a batch of fast ones) and publish each result before acknowledging."""
        if self.stopping:  # shutting down: leave it to another runner
            await msg.nack(delay=HAND_BACK_DELAY_S)
            return
        self._idle.clear()
        try:
            await self._handle(msg, request)
        finally:
            self._idle.set()

    async def _handle(self, msg: NatsMessage, request: TrialRequested) -> None:
        attempt = msg.raw_message.metadata.num_delivered or 1
        # Trials of a batch run one after the other; their results go out together in one message
        # (one round of the scheduler's group commit), and only then is the request acked.
        done: list[tuple[TrialRequested, TrialOutcome]] = []
        beat = asyncio.create_task(keep_alive(msg, max(0.5, self.ctx.settings.trial_ack_wait_s / 3)))
        try:
            trials = request.trials()
            if len(trials) > 1:
                await self._run_batch(trials, attempt, done)
            else:
                outcome = await self._run_one(trials[0], attempt, first=True)
                if outcome is not None:
                    done.append((trials[0], outcome))
        except TrialAbortedError:
            await self._publish(done, attempt)  # what finished is kept; the request goes back for the rest
            log.info("trial %s handed back", request.trial_id)
            await msg.nack(delay=HAND_BACK_DELAY_S)
            return
        except _RetryError as exc:
            await self._publish(done, attempt)
            log.warning("trial %s attempt %d failed, will retry: %s", exc.trial_id, attempt, exc.__cause__)
            await msg.nack(delay=min(self.ctx.settings.trial_retry_backoff_max_s, 2.0**attempt))
            return
        finally:
            beat.cancel()
        await self._publish(done, attempt)
        await msg.ack()  # only now: a runner dying before this point means redelivery, not loss

    async def _run_batch(
        self, trials: list[TrialRequested], attempt: int, done: list[tuple[TrialRequested, TrialOutcome]]
    ) -> None:
        """A batch's trials through the training child in one pipe message (``TrialWorker.run_batch``).

        Each trial is still skipped, limited, pruned, retried and reported on its own, as in
        :meth:`_run_one`; ``done`` collects the outcomes as they arrive (kept when this raises).
        """
        runnable: list[TrialRequested] = []
        for trial in trials:
            cancelled = self.early.cancelled(trial.trial_id)
            if cancelled is not None:  # fetched just as its experiment was cancelled
                log.info("trial %s skipped: %s", trial.trial_id, cancelled)
            else:
                runnable.append(trial)
        if not runnable:
            return
        if attempt > self.ctx.settings.trial_max_deliver:  # every trial of the batch came back as often
            for trial in runnable:
                outcome = await self._run_one(trial, attempt, first=False)
                if outcome is not None:
                    done.append((trial, outcome))
            return
        log.info("trials %s started (attempt %d, a batch of %d)", ", ".join(t.trial_id for t in runnable), attempt, len(runnable))
        try:  # a batch shares its experiment's dataset and code
            self._refused = None
            if needs_prefetch(runnable[0].spec.dataset):
                await asyncio.to_thread(prefetch, runnable[0].spec.dataset)
            self._refused = await self._fetch_code(runnable[0])
        except Exception as exc:
            if attempt < self.ctx.settings.trial_max_deliver:
                raise _RetryError(runnable[0].trial_id) from exc
            log.warning("trial %s attempt %d failed: %s", runnable[0].trial_id, attempt, exc, exc_info=True)
            done.extend((t, TrialOutcome(status="failed", error=f"{type(exc).__name__}: {exc}")) for t in runnable)
            return
        if self._refused is not None:
            done.extend((t, self._refused) for t in runnable)
            return
        folds_after_s = 0.0 if pruning_for(runnable[0].spec).enabled else LIVE_PROGRESS_AFTER_S
        with contextlib.ExitStack() as stack:
            # Every trial of the batch is watched, so a verdict for any of them finds it (self.cancel).
            watches = [stack.enter_context(self.early.watch(t)) for t in runnable]

            reported: set[int] = set()

            def on_outcome(index: int, outcome: TrialOutcome | None) -> None:
                reported.add(index)
                if outcome is not None:
                    _trace_trial(runnable[index], outcome)
                    done.append((runnable[index], outcome))

            while len(reported) < len(runnable):
                if reported and self.stopping:  # the rest of the batch goes to another runner
                    raise TrialAbortedError("the runner is stopping")
                rest = [i for i in range(len(runnable)) if i not in reported]
                try:
                    await self.worker.run_batch(
                        [runnable[i] for i in rest],
                        on_outcome=lambda j, o, rest=rest: on_outcome(rest[j], o),
                        on_fold=lambda j, fold, value, rest=rest: self._fold(runnable[rest[j]], watches[rest[j]], fold, value),
                        timeout=runnable[0].spec.budget.trial_timeout,
                        folds_after_s=folds_after_s,
                    )
                except TrialAbortedError:
                    raise
                except Exception as exc:  # infrastructure trouble (not a bad trial): retry with back-off
                    failed = rest[getattr(exc, "index", 0)]
                    if attempt < self.ctx.settings.trial_max_deliver:
                        raise _RetryError(runnable[failed].trial_id) from exc
                    log.warning("trial %s attempt %d failed: %s", runnable[failed].trial_id, attempt, exc, exc_info=True)
                    on_outcome(failed, TrialOutcome(status="failed", error=f"{type(exc).__name__}: {exc}"))

    async def _run_one(self, request: TrialRequested, attempt: int, *, first: bool) -> TrialOutcome | None:
        """One trial's outcome; ``None`` when its experiment was cancelled (nothing to report to).

        Raises :class:`TrialAbortedError` (hand the request back) and :class:`_RetryError`
        (infrastructure trouble: the request is retried with back-off).
        """
        cancelled = self.early.cancelled(request.trial_id)
        if cancelled is not None:  # fetched just as its experiment was cancelled
            log.info("trial %s skipped: %s", request.trial_id, cancelled)
            return None
        if attempt > self.ctx.settings.trial_max_deliver:
            # Every runner that took it stopped before reporting (killed, evicted, crashed): record it once.
            error = (
                f"gave up after {attempt - 1} deliveries: every runner that took this trial stopped "
                "before reporting a result (killed, evicted or out of memory)"
            )
            return TrialOutcome(status=TrialStatus.FAILED, error=error)
        log.info("trial %s started (attempt %d)", request.trial_id, attempt)
        try:
            if first:  # a batch shares its experiment's dataset and code
                self._refused = None
                if needs_prefetch(request.spec.dataset):  # no thread hop for the sources that need none
                    await asyncio.to_thread(prefetch, request.spec.dataset)  # object: data, over this process's NATS
                self._refused = await self._fetch_code(request)
            if self._refused is not None:
                return self._refused
            # The child trains; each fold's score is published from here, and a prune verdict on
            # trials.control reaches the child through early stopping's registry -> self.cancel.
            with self.early.watch(request) as watch, telemetry.span("trial.run") as run_span:
                outcome = await self.worker.run(
                    request,
                    on_fold=lambda fold, value: self._fold(request, watch, fold, value),
                    timeout=request.spec.budget.trial_timeout,
                    # Fold scores go out for the pruner, and as live progress of a long trial; a
                    # fast trial without a pruner sends none (no reader: two messages per trivial trial).
                    folds_after_s=0.0 if pruning_for(request.spec).enabled else LIVE_PROGRESS_AFTER_S,
                )
                telemetry.trial_outcome(run_span, outcome)
            return outcome
        except TrialAbortedError:
            raise
        except Exception as exc:  # infrastructure trouble (not a bad trial): retry with back-off
            if attempt < self.ctx.settings.trial_max_deliver:
                raise _RetryError(request.trial_id) from exc
            log.warning("trial %s attempt %d failed: %s", request.trial_id, attempt, exc, exc_info=True)
            return TrialOutcome(status="failed", error=f"{type(exc).__name__}: {exc}")

    async def _fetch_code(self, request: TrialRequested) -> TrialOutcome | None:
        """Fetch a shipped code bundle (hash-checked) for the child; a failed outcome if it is refused."""
        trainer = request.spec.model.trainer
        if trainer is None:
            return None
        try:
            await fetch_code_bundle(self.ctx.js, trainer.code, Path(self.worker.config.code_cache_dir or "."))
        except ArtifactError as exc:  # tampered or missing: never run, never retried elsewhere
            return TrialOutcome(status=TrialStatus.FAILED, error=str(exc))
        return None

    async def _publish(self, done: list[tuple[TrialRequested, TrialOutcome]], attempt: int) -> None:
        """Publish the finished trials' results: one message for all of a batch's (one publish, one
        acknowledgement, one delivery to the scheduler), under an id naming every trial it carries."""
        if not done:
            return
        (request, outcome), rest = done[0], done[1:]
        first = TrialCompleted(
            experiment_id=request.experiment_id,
            trial_id=request.trial_id,
            attempt=attempt,
            batch=[TrialRecord(**self._record(r, o)) for r, o in rest],  # validated once, not as a result first
            **self._record(request, outcome),
        )
        await self.ctx.publish(
            first,
            subject_for(Subject.TRIAL_COMPLETED, first.experiment_id),
            msg_id=msg_id("trial-completed", first.trial_id, *(r.number for r, _ in rest)),
            stream=Stream.EVENTS,
        )
        # One line for a batch (a write per trial was a tenth of a fast trial's cost here), a clause per trial.
        log.info("; ".join(f"trial {r.trial_id} {o.status} score={o.score} in {o.duration_s:.2f}s" for r, o in done))

    def _record(self, request: TrialRequested, outcome: TrialOutcome) -> dict[str, Any]:
        """The fields of a trial's record: what it measured, with its number, parameters and runner."""
        return {
            "number": request.number,
            "params": request.params,
            "status": TrialStatus(outcome.status),
            "score": outcome.score,
            "metrics": outcome.metrics,
            "fold_scores": outcome.fold_scores,
            "rung_scores": outcome.rung_scores,
            "duration_s": outcome.duration_s,
            "cpu_s": outcome.cpu_s,
            "runner": self.name,
            "error": outcome.error,
        }


def _trace_trial(request: TrialRequested, outcome: TrialOutcome) -> None:
    """A batch's trial gets its own ``trial.run`` span, made once its outcome is in (it ran in the child, in one go with the others)."""
    ended = time.time_ns()
    run_span = telemetry.past_span(
        "trial.run",
        started_ns=ended - int(outcome.duration_s * 1e9),
        experiment_id=request.experiment_id,
        trial_id=request.trial_id,
    )
    telemetry.trial_outcome(run_span, outcome)
    run_span.end(end_time=ended)


class _RetryError(Exception):
    """A trial met infrastructure trouble (not a bad trial): its request is retried with back-off."""

    def __init__(self, trial_id: str):
        super().__init__(trial_id)
        self.trial_id = trial_id

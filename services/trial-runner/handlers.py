"""The trial runner's message handling: train one trial at a time, heartbeat while training, report once.

Training runs in a worker thread so the event loop keeps the connection alive and sends
``in_progress`` heartbeats: a long trial is never redelivered while its runner lives, and a
dead runner's trial is redelivered after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from faststream.nats import NatsMessage

from tweakline import telemetry
from tweakline.proto.messages import TrialCompleted, TrialRequested, TrialStatus, msg_id
from tweakline.proto.subjects import Stream, Subject, subject_for
from tweakline.service import ServiceContext, keep_alive
from tweakline.trial_runner.datasets import DatasetCache
from tweakline.trial_runner.early_stopping import EarlyStopping
from tweakline.trial_runner.training import OnFold, TrialOutcome, run_trial

log = logging.getLogger(__name__)


class TrialRunner:
    """Trains the trials handed out by the shared work queue."""

    def __init__(self, ctx: ServiceContext):
        self.ctx = ctx
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.datasets = DatasetCache()
        self.early = EarlyStopping(ctx)  # early stopping: progress out, verdicts in

    @telemetry.traced("trial.run")  # runs in a worker thread: to_thread copies the trace context
    def _train(self, request: TrialRequested, on_fold: OnFold | None = None) -> TrialOutcome:
        split = self.datasets.get(request.spec.dataset)
        return run_trial(
            split,
            request.spec,
            request.params,
            self.ctx.settings.allowed_estimators,
            seed=request.spec.search.seed,
            n_jobs=self.ctx.settings.runner_threads,
            on_fold=on_fold,
        )

    async def on_trial_requested(self, msg: NatsMessage) -> None:
        """Run one trial and publish its result before acknowledging it."""
        request = await self.ctx.decode(msg, TrialRequested)
        if request is None:
            return
        attempt = msg.raw_message.metadata.num_delivered or 1
        log.info("trial %s started (attempt %d)", request.trial_id, attempt)
        beat = asyncio.create_task(keep_alive(msg, max(0.5, self.ctx.settings.trial_ack_wait_s / 3)))
        try:
            with self.early.watch(request) as watch:  # early stopping
                outcome = await asyncio.to_thread(self._train, request, watch.on_fold)
        except Exception as exc:  # infrastructure trouble (not a bad trial): retry with back-off
            if attempt < self.ctx.settings.trial_max_deliver:
                log.warning("trial %s attempt %d failed, will retry: %s", request.trial_id, attempt, exc)
                await msg.nack(delay=min(30.0, 2.0**attempt))
                return
            outcome = TrialOutcome(status="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            beat.cancel()
        result = TrialCompleted(
            experiment_id=request.experiment_id,
            trial_id=request.trial_id,
            number=request.number,
            status=TrialStatus(outcome.status),
            params=request.params,
            score=outcome.score,
            metrics=outcome.metrics,
            fold_scores=outcome.fold_scores,
            duration_s=outcome.duration_s,
            cpu_s=outcome.cpu_s,
            runner=self.name,
            attempt=attempt,
            error=outcome.error,
        )
        await self.ctx.publish(
            result,
            subject_for(Subject.TRIAL_COMPLETED, request.experiment_id),
            msg_id=msg_id("trial-completed", request.trial_id),
            stream=Stream.EVENTS,
        )
        await msg.ack()  # only now: a runner dying before this point means redelivery, not loss
        log.info("trial %s %s score=%s in %.2fs", request.trial_id, outcome.status, outcome.score, outcome.duration_s)

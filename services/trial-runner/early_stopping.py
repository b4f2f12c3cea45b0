"""The runner's side of early stopping: fold scores out on ``trials.progress``, verdicts in on ``trials.control``.

Training runs outside the event loop (a worker thread, or a worker process that forwards each
fold's score to its parent). :meth:`EarlyStopping.watch` gives one trial an ``on_fold`` hook for
:func:`~tweakline.ml.training.run_trial`: it publishes the fold's score from the
parent's event loop (``run_coroutine_threadsafe``) and, when the tweak file names a pruner,
waits briefly for the scheduler's verdict on that fold, so a pruned trial stops before training
its next fold. It returns the trial's cancel flag (True stops the trial, status pruned).

A prune verdict also calls :attr:`EarlyStopping.on_cancel` (``cancel(trial_id, reason)``), for a
training backend that can stop mid-fold, such as a worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

from tweakline.proto.messages import TrialControl, TrialControlAction, TrialProgress, TrialRequested
from tweakline.proto.subjects import Subject, subject_for
from tweakline.runtime.service import ServiceContext
from tweakline.search.pruning import pruning_for

log = logging.getLogger(__name__)

# Verdicts that stop a trial: pruned by the pruner, or its experiment cancelled or superseded.
_STOP = (TrialControlAction.PRUNE, TrialControlAction.CANCEL)
# Cancelled trials remembered, so one fetched just after its cancel went by is skipped, not trained.
_REMEMBERED_CANCELS = 4096

Cancel = Callable[[str, str], None]
"""``cancel(trial_id, reason)``: stop a trial's training now (optional, backend-specific)."""


class TrialWatch:
    """One trial's progress reporting and cancel flag (thread-safe)."""

    def __init__(self, owner: EarlyStopping, request: TrialRequested):
        self.owner = owner
        self.request = request
        self.awaits_verdict = pruning_for(request.spec).enabled
        self.cancelled = False
        self.reason = ""
        self._answered: set[int] = set()
        self._cond = threading.Condition()
        self._changed = asyncio.Event()  # for waiting in the event loop (a worker process's folds)

    def on_fold(self, fold: int, value: float) -> bool:
        """Publish a fold's score; True when the trial must stop (pruned). Called from the training thread."""
        if self.cancelled:
            return True
        last = fold + 1 >= self.request.spec.stages
        wait = self.awaits_verdict and not last
        progress = TrialProgress(
            experiment_id=self.request.experiment_id,
            trial_id=self.request.trial_id,
            number=self.request.number,
            step=fold,
            value=value,
            awaits_verdict=wait,
        )
        try:
            sent = asyncio.run_coroutine_threadsafe(self.owner.publish(progress), self.owner.loop)
            sent.result(timeout=max(1.0, self.owner.wait_s))
        except Exception:  # progress is advisory: training goes on without it
            log.debug("progress of %s not sent", self.request.trial_id, exc_info=True)
            return self.cancelled
        if wait:
            with self._cond:
                self._cond.wait_for(lambda: self.cancelled or fold in self._answered, timeout=self.owner.wait_s)
        return self.cancelled

    def verdict(self, control: TrialControl) -> None:
        """Apply the scheduler's answer (from the event loop)."""
        with self._cond:
            if control.action in _STOP:
                self.cancelled = True
                self.reason = control.reason or "pruned by the scheduler"
            if control.step is not None:
                self._answered.add(control.step)
            self._cond.notify_all()
        self._changed.set()

    async def answered(self, fold: int, timeout: float) -> bool:
        """Wait (in the event loop) up to ``timeout`` for the verdict on ``fold``; True if pruned."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (self.cancelled or fold in self._answered):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return self.cancelled


class EarlyStopping:
    """Per-runner registry of the trials it is training, fed by the ``trials.control`` subscription."""

    def __init__(self, ctx: ServiceContext, on_cancel: Cancel | None = None):
        self.ctx = ctx
        self.on_cancel = on_cancel
        self.wait_s = ctx.settings.prune_verdict_wait_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._trials: dict[str, TrialWatch] = {}
        self._cancelled: OrderedDict[str, str] = OrderedDict()

    def cancelled(self, trial_id: str) -> str | None:
        """The reason ``trial_id``'s experiment was cancelled, if a cancel for it came by."""
        return self._cancelled.get(trial_id)

    async def start(self) -> None:
        """Remember the event loop that publishes on the training thread's behalf (app startup hook)."""
        self.loop = asyncio.get_running_loop()

    @contextlib.contextmanager
    def watch(self, request: TrialRequested) -> Iterator[TrialWatch]:
        """Track ``request`` while it trains; its ``on_fold`` goes to ``run_trial``."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        watch = TrialWatch(self, request)
        self._trials[request.trial_id] = watch
        try:
            yield watch
        finally:
            self._trials.pop(request.trial_id, None)

    async def publish(self, progress: TrialProgress) -> None:
        """Send a fold's score (core NATS: live, not stored)."""
        await self.ctx.broker.publish(progress, subject_for(Subject.TRIAL_PROGRESS, progress.experiment_id))

    async def on_control(self, control: TrialControl) -> None:
        """A verdict from the scheduler; only trials this runner is training are affected."""
        if control.action is TrialControlAction.CANCEL:
            self._cancelled[control.trial_id] = control.reason or "experiment cancelled"
            while len(self._cancelled) > _REMEMBERED_CANCELS:
                self._cancelled.popitem(last=False)
        watch = self._trials.get(control.trial_id)
        if watch is None:
            return
        watch.verdict(control)
        if control.action in _STOP:
            log.info("trial %s stopped (%s): %s", control.trial_id, control.action.value, watch.reason)
            if self.on_cancel is not None:
                try:
                    self.on_cancel(control.trial_id, watch.reason)
                except Exception:  # the flag still stops the trial at its next fold
                    log.exception("cancel of %s failed", control.trial_id)

"""The runner's training child: one long-lived process per runner, killed and respawned on limits.

Training runs in a child process so that a trial can be stopped at any moment (a time limit, a
memory limit, a cancellation by the scheduler, a shutdown) without taking the runner down: the
child is killed and a fresh one is started for the next trial. The child lives from trial to
trial so its dataset cache (and its imports) survive; only a killed trial pays for a new child.

API (asyncio, one trial at a time)::

    worker = TrialWorker(WorkerConfig(allowed_estimators=[...], memory_limit_mb=2048))
    await worker.start()                       # optional: warm the child up front
    outcome = await worker.run(request, on_fold=publish_progress, timeout=30.0)
    worker.cancel(request.trial_id, "pruned by asha at fold 2")   # from another task
    await worker.run_batch(requests, on_outcome=record, timeout=30.0)  # a batch: one pipe message
    await worker.close()

``run`` returns a :class:`~tweakline.ml.training.TrialOutcome`:

- ``failed`` with the reason when the trial exceeds its time or memory limit;
- ``pruned`` (with the fold scores seen so far) after :meth:`TrialWorker.cancel`;
- otherwise what :func:`~tweakline.ml.training.run_trial` produced.

It raises :class:`WorkerCrashedError` when the child died on its own (a segfault, the kernel's OOM
killer) or could not load the data: infrastructure trouble the caller may retry elsewhere, and
:class:`TrialAbortedError` after :meth:`TrialWorker.abort` (the runner is shutting down and hands
the trial back).

:meth:`TrialWorker.run_batch` sends a batch's trials to the child in one pipe message; the child
trains them one after the other and sends their outcomes back together (nothing to wait for in
between), while the parent still enforces each trial's own time and memory limit, cancels the
trial running, skips a trial whose experiment was cancelled and stops between trials when asked
(through a few bytes of shared memory, :class:`SharedSignals`).

Parent and child talk over a private ``multiprocessing`` pipe (local, never the bus). The child
is forked by the runner's zygote (:mod:`tweakline.trial_runner.zygote`: a single-threaded process
the worker forks when it is prepared, with scikit-learn imported; in the local stack as the runner
starts, :func:`prepare_early`), so it shares those pages instead of importing its own copy; the zygote dies with the runner and the child with the zygote,
so a SIGKILLed runner leaves no training orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import mmap
import multiprocessing
import os
import signal
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from tweakline.errors import TweaklineError
from tweakline.ml.outcome import TrialOutcome
from tweakline.proto.messages import MAX_TRIAL_BATCH, TrialRequested, TrialStatus
from tweakline.proto.tweakfile import ExperimentSpec
from tweakline.runtime.settings import Settings
from tweakline.search.pruning import pruning_for
from tweakline.trial_runner.zygote import ForkedChild, Zygote, ZygoteError

log = logging.getLogger(__name__)

# How often the parent samples the child's memory (seconds).
MEMORY_POLL_S = 0.2
# After cancel(), how long the child may take to reach a fold boundary before it is killed.
CANCEL_GRACE_S = 1.0
# A new child is forked with scikit-learn imported (the zygote's import, slow on a busy machine, may still run): bounded.
START_TIMEOUT_S = 180.0
# A batch's outcomes go back together, or at least this often (seconds): a child killed for one
# trial's limit loses only the outcomes of the trials it finished since, and those run again.
OUTCOME_FLUSH_S = 0.1
# What the zygote imports before its first fork, so every child shares it (already imported, and
# so free, when the local stack's fork server preloaded it).
TRAINING_MODULES = ("tweakline.ml.datasets", "tweakline.ml.training", "sklearn.datasets", "sklearn.svm", "sklearn.linear_model")

OnFold = Callable[[int, float], Awaitable[bool | None] | bool | None]
"""``on_fold(fold_index, value)`` in the parent, after each fold the child finished; True stops
the trial there (pruned) when the child waits for a verdict (see :func:`awaits_verdict`)."""
BatchOnFold = Callable[[int, int, float], Awaitable[bool | None] | bool | None]
"""``on_fold(trial_index, fold_index, value)``: :data:`OnFold` for the trials of a batch."""


def awaits_verdict(request: TrialRequested, stage: int) -> bool:
    """Whether training pauses after ``stage`` (a fold, or a rung of ``search.resource``) for the
    early-stopping verdict: with a pruner, after every stage but the last, so a pruned trial never
    trains a fold or rung it does not need."""
    return pruning_for(request.spec).enabled and stage + 1 < request.spec.stages


class WorkerCrashedError(TweaklineError):
    """The training child died on its own or could not prepare the trial (retry elsewhere)."""


class TrialAbortedError(TweaklineError):
    """The trial was abandoned because the runner is stopping; hand it back to the queue."""


def _at(exc: WorkerCrashedError | TrialAbortedError, index: int) -> WorkerCrashedError | TrialAbortedError:
    """``exc``, naming the trial of a batch it stopped at (``index``)."""
    exc.index = index  # type: ignore[union-attr]
    return exc


@dataclass(frozen=True)
class WorkerConfig:
    """What the child needs to train, and the limits the parent enforces."""

    allowed_estimators: Sequence[str] = ("sklearn.",)
    n_jobs: int | None = 1
    memory_limit_mb: int | None = None
    cancel_grace_s: float = CANCEL_GRACE_S
    # Where uploaded (object:) datasets are cached on disk: the parent, which holds the NATS
    # connection, fetches them there before a trial; the child only reads that cache.
    dataset_cache_dir: str | None = None
    # Where shipped code bundles (model.trainer.code: object:code:<sha256>) are unpacked by the parent.
    code_cache_dir: str | None = None


def worker_config(settings: Settings) -> WorkerConfig:
    """The runner's training configuration, from its settings."""
    return WorkerConfig(
        allowed_estimators=tuple(settings.allowed_estimators),
        n_jobs=settings.runner_threads,
        memory_limit_mb=settings.trial_memory_mb,
        dataset_cache_dir=str(settings.state_dir / "cache" / "datasets"),
        code_cache_dir=str(settings.state_dir / "cache" / "code"),
    )


# ----------------------------------------------------------------------------------- the child


def _child_main(
    conn: Connection,
    signals: SharedSignals,
    allowed: list[str],
    n_jobs: int | None,
    dataset_cache_dir: str | None = None,
    code_cache_dir: str | None = None,
) -> None:  # pragma: no cover
    """The child's loop: receive a batch of trials (JSON), send fold scores, then the outcomes together.

    It runs in a child the zygote forked, which has already asked to die with it (``zygote._run_child``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner decides when training stops
    from pathlib import Path

    from tweakline.ml.datasets import DatasetCache, DatasetError, use_object_store

    if dataset_cache_dir is not None:

        def _not_prefetched(digest: str) -> bytes:
            raise DatasetError(f"sha256:{digest[:12]} was not fetched by the runner before the trial")

        use_object_store(_not_prefetched, Path(dataset_cache_dir))

    cache = DatasetCache()
    spec: ExperimentSpec | None = None
    conn.send(("ready", os.getpid()))
    while True:
        try:
            payload = conn.recv()
        except (EOFError, OSError):
            return
        if payload is None:
            return
        bodies, spec_json, folds_after_s = payload
        if spec_json is not None:  # a new experiment's spec (a batch's trials share one: sent once)
            spec = ExperimentSpec.model_validate_json(spec_json)
        # A batch's trials come in one message and go one after the other; their outcomes go back
        # together when the batch ends (or every OUTCOME_FLUSH_S), so a batch of fast trials costs
        # one message each way. Which trial runs, and since when, is in shared memory for the parent.
        outcomes: list[tuple[Any, ...]] = []
        flushed = time.monotonic()
        for index, body in enumerate(bodies):
            if index and signals.stop_requested():  # the runner is stopping: the rest goes back
                conn.send(("outcomes", outcomes, ("stopped", index)))
                break
            if signals.skipped(index):  # its experiment was cancelled before it started
                outcomes.append(("skipped", index))
            else:
                signals.begin(index, time.monotonic())
                outcome = _child_trial(conn, signals, index, body, spec, allowed, n_jobs, folds_after_s, cache, code_cache_dir)
                if outcome[0] == "error":
                    conn.send(("outcomes", outcomes, outcome))
                    break
                outcomes.append(outcome)
            if index + 1 == len(bodies) or time.monotonic() - flushed >= OUTCOME_FLUSH_S:
                conn.send(("outcomes", outcomes, None))
                outcomes, flushed = [], time.monotonic()
        signals.begin(-1, 0.0)


def _child_trial(
    conn: Connection,
    signals: SharedSignals,
    index: int,
    body: str,
    spec: ExperimentSpec | None,
    allowed: list[str],
    n_jobs: int | None,
    folds_after_s: float | None,
    cache: Any,
    code_cache_dir: str | None,
) -> tuple[Any, ...]:  # pragma: no cover - runs in the child
    """Train trial ``index`` of the current payload: ``("done", index, outcome)``, or ``("error", index, reason)``."""
    from tweakline.ml.training import estimator_seed, public_error, run_trial

    request = TrialRequested.model_validate({**json.loads(body), "spec": spec})
    started = time.monotonic()
    try:
        split = cache.get(request.spec.dataset)
    except Exception as exc:
        return ("error", index, public_error(exc))  # goes on the bus: no file contents

    def on_fold(fold: int, value: float) -> bool:
        awaits = awaits_verdict(request, fold)
        # A message per fold only when the parent reads it: a fast trial's scores come with its outcome.
        if awaits or (folds_after_s is not None and time.monotonic() - started >= folds_after_s):
            conn.send(("fold", index, fold, value))
        if awaits:
            reply = conn.recv()  # the parent always answers, within the verdict wait
            if reply is None or (reply[0] == "verdict" and reply[1]):
                return True
        return signals.cancelled(index)  # a cancelled trial stops at the next fold boundary

    threads = trial_threads(request, n_jobs)
    if request.spec.model.trainer is not None:
        outcome = _trainer_trial(split, request, on_fold, threads, code_cache_dir)
    else:
        outcome = run_trial(
            split,
            request.spec,
            request.params,
            allowed,
            seed=estimator_seed(request.spec),
            on_fold=on_fold,
            n_jobs=threads,
        )
    return ("done", index, {f.name: getattr(outcome, f.name) for f in fields(outcome)})  # no deep copy


def trial_threads(request: TrialRequested, n_jobs: int | None) -> int | None:
    """Threads for this trial: ``spec.resources.threads`` when the tweak file asks, else the runner's."""
    resources = request.resources or request.spec.resources
    return resources.threads if resources is not None and resources.threads is not None else n_jobs


def trial_memory_mb(request: TrialRequested, runner_limit: int | None) -> int | None:
    """The memory limit of this trial: the smaller of the runner's and ``spec.resources.memory_mb``."""
    resources = request.resources or request.spec.resources
    wanted = resources.memory_mb if resources is not None else None
    limits = [m for m in (runner_limit, wanted) if m is not None]
    return min(limits) if limits else None


def _trainer_trial(
    split: Any, request: TrialRequested, on_fold: Callable[[int, float], bool], threads: int | None, code_cache_dir: str | None
) -> TrialOutcome:
    """A trainer's trial: user code runs in a scrubbed grandchild (tweakline.ml.trainers.sandbox).

    Time and memory limits stay with the runner (it kills this child, and the grandchild dies
    with it); its memory counts into this child's.
    """
    from tweakline.ml.trainers import TrainerError, code_dir_of, run_trainer_trial

    trainer = request.spec.model.trainer
    assert trainer is not None
    try:
        code_dir = code_dir_of(trainer, Path(code_cache_dir) if code_cache_dir else None)
    except TrainerError as exc:
        return TrialOutcome(status=TrialStatus.FAILED, error=str(exc))
    return run_trainer_trial(split, request.spec, request.params, code_dir=code_dir, on_fold=on_fold, threads=threads or 1)


# ---------------------------------------------------------------------------------- the parent


class SharedSignals:
    """What the parent tells a forked child between pipe messages: a few bytes of anonymous shared memory.

    Byte 0 names the trial to stop (its index in the current batch + 1; 0: none), byte 1 asks
    the child to stop before its batch's next trial, and byte ``2 + i`` skips trial ``i`` of the
    batch. The child writes back which trial it trains and since when (:meth:`begin`), so the
    parent enforces each trial's limits without a message per trial. Made before the zygote is forked, so the zygote's children inherit it (a
    ``multiprocessing`` Event would start a resource tracker process per runner for its semaphore).
    """

    _PROGRESS = 2 + MAX_TRIAL_BATCH  # (index + 1, started): a short and a double, after the flags
    _FORMAT = "=hd"

    def __init__(self) -> None:
        self._bytes = mmap.mmap(-1, self._PROGRESS + struct.calcsize(self._FORMAT))

    def clear(self) -> None:
        """Forget every signal (a new batch)."""
        self._bytes[:] = bytes(len(self._bytes))

    def begin(self, index: int, started: float) -> None:
        """(Child) trial ``index`` starts now (``time.monotonic()``); -1: the batch is over."""
        self._bytes[self._PROGRESS :] = struct.pack(self._FORMAT, index + 1, started)

    def progress(self) -> tuple[int, float] | None:
        """(Parent) the index of the trial the child trains and when it started, if any."""
        raw = self._bytes[self._PROGRESS :]
        for _ in range(3):  # a copy made while the child wrote could mix two trials: read until two agree
            again = self._bytes[self._PROGRESS :]
            if again == raw:
                break
            raw = again
        number, started = struct.unpack(self._FORMAT, raw)
        return (number - 1, started) if number > 0 else None

    def cancel(self, index: int) -> None:
        """Stop trial ``index`` of the batch at its next fold boundary."""
        self._bytes[0] = index + 1

    def cancelled(self, index: int) -> bool:
        """Whether trial ``index`` of the batch is to stop."""
        return self._bytes[0] == index + 1

    def stop(self) -> None:
        """Start no further trial of the batch."""
        self._bytes[1] = 1

    def stop_requested(self) -> bool:
        """Whether the batch's further trials are to go back to the runner."""
        return self._bytes[1] == 1

    def skip(self, index: int) -> None:
        """Do not train trial ``index`` of the batch (its experiment was cancelled)."""
        if 0 <= index < MAX_TRIAL_BATCH:
            self._bytes[2 + index] = 1

    def skipped(self, index: int) -> bool:
        """Whether trial ``index`` of the batch is to be skipped."""
        return 0 <= index < MAX_TRIAL_BATCH and self._bytes[2 + index] == 1


def _tree_memory_mb(pid: int) -> float:
    """Memory the child and its descendants (a trainer runs in a grandchild) hold on their own, MiB.

    The unique set size (psutil's ``uss``, from ``/proc/<pid>/smaps_rollup``): what a trial
    allocated or changed, not the pre-imported libraries a forked child still shares with the
    zygote (its resident set counts those in full: ~170 MiB before any work).
    """
    root = psutil.Process(pid)
    total = root.memory_full_info().uss
    for proc in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_full_info().uss
    return total / 2**20


@dataclass
class _Running:
    trial_id: str
    index: int = 0  # its place in the batch the child is working through
    started: float = 0.0  # monotonic: its time limit counts from here
    rungs: bool = False  # stages are rungs of search.resource, not CV folds
    steps: bool = False  # stages are a trainer's reports (epochs): the last one is its score
    memory_limit_mb: int | None = None
    stages: list[float] = field(default_factory=list)  # each fold's (or rung's) score so far
    cancel_reason: str | None = None
    cancel_deadline: float | None = None
    aborted: bool = False
    memory_sampled_at: float = 0.0  # last memory sample (monotonic): one per MEMORY_POLL_S, not per message


class TrialWorker:
    """The parent side: runs trials in the child and enforces their limits."""

    def __init__(self, config: WorkerConfig, early: tuple[SharedSignals, Zygote] | None = None):
        """``early``: the signals and zygote :func:`prepare_early` made (:func:`take_early`), used instead of new ones."""
        self.config = config
        self._zygote: Zygote | None = None  # forks the children (prepare())
        self._process: ForkedChild | None = None
        self._conn: Connection | None = None
        self._signals = SharedSignals()
        if early is not None:
            self._signals, self._zygote = early
            log.info("training zygote %s: forked as the runner started", self._zygote.pid)
        self._running: _Running | None = None
        self._batch: list[str] = []  # trial ids of the batch the child is working through
        self._batch_requests: list[TrialRequested] = []
        self._cancel_reasons: dict[int, str] = {}  # why trials of the child's batch were cancelled, by index
        self._skipping: set[str] = set()  # trial ids of run_batch's requests to skip (see skip())
        self._stop_between = False  # stop_between_trials() was asked: every later batch stops after its first trial
        self._waiter: asyncio.Future[None] | None = None  # what _receive waits on, if it waits
        self._woken = False  # _poke() came while nothing waited: the next wait returns at once
        self._spec_sent: tuple[Connection, ExperimentSpec] | None = None  # the child's current spec
        self._start_lock: asyncio.Lock | None = None
        self.spawned = 0  # children started so far (observable in logs and tests)

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The child's process id, if one is running."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    @property
    def current(self) -> str | None:
        """The id of the trial being trained, if any."""
        running = self._current()
        return running.trial_id if running else None

    def _current(self) -> _Running | None:
        """The running trial, caught up with the child's progress in shared memory (limits and cancels act on it).

        The parent learns that the child moved on to a batch's next trial only from there (no
        message per trial): the next trial's limits count from the start the child wrote.
        """
        running = self._running
        if running is None or not self._batch_requests:
            return running
        progress = self._signals.progress()
        if progress is None or not 0 <= progress[0] < len(self._batch_requests):
            return running
        index, started = progress
        if index == running.index:
            running.started = started  # the child's clock is the same monotonic clock
            return running
        follower = self._begin(self._batch_requests[index], index, started, running.memory_sampled_at)
        follower.aborted = running.aborted
        return follower

    def prepare(self) -> None:
        """Fork the zygote that training children are forked from, unless it runs.

        Call it before the process starts threads (the runner does, when it builds its app): a
        fork copies only the calling thread, and a lock another thread held would stay locked.
        :meth:`start` calls it too, to replace a zygote that died.
        """
        if self._zygote is not None:
            if self._zygote.alive():
                return
            log.warning("the training zygote %s exited: forking a new one", self._zygote.pid)
            self._zygote.close()
        self._zygote = _fork_zygote(self._signals)

    async def start(self) -> None:
        """Start the child (if not running) and wait until it is ready to train (safe to call concurrently)."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._process is not None and self._process.is_alive():
                return
            self._discard()
            self.prepare()
            assert self._zygote is not None
            parent_end, child_end = multiprocessing.Pipe(duplex=True)
            self._signals.clear()
            try:
                process = self._zygote.spawn(
                    child_end,
                    {
                        "allowed": list(self.config.allowed_estimators),
                        "n_jobs": self.config.n_jobs,
                        "dataset_cache_dir": self.config.dataset_cache_dir,
                        "code_cache_dir": self.config.code_cache_dir,
                    },
                )
            except ZygoteError as exc:
                parent_end.close()
                raise WorkerCrashedError(str(exc)) from None
            finally:
                child_end.close()  # so the parent sees EOF when the child dies
            self._process, self._conn = process, parent_end
            self.spawned += 1
            deadline = time.monotonic() + START_TIMEOUT_S
            message = None
            while message is None and time.monotonic() < deadline:
                message = await self._receive(deadline=deadline)
            if message is None or message[0] != "ready":
                self._discard()
                raise WorkerCrashedError(f"the training process did not start within {START_TIMEOUT_S:g}s ({message!r})")
            log.info("training process %s ready", process.pid)

    async def close(self) -> None:
        """Stop the child (politely, then by force)."""
        if self._conn is not None and self._process is not None and self._process.is_alive():
            with contextlib.suppress(OSError, BrokenPipeError):
                self._conn.send(None)
            await asyncio.to_thread(self._process.join, 2.0)
        self._discard()
        if self._zygote is not None:
            await asyncio.to_thread(self._zygote.close)
            self._zygote = None

    def _discard(self) -> None:
        """Kill the child (if alive) and forget it; the next trial starts a fresh one."""
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(5.0)
            with contextlib.suppress(ValueError):
                self._process.close()
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._process, self._conn = None, None

    # -- control from other tasks -------------------------------------------------------------

    def cancel(self, trial_id: str, reason: str) -> bool:
        """Stop trial ``trial_id`` if it is the one running: its result becomes ``pruned``.

        The child stops at its next fold boundary; if it does not get there within
        ``cancel_grace_s`` it is killed. Returns whether that trial was running here.
        """
        running = self._current()
        if running is None or running.trial_id != trial_id or running.cancel_reason is not None:
            return False
        running.cancel_reason = reason
        self._cancel_reasons[running.index] = reason  # its outcome may come back after the child moved on
        running.cancel_deadline = time.monotonic() + self.config.cancel_grace_s
        self._signals.cancel(running.index)
        self._poke()
        return True

    def skip(self, trial_id: str) -> bool:
        """Do not train ``trial_id`` if it waits in the running batch (its experiment was cancelled).

        Its outcome is then ``None`` (nothing to report). Returns whether it was waiting: a trial
        that has started already is :meth:`cancel`'s business.
        """
        running = self._current()
        if running is None or trial_id not in self._batch:
            return False
        index = self._batch.index(trial_id)
        if index <= running.index:
            return False
        self._skipping.add(trial_id)  # a child killed for an earlier trial: its successor skips it too
        self._signals.skip(index)
        return True

    def stop_between_trials(self) -> None:
        """Start no further trial of a batch once the running one ends (the runner is stopping):
        :meth:`run_batch` then raises :class:`TrialAbortedError` for the rest."""
        self._stop_between = True
        self._signals.stop()

    def abort(self) -> bool:
        """Abandon the running trial now (shutdown): :meth:`run` raises :class:`TrialAbortedError`."""
        running = self._current()
        if running is None:
            return False
        running.aborted = True
        self._poke()
        return True

    def _poke(self) -> None:
        """Make the wait for the child's next message return now (a limit or a stop to act on)."""
        self._woken = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- running a trial ----------------------------------------------------------------------

    async def run(
        self,
        request: TrialRequested,
        *,
        on_fold: OnFold | None = None,
        timeout: float | None = None,
        folds_after_s: float = 0.0,
    ) -> TrialOutcome:
        """Train ``request`` in the child within ``timeout`` seconds and the memory limit.

        ``on_fold`` sees every stage that awaits a verdict, and the others once the trial has
        trained for ``folds_after_s`` (0: all of them): a fast trial's fold scores come with its
        outcome instead of a message each (a trial stopped from outside before then reports none).
        """
        outcomes: list[TrialOutcome | None] = []

        def _fold(_index: int, fold: int, value: float) -> Awaitable[bool | None] | bool | None:
            assert on_fold is not None
            return on_fold(fold, value)

        await self.run_batch(
            [request],
            on_fold=None if on_fold is None else _fold,
            on_outcome=lambda _index, outcome: outcomes.append(outcome),
            timeout=timeout,
            folds_after_s=folds_after_s,
        )
        outcome = outcomes[0]
        assert outcome is not None  # only a batch's later trials can be skipped
        return outcome

    async def run_batch(
        self,
        requests: Sequence[TrialRequested],
        *,
        on_outcome: Callable[[int, TrialOutcome | None], None],
        on_fold: BatchOnFold | None = None,
        timeout: float | None = None,
        folds_after_s: float = 0.0,
    ) -> None:
        """Train ``requests`` (one experiment's) one after the other, each within ``timeout`` and the memory limit.

        They cross the pipe in one message; ``on_outcome(i, outcome)`` is called as each one's
        outcome arrives (``None``: skipped, see :meth:`skip`), ``on_fold(i, fold, value)`` as
        :meth:`run`'s ``on_fold``. A trial over a limit is failed, its child killed, and the
        rest go on in a new child. :class:`WorkerCrashedError` and :class:`TrialAbortedError`
        carry ``index``, the trial they stopped at (the outcomes before it were delivered).
        """
        delivered: set[int] = set()

        def deliver(index: int, outcome: TrialOutcome | None) -> None:
            delivered.add(index)
            on_outcome(index, outcome)

        try:
            while len(delivered) < len(requests):
                pending = [i for i in range(len(requests)) if i not in delivered]
                await self._run_in_child(requests, pending, deliver, on_fold, timeout, folds_after_s)
        finally:
            self._skipping.clear()

    async def _run_in_child(
        self,
        requests: Sequence[TrialRequested],
        pending: list[int],
        deliver: Callable[[int, TrialOutcome | None], None],
        on_fold: BatchOnFold | None,
        timeout: float | None,
        folds_after_s: float,
    ) -> None:
        """Send the ``pending`` trials (those sharing the first one's spec) to the child and take their outcomes.

        Returns once they are all delivered, or after a trial broke a limit (its child is killed;
        the caller sends what has no outcome yet to a new child).
        """
        try:
            await self.start()
        except WorkerCrashedError as exc:
            raise _at(exc, pending[0]) from None
        conn = self._conn
        assert conn is not None
        spec = requests[pending[0]].spec
        sent = [pending[0]]  # the batch sent: indices into requests
        for i in pending[1:]:
            if requests[i].spec is not spec:  # the spec goes once per message: another spec, another message
                break
            sent.append(i)
        batch = [requests[i] for i in sent]
        self._signals.clear()
        if self._stop_between:
            self._signals.stop()
        self._batch = [r.trial_id for r in batch]
        self._batch_requests = batch
        self._cancel_reasons = {}
        for index, trial_id in enumerate(self._batch):
            if trial_id in self._skipping:
                self._signals.skip(index)
        self._woken = False
        now = time.monotonic()
        running = self._begin(batch[0], 0, now, now)
        done = 0
        try:
            # The spec goes once per child and experiment: a batch's trials share the same object.
            spec_sent = self._spec_sent
            spec_json = (
                None if spec_sent is not None and spec_sent[0] is conn and spec_sent[1] is spec else spec.model_dump_json()
            )
            conn.send(
                ([r.model_dump_json(exclude={"spec"}) for r in batch], spec_json, None if on_fold is None else folds_after_s)
            )
            self._spec_sent = (conn, spec)
            while True:
                running = self._current() or running
                limit = self._check_limits(running, timeout)
                if limit is not None:
                    self._discard()
                    deliver(sent[running.index], limit)
                    return  # the rest (and any outcome the child had not sent yet) in a new child
                message = await self._receive(deadline=time.monotonic() + MEMORY_POLL_S)
                if message is None:
                    continue
                kind = message[0]
                if kind == "outcomes":
                    for item in message[1]:
                        outcome = None
                        if item[0] == "done":
                            outcome = TrialOutcome(**dict(item[2]))
                            outcome.status = TrialStatus(outcome.status)
                            reason = self._cancel_reasons.get(item[1])
                            if reason is not None and outcome.status is TrialStatus.PRUNED:
                                outcome.error = reason
                        deliver(sent[item[1]], outcome)
                        done += 1
                    last = message[2]
                    if last is not None and last[0] == "stopped":
                        raise _at(
                            TrialAbortedError(f"trial {batch[last[1]].trial_id} handed back: the runner is stopping"),
                            sent[last[1]],
                        )
                    if last is not None:  # ("error", index, reason): the data could not be loaded
                        raise _at(WorkerCrashedError(str(last[2])), sent[last[1]])
                    if done == len(batch):
                        return
                elif kind == "fold":
                    index, fold, value = int(message[1]), int(message[2]), float(message[3])
                    running = self._current() or running  # the child wrote its progress before this message
                    running.stages.append(value)
                    stop: bool | None = None
                    try:
                        if on_fold is not None:
                            result = on_fold(sent[index], fold, value)
                            stop = await result if isinstance(result, Awaitable) else result
                    finally:
                        if awaits_verdict(batch[index], fold):  # the child is waiting: always answer
                            with contextlib.suppress(OSError, BrokenPipeError):
                                conn.send(("verdict", bool(stop)))
                elif kind == "eof":
                    code = self._exitcode()
                    self._discard()
                    running = self._current() or running
                    if running.aborted:
                        raise _at(
                            TrialAbortedError(f"trial {running.trial_id} abandoned: the runner is stopping"), sent[running.index]
                        )
                    raise _at(WorkerCrashedError(f"the training process died ({code})"), sent[running.index])
        except (TrialAbortedError, WorkerCrashedError) as exc:
            if not hasattr(exc, "index"):
                _at(exc, sent[running.index])
            raise
        finally:
            self._running = None
            self._batch, self._batch_requests = [], []
            self._signals.clear()

    def _begin(self, request: TrialRequested, index: int, started: float, memory_sampled_at: float) -> _Running:
        """Make ``request`` (trial ``index`` of the child's batch, started at ``started``) the running trial."""
        running = _Running(
            request.trial_id,
            index=index,
            started=started,
            rungs=request.spec.search.resource is not None,
            steps=request.spec.model.trainer is not None,
            memory_limit_mb=trial_memory_mb(request, self.config.memory_limit_mb),
            memory_sampled_at=memory_sampled_at,
        )
        self._running = running
        return running

    def _check_limits(self, running: _Running, timeout: float | None) -> TrialOutcome | None:
        """A final outcome if the running trial hit a limit (the caller kills the child), else ``None``."""
        now = time.monotonic()
        started = running.started
        deadline = started + timeout if timeout is not None else None
        elapsed = now - started
        if running.aborted:
            self._discard()
            raise TrialAbortedError(f"trial {running.trial_id} abandoned: the runner is stopping")
        if running.cancel_reason is not None and running.cancel_deadline is not None and now >= running.cancel_deadline:
            return TrialOutcome(
                status=TrialStatus.PRUNED, duration_s=elapsed, error=running.cancel_reason, **self._so_far(running)
            )
        if deadline is not None and now >= deadline:
            return TrialOutcome(
                status=TrialStatus.FAILED,
                duration_s=elapsed,
                **{**self._so_far(running), "score": None},
                error=f"trial exceeded its time limit of {deadline - started:g}s (budget.trial_timeout); stopped after {elapsed:.1f}s",
            )
        limit = running.memory_limit_mb
        # Sampling walks /proc for the child's descendants: at most once per MEMORY_POLL_S (it cost
        # half the runner's CPU when done on every message of a fast trial).
        if (
            limit is not None
            and now - running.memory_sampled_at >= MEMORY_POLL_S
            and self._process is not None
            and self._process.pid is not None
        ):
            running.memory_sampled_at = now
            try:
                rss_mb = _tree_memory_mb(self._process.pid)
            except psutil.Error:
                return None  # the child is gone: the pipe's EOF reports it
            if rss_mb > limit:
                return TrialOutcome(
                    status=TrialStatus.FAILED,
                    duration_s=elapsed,
                    **{**self._so_far(running), "score": None},
                    error=f"trial used {rss_mb:.0f} MiB of memory, over the runner's limit of {limit} MiB "
                    "(TWEAKLINE_TRIAL_MEMORY_MB)"
                    if limit == self.config.memory_limit_mb
                    else f"trial used {rss_mb:.0f} MiB of memory, over the trial's limit of {limit} MiB "
                    "(spec.resources.memory_mb)",
                )
        return None

    def _so_far(self, running: _Running) -> dict[str, Any]:
        """Score and intermediate scores of a trial stopped from outside (its stage scores so far)."""
        if running.steps:  # a trainer's reports: the last one is the trial's score so far
            return {"score": running.stages[-1] if running.stages else None, "fold_scores": list(running.stages)}
        if running.rungs:  # each stage is a rung's CV score: the last one is the trial's
            return {"score": running.stages[-1] if running.stages else None, "rung_scores": list(running.stages)}
        score = sum(running.stages) / len(running.stages) if running.stages else None
        return {"score": score, "fold_scores": list(running.stages)}

    def _exitcode(self) -> str:
        if self._process is None:
            return "unknown exit"
        self._process.join(1.0)
        code = self._process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    async def _receive(self, *, deadline: float) -> tuple[Any, ...] | None:
        """The child's next message, ``("eof",)`` if it died, or ``None`` at ``deadline`` or on a wake-up."""
        conn = self._conn
        if conn is None:
            return ("eof",)
        if not conn.poll():
            # One future, woken by the pipe, the deadline or _poke(): no task per message.
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()

            def ready() -> None:
                if not waiter.done():
                    waiter.set_result(None)

            fd = conn.fileno()
            loop.add_reader(fd, ready)
            timer = loop.call_later(max(0.0, deadline - time.monotonic()), ready)
            try:
                if not self._woken:
                    await waiter
            finally:
                loop.remove_reader(fd)
                timer.cancel()
                self._waiter = None
            self._woken = False
            if not conn.poll():
                return None
        try:
            return conn.recv()
        except (EOFError, OSError):
            return ("eof",)


# ------------------------------------------------------------------------ the zygote, forked early


def _fork_zygote(signals: SharedSignals) -> Zygote:
    """A zygote whose children run :func:`_child_main` with ``signals`` (and the arguments of each spawn)."""
    return Zygote(functools.partial(_child_main, signals=signals), preload=TRAINING_MODULES)


_early: tuple[SharedSignals, Zygote] | None = None


def prepare_early() -> None:
    """Fork this runner's training zygote now, before the service reads its settings or starts.

    The local stack's fork server calls it first in every runner it forks (``ForkServer.spawn``'s
    ``first``): the zygote then shares the fork server's pages as they are. Forked once the runner
    had read its settings, set up logging and telemetry and built its app, the zygote kept the
    runner's copies of the pages those wrote, and held about 5 MiB alone at peak
    (``bench.footprint --pages``, docs/benchmarks.md). It needs no settings: each spawn request
    brings the child's. If it cannot fork, the runner's app forks a zygote itself, as on Kubernetes.
    """
    global _early
    signals = SharedSignals()
    try:
        _early = (signals, _fork_zygote(signals))
    except OSError:
        _early = None


def take_early() -> tuple[SharedSignals, Zygote] | None:
    """The signals and zygote :func:`prepare_early` made, once (for :class:`TrialWorker`'s ``early``), if it ran."""
    global _early
    early, _early = _early, None
    return early

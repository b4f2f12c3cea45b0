"""One experiment's search as ask/tell on an Optuna study, rebuilt from recorded state at will.

No broker here: the handlers persist :class:`ExperimentState` and publish what this decides,
so the logic is testable without NATS and a restarted scheduler can rebuild every study.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
from optuna.trial import TrialState

from tweakline.proto.messages import (
    ExperimentCompleted,
    ExperimentState,
    ExperimentStatus,
    TrialCompleted,
    TrialRecord,
    TrialStatus,
)
from tweakline.scheduler.search import strategy_for
from tweakline.scheduler.space import distributions_of, suggest

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

_TELL_STATE = {TrialStatus.OK: TrialState.COMPLETE, TrialStatus.FAILED: TrialState.FAIL, TrialStatus.PRUNED: TrialState.PRUNED}


class ExperimentRun:
    """Decides which trials to issue next and when the experiment is over."""

    def __init__(self, state: ExperimentState):
        self.state = state
        spec = state.tweak.spec
        self.spec = spec
        self.strategy = strategy_for(spec.search)
        self.limit = self.strategy.trial_limit(spec.search, spec.budget.max_trials)
        direction = "maximize" if spec.objective.maximize else "minimize"
        self.study = optuna.create_study(direction=direction, sampler=self.strategy.sampler(spec.search))
        self._pending: dict[int, optuna.Trial] = {}
        self._replay()

    # -- rebuilding ---------------------------------------------------------------------------

    def _replay(self) -> None:
        """Feed recorded results to the study; re-open issued trials still in flight."""
        for number in sorted(self.state.results):
            self._add_finished(self.state.results[number])
        for number in sorted(self.in_flight()):
            params = self.state.issued[number]
            self.study.enqueue_trial(params, skip_if_exists=False)
            self._pending[number] = self.study.ask()

    def _add_finished(self, record: TrialRecord) -> None:
        dists = distributions_of(record.params, self.spec.search.space)
        if dists is None:
            log.warning("trial %s of %s does not fit the space; not replayed", record.number, self.state.experiment_id)
            return
        state = _TELL_STATE[record.status]
        value = record.score if state is TrialState.COMPLETE and record.score is not None else None
        if state is TrialState.COMPLETE and (value is None or not math.isfinite(value)):
            state, value = TrialState.FAIL, None
        self.study.add_trial(
            optuna.trial.create_trial(params=record.params, distributions=dists, value=value, state=state)
        )

    # -- decisions ----------------------------------------------------------------------------

    def in_flight(self) -> set[int]:
        """Trial numbers issued whose result has not been recorded."""
        return set(self.state.issued) - set(self.state.results)

    @property
    def deadline(self) -> datetime | None:
        """When the experiment stops issuing trials (``budget.timeout``)."""
        timeout = self.spec.budget.timeout
        return None if timeout is None else self.state.started_at + timedelta(seconds=timeout)

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the experiment's time budget is used up."""
        deadline = self.deadline
        return deadline is not None and (now or datetime.now(UTC)) >= deadline

    def next_trials(self, now: datetime | None = None) -> list[tuple[int, dict[str, Any]]]:
        """Ask for as many new trials as parallelism and budget allow; record them as issued."""
        if self.state.status is not ExperimentStatus.RUNNING or self.expired(now):
            return []
        issued: list[tuple[int, dict[str, Any]]] = []
        slots = self.spec.budget.parallelism - len(self.in_flight())
        while slots > 0 and len(self.state.issued) < self.limit:
            number = max(self.state.issued, default=-1) + 1
            trial = self.study.ask()
            params = suggest(trial, self.spec.search.space)
            self._pending[number] = trial
            self.state.issued[number] = params
            issued.append((number, params))
            slots -= 1
        return issued

    def record(self, result: TrialCompleted) -> bool:
        """Apply a trial's result once; ``False`` when it was already recorded (a redelivery)."""
        if result.number in self.state.results:
            return False
        record = TrialRecord.from_result(result)
        if record.status is TrialStatus.OK and (record.score is None or not math.isfinite(record.score)):
            record = record.model_copy(update={"status": TrialStatus.FAILED, "error": record.error or "no finite score"})
        self.state.results[result.number] = record
        self.state.issued.setdefault(result.number, result.params)
        trial = self._pending.pop(result.number, None)
        if trial is None:  # issued before a restart and not re-opened: add it as history
            self._add_finished(record)
            return True
        state = _TELL_STATE[record.status]
        try:
            self.study.tell(trial, record.score if state is TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        except RuntimeError as exc:
            # GridSampler.after_trial calls Study.stop() once the grid is used up, which raises outside
            # optimize(); Optuna stores the trial's result regardless (its tell() does that in a finally).
            if "Study.stop" not in str(exc):
                raise
        return True

    def finished(self, now: datetime | None = None) -> bool:
        """Whether every planned trial came back, or time is up and nothing is in flight."""
        if self.state.status is not ExperimentStatus.RUNNING:
            return True
        if len(self.state.results) >= self.limit:
            return True
        return self.expired(now) and not self.in_flight()

    def leaderboard(self) -> list[TrialRecord]:
        """Every recorded trial, best first (failed and pruned ones last)."""
        sign = -1.0 if self.spec.objective.maximize else 1.0
        ok = [r for r in self.state.results.values() if r.status is TrialStatus.OK and r.score is not None]
        rest = [r for r in self.state.results.values() if r not in ok]
        return sorted(ok, key=lambda r: (sign * (r.score or 0.0), r.number)) + sorted(rest, key=lambda r: r.number)

    def best(self) -> TrialRecord | None:
        """The best successful trial, if any."""
        board = self.leaderboard()
        return board[0] if board and board[0].status is TrialStatus.OK else None

    def complete(self, now: datetime | None = None, message: str | None = None) -> ExperimentCompleted:
        """Close the experiment and describe it for the evaluator."""
        best = self.best()
        self.state.status = ExperimentStatus.COMPLETED if best is not None else ExperimentStatus.FAILED
        self.state.finished_at = now or datetime.now(UTC)
        if message is None and best is None:
            errors = {r.error for r in self.state.results.values() if r.error}
            message = "no trial succeeded" + (f"; errors: {'; '.join(sorted(errors)[:3])}" if errors else "")
        self.state.message = message
        return ExperimentCompleted(
            experiment_id=self.state.experiment_id,
            tweak=self.state.tweak,
            source=self.state.source,
            status=self.state.status,
            trials=self.leaderboard(),
            best=best,
            started_at=self.state.started_at,
            finished_at=self.state.finished_at,
            message=message,
        )

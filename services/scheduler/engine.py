"""One experiment's search as ask/tell on an Optuna study, rebuilt from recorded state at will.

No broker here: the handlers persist :class:`ExperimentState` and publish what this decides,
so the logic is testable without NATS and a restarted scheduler can rebuild every study.
"""

from __future__ import annotations

import itertools
import logging
import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import optuna
from optuna.trial import TrialState

from tweakline.proto.messages import (
    COMPLETED_TRIALS_SHARE,
    ExperimentCompleted,
    ExperimentState,
    ExperimentStatus,
    ResultsSegment,
    SealedResults,
    TrialCompleted,
    TrialRecord,
    TrialStatus,
    results_key,
)
from tweakline.proto.tweakfile import LOWER_IS_BETTER
from tweakline.scheduler.snapshot import StateJson
from tweakline.search.algorithms import strategy_for
from tweakline.search.pruning import pruning_for
from tweakline.search.space import distributions_of, ordered, suggest

log = logging.getLogger(__name__)
optuna.logging.set_verbosity(optuna.logging.WARNING)

try:
    # Study.tell is this plus a deep copy of the finished trial to return, which nothing here reads
    # (a fifth of a result's engine time with the random sampler); Optuna's own optimize loop calls it.
    from optuna.study._tell import _tell_with_warning
except ImportError:  # pragma: no cover - a later Optuna moved it: the public path, slower
    _tell_with_warning = None


def _tell(study: optuna.Study, trial: optuna.Trial, values: list[float] | None, state: TrialState) -> None:
    """``study.tell(trial, values, state=state, skip_if_finished=True)`` without copying the trial it returns."""
    if _tell_with_warning is None:  # pragma: no cover
        study.tell(trial, values, state=state, skip_if_finished=True)
        return
    _tell_with_warning(study=study, trial=trial, value_or_values=values, state=state, skip_if_finished=True)


# How many of the latest results size a batch of trials (see ExperimentRun.batch_size).
BATCH_SAMPLE = 16
# The stored state's results (and their issued parameters) are sealed into a segment of their own
# once their JSON passes this size, or this share of the bus's message limit if that is smaller:
# a save then sends at most about this much, whatever the experiment's size (docs/benchmarks.md).
SEAL_BYTES = 64 * 1024
SEAL_SHARE = 0.125

_TELL_STATE = {TrialStatus.OK: TrialState.COMPLETE, TrialStatus.FAILED: TrialState.FAIL, TrialStatus.PRUNED: TrialState.PRUNED}


class ExperimentRun:
    """Decides which trials to issue next and when the experiment is over."""

    def __init__(self, state: ExperimentState, sealed: Sequence[SealedResults] = ()):
        """``state`` is the whole state (every result); ``sealed`` the segments its stored form names.

        The first results of ``state``, as many as ``sealed`` holds, are the sealed ones
        (:meth:`ExperimentState.with_segments` keeps that order).
        """
        if state.sealed:
            raise ValueError(f"experiment {state.experiment_id}: the run needs the whole state, not its stored form")
        self.state = state
        spec = state.tweak.spec
        self.spec = spec
        self.strategy = strategy_for(spec.search)
        self.limit = self.strategy.trial_limit(spec.search, spec.budget.max_trials)
        # What the stored state holds: the results (and issued parameters) not in a sealed segment.
        self.sealed = list(sealed)
        done = sum(segment.trials for segment in self.sealed)
        gone = set(itertools.islice(state.results, done))
        self._tail_results: dict[int, TrialRecord] = dict(itertools.islice(state.results.items(), done, None))
        self._tail_issued: dict[int, dict[str, Any]] = {n: p for n, p in state.issued.items() if n not in gone}
        self.pruning = pruning_for(spec)
        # With search.resource, trials report a CV score per rung; Optuna sees it at the rung's step.
        self.rungs = spec.search.resource.rungs() if spec.search.resource is not None else None
        # (metric, maximize) of every objective, primary first; several make a multi-objective study.
        self.objectives = [(spec.objective.metric, spec.objective.maximize)] + [
            (o.metric, o.maximize) for o in spec.objective.secondary
        ]
        self._warm = [t for t in (self._frozen(r) for r in state.warm_trials) if t is not None]
        # Rebuilt after a restart or a handover (trials issued already): the sampler's random state
        # is not in the state, and a new sampler must not propose the first trials again.
        search = self.strategy.continued(spec.search, len(state.issued)) if state.issued else spec.search
        sampler = self.strategy.warm_sampler(search, self._warm) if self._warm else self.strategy.sampler(search)
        if state.issued:
            self.strategy.resume(sampler, len(state.issued))
        self.study = optuna.create_study(
            # Named after the experiment, not at random: Hyperband assigns brackets by a hash of
            # the study name and trial number, which must not change when a restart rebuilds it.
            study_name=state.experiment_id,
            directions=["maximize" if up else "minimize" for _, up in self.objectives],
            sampler=sampler,
            pruner=self.pruning.pruner(spec),
        )
        self._order = ordered(spec.search.space)  # the order parameters are suggested in, worked out once
        # A random search without a pruner draws its parameters without a study: it learns
        # nothing from earlier trials, and keeping them in Optuna was most of its engine's cost.
        self._draws = None if self.pruning.enabled else self.strategy.draws(search)
        self._queued: list[dict[str, Any]] = []  # with draws: warm-start re-runs still to issue
        self._json = StateJson()  # the state's JSON, each trial's entries serialised once
        self._top = max(state.issued, default=-1)  # the highest trial number issued (not a scan per round)
        self._pending: dict[int, optuna.Trial] = {}
        self._folds: dict[int, dict[int, float]] = {}  # in-flight trial -> fold index -> score
        self._reported: dict[int, set[int]] = {}  # in-flight trial -> steps reported to Optuna
        self._replay()

    # -- rebuilding ---------------------------------------------------------------------------

    def _replay(self) -> None:
        """Feed warm-start trials and recorded results to the study; re-open issued trials still in flight."""
        self.study.add_trials(self._warm)
        if not self.state.issued:  # a new experiment: its first trials re-check the best earlier configurations
            first = self.rerun_first()
            for params in first:
                if self._draws is not None:
                    self._queued.append(params)
                else:
                    self.study.enqueue_trial(params, skip_if_exists=False)
            if self.state.warm_start is not None:
                self.state.warm_start.rerun = len(first)
        if self._draws is not None:  # no study to rebuild: draws need no history
            return
        for number in sorted(self.state.results):
            self._add_finished(self.state.results[number])
        for number in sorted(self.in_flight()):
            params = self.state.issued[number]
            self.study.enqueue_trial(params, skip_if_exists=False)
            trial = self.study.ask()
            suggest(trial, self.spec.search.space, self._order)  # the enqueued values: the sampler sees a running trial's params
            self._pending[number] = trial

    def rerun_first(self) -> list[dict[str, Any]]:
        """The best distinct earlier configurations (``warm_start.rerun`` of them) to try first on this data.

        The lineage's winner is re-scored on this commit's data before the sampler explores, so a
        warm-started search is never worse than last time's best configuration; the sampler
        still learns from every earlier trial.
        """
        count = self.spec.search.warm_start.rerun
        if not count or not self.state.warm_trials:
            return []
        sign = -1.0 if self.spec.objective.maximize else 1.0
        done = [
            r for r in self.state.warm_trials if r.status is TrialStatus.OK and r.score is not None and math.isfinite(r.score)
        ]
        ranked = sorted(done, key=lambda r: (not self.feasible(r), sign * (r.score or 0.0)))
        chosen: list[dict[str, Any]] = []
        for record in ranked:
            if record.params not in chosen:
                chosen.append(dict(record.params))
            if len(chosen) >= min(count, self.limit):
                break
        return chosen

    def _frozen(self, record: TrialRecord) -> optuna.trial.FrozenTrial | None:
        """A finished Optuna trial from a record (with per-fold intermediate values), if it fits the space."""
        dists = distributions_of(record.params, self.spec.search.space)
        if dists is None:
            return None
        state = _TELL_STATE[record.status]
        values = self._values(record) if state is TrialState.COMPLETE else None
        if state is TrialState.COMPLETE and values is None:
            state = TrialState.FAIL
        return optuna.trial.create_trial(
            params=record.params,
            distributions=dists,
            values=values,
            state=state,
            intermediate_values=self._intermediate(self._stages(record)),
            constraints=self.constraints(record) if state is not TrialState.FAIL else None,
        )

    def _stages(self, record: TrialRecord) -> dict[int, float]:
        """A finished trial's intermediate scores by stage: its rungs with search.resource, else its folds."""
        scores = record.rung_scores if self.rungs is not None else record.fold_scores
        return {i: v for i, v in enumerate(scores) if math.isfinite(v)}

    def _intermediate(self, stages: dict[int, float]) -> dict[int, float]:
        """Optuna's intermediate values (step -> value) from stage scores (stage index -> score)."""
        if self.rungs is not None:
            return {self.rungs[i].step: v for i, v in sorted(stages.items()) if 0 <= i < len(self.rungs)}
        if self.spec.model.trainer is not None:  # a trainer's reports (epochs): each value at its own step
            return {i + 1: v for i, v in sorted(stages.items())}
        return self.pruning.intermediate(stages)

    # -- objectives and constraints ----------------------------------------------------------

    def _values(self, record: TrialRecord) -> list[float] | None:
        """The objective values of a trial (primary first), or ``None`` if one is missing."""
        values = [record.score] + [record.metrics.get(metric) for metric, _ in self.objectives[1:]]
        if any(v is None or not math.isfinite(v) for v in values):
            return None
        return [float(v) for v in values if v is not None]

    def constraints(self, record: TrialRecord) -> dict[str, float] | None:
        """The gate's thresholds as Optuna constraints on CV metrics (<= 0 is met); ``None`` without thresholds.

        Samplers that support constraints (tpe, gp, nsga2) then steer away from trials that would
        fail the gate, instead of the gate only rejecting the final model.
        """
        thresholds = self.spec.gate.thresholds
        if not thresholds:
            return None
        result: dict[str, float] = {}
        for metric, threshold in thresholds.items():
            value = record.metrics.get(metric)
            if value is None or not math.isfinite(value):
                result[metric] = 1.0  # undefined: count as violated
            elif metric in LOWER_IS_BETTER:
                result[metric] = float(value - threshold)
            else:
                result[metric] = float(threshold - value)
        return result

    def feasible(self, record: TrialRecord) -> bool:
        """Whether a trial's CV metrics meet every gate threshold."""
        return all(v <= 0 for v in (self.constraints(record) or {}).values())

    def _add_finished(self, record: TrialRecord) -> None:
        trial = self._frozen(record)
        if trial is None:
            log.warning("trial %s of %s does not fit the space; not replayed", record.number, self.state.experiment_id)
            return
        self.study.add_trial(trial)

    def stored(self) -> ExperimentState:
        """The state as stored: the results not sealed, and the segments naming the rest."""
        return self.state.model_copy(update={"results": self._tail_results, "issued": self._tail_issued, "sealed": self.sealed})

    def dump(self, stored: ExperimentState | None = None) -> bytes:
        """The stored state's JSON, exactly ``stored().model_dump_json()``: only what changed since the last dump is serialised.

        ``stored``: this run's :meth:`stored` when the caller made it already (one copy per save).
        """
        return self._json.dump(self.stored() if stored is None else stored)

    def seal(self, max_payload: int) -> tuple[SealedResults, ResultsSegment] | None:
        """A segment of the recorded results not sealed yet, once their JSON (at the last dump) passed
        :data:`SEAL_BYTES` (or :data:`SEAL_SHARE` of ``max_payload``); ``None`` before.

        Nothing changes until :meth:`sealed_as` says the segment was written (under ``ref.key``).
        """
        if not self._tail_results or self._json.size("results") < min(SEAL_BYTES, SEAL_SHARE * max_payload):
            return None
        results = dict(self._tail_results)
        segment = ResultsSegment(
            experiment_id=self.state.experiment_id,
            issued={n: self._tail_issued[n] for n in results if n in self._tail_issued},
            results=results,
        )
        scores = [r.score for r in results.values() if r.status is TrialStatus.OK and r.score is not None]
        best = (max(scores) if self.spec.objective.maximize else min(scores)) if scores else None
        key = results_key(self.state.experiment_id, len(self.sealed), uuid.uuid4().hex[:12])
        return SealedResults(key=key, trials=len(results), best_score=best), segment

    def sealed_as(self, ref: SealedResults, segment: ResultsSegment) -> None:
        """``segment`` is stored under ``ref.key``: the stored state names it instead of holding its results."""
        self.sealed.append(ref)
        self._tail_results = {n: r for n, r in self._tail_results.items() if n not in segment.results}
        self._tail_issued = {n: p for n, p in self._tail_issued.items() if n not in segment.results}

    # -- decisions ----------------------------------------------------------------------------

    def in_flight(self) -> set[int]:
        """Trial numbers issued whose result has not been recorded."""
        return set(self._tail_issued) - set(self._tail_results)  # a sealed trial has its result

    @property
    def deadline(self) -> datetime | None:
        """When the experiment stops issuing trials (``budget.timeout``)."""
        timeout = self.spec.budget.timeout
        return None if timeout is None else self.state.started_at + timedelta(seconds=timeout)

    def expired(self, now: datetime | None = None) -> bool:
        """Whether the experiment's time budget is used up."""
        deadline = self.deadline
        return deadline is not None and (now or datetime.now(UTC)) >= deadline

    def next_trials(self, now: datetime | None = None, batch: int = 1) -> list[tuple[int, dict[str, Any]]]:
        """Ask for as many new trials as parallelism and budget allow; record them as issued.

        With ``batch`` > 1, whole batches only (unless the budget's last trials are fewer): freed
        slots wait for a full batch, so batches grow to their size instead of staying as small as
        the results that happened to come back together. Runners still have work queued then:
        a batch is at most a quarter of the parallelism (:meth:`batch_size`).
        """
        if self.state.status is not ExperimentStatus.RUNNING or self.expired(now):
            return []
        issued: list[tuple[int, dict[str, Any]]] = []
        # Trials in flight, counted without building sets: record() keeps results a subset of issued.
        slots = self.spec.budget.parallelism - (len(self.state.issued) - len(self.state.results))
        if batch > 1 and self.limit - len(self.state.issued) > slots:
            slots -= slots % batch
        number = self._top
        while slots > 0 and len(self.state.issued) < self.limit:
            number += 1
            if self._draws is not None:
                params = self._draws(self.spec.search.space, self._order, self._queued.pop(0) if self._queued else None)
            else:
                trial = self.study.ask()
                params = suggest(trial, self.spec.search.space, self._order)
                self._pending[number] = trial
            self.state.issued[number] = params
            self._tail_issued[number] = params
            self._top = number
            issued.append((number, params))
            slots -= 1
        return issued

    def batch_size(self, batch_max: int, target_s: float) -> int:
        """How many trials one request should carry (``TWEAKLINE_TRIAL_BATCH_MAX``, ``_TARGET_S``).

        As many as train in ``target_s`` by the measured durations of the latest results, so only
        fast trials share a request; at most a quarter of ``budget.parallelism``, so several
        requests are out at once and every runner has the next one queued; 1 until a result has
        come back (the first trials' cost is unknown).
        """
        cap = min(batch_max, self.spec.budget.parallelism // 4)
        if cap <= 1 or not self.state.results:
            return 1
        recent = list(itertools.islice(reversed(self.state.results.values()), BATCH_SAMPLE))  # not a copy of all
        mean = sum(r.duration_s for r in recent) / len(recent)
        return max(1, min(cap, math.floor(target_s / max(mean, 1e-4) + 1e-9)))  # 0.25 / 0.05 is 5, not 4.99

    def report(self, number: int, fold: int, value: float) -> bool | None:
        """A stage's score of an in-flight trial (a fold, or a rung with search.resource): whether the
        pruner stops it (``None``: not in flight here)."""
        if self._draws is not None:  # no pruner: in flight here or not
            in_flight = number in self._tail_issued and number not in self.state.results
            return False if in_flight and math.isfinite(value) else None
        trial = self._pending.get(number)
        if trial is None or number in self.state.results or not math.isfinite(value):
            return None
        folds = self._folds.setdefault(number, {})
        if not self.pruning.enabled:
            return False
        if fold not in folds:  # a repeated report (a redelivered trial) gets the same answer
            folds[fold] = value
            self._report(number, trial, folds)
        return bool(trial.should_prune())

    def _report(self, number: int, trial: optuna.Trial, folds: dict[int, float]) -> None:
        reported = self._reported.setdefault(number, set())
        for step, value in self._intermediate(folds).items():
            if step not in reported:
                trial.report(value, step)
                reported.add(step)

    def record(self, result: TrialCompleted) -> bool:
        """Apply a trial's result once; ``False`` when it was already recorded (a redelivery)."""
        if result.number in self.state.results:
            return False
        record = TrialRecord.from_result(result)
        if record.status is TrialStatus.OK and (record.score is None or not math.isfinite(record.score)):
            record = record.model_copy(update={"status": TrialStatus.FAILED, "error": record.error or "no finite score"})
        self.state.results[result.number] = record
        self._tail_results[result.number] = record
        self._tail_issued[result.number] = self.state.issued.setdefault(result.number, result.params)
        self._top = max(self._top, result.number)
        if self._draws is not None:  # no study to tell
            return True
        trial = self._pending.pop(result.number, None)
        self._folds.pop(result.number, None)
        if trial is None:  # issued before a restart and not re-opened: add it as history
            self._add_finished(record)
            return True
        state = _TELL_STATE[record.status]
        values = self._values(record) if state is TrialState.COMPLETE else None
        if state is TrialState.COMPLETE and values is None:  # a secondary metric undefined
            state = TrialState.FAIL
        if state is not TrialState.FAIL:  # the pruners compare trials on every fold the runner finished
            if len(self.objectives) == 1 and self.pruning.enabled:  # no pruner reads them otherwise
                self._report(result.number, trial, self._stages(record))
            for metric, violation in (self.constraints(record) or {}).items():
                trial.set_constraint(metric, violation)
        self._reported.pop(result.number, None)
        _tell(self.study, trial, values, state)
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
        ok, rest = [], []
        for r in self.state.results.values():  # one pass: `r not in ok` was quadratic (pydantic __eq__)
            (ok if r.status is TrialStatus.OK and r.score is not None else rest).append(r)
        return sorted(ok, key=lambda r: (sign * (r.score or 0.0), r.number)) + sorted(rest, key=lambda r: r.number)

    def best(self) -> TrialRecord | None:
        """The best successful trial by the primary metric, preferring those that meet the gate's thresholds."""
        board = [r for r in self.leaderboard() if r.status is TrialStatus.OK]
        feasible = [r for r in board if self.feasible(r)]
        return (feasible or board or [None])[0]

    def pareto_front(self) -> list[int]:
        """Numbers of this experiment's successful trials that no other trial beats on every objective."""
        if len(self.objectives) == 1:
            return []
        signs = [1.0 if up else -1.0 for _, up in self.objectives]
        points = {}
        for r in self.state.results.values():
            values = self._values(r) if r.status is TrialStatus.OK else None
            if values is not None:
                points[r.number] = [s * v for s, v in zip(signs, values)]

        def dominated(a: list[float]) -> bool:
            return any(all(x >= y for x, y in zip(b, a)) and any(x > y for x, y in zip(b, a)) for b in points.values())

        return sorted(n for n, p in points.items() if not dominated(p))

    def complete(
        self, now: datetime | None = None, message: str | None = None, max_payload: int = 1_048_576
    ) -> ExperimentCompleted:
        """Close the experiment and describe it for the evaluator, in one message of at most
        about ``max_payload`` bytes (the bus's limit: its trials are the leaderboard's first ones
        when all would not fit)."""
        best = self.best()
        ok = [r for r in self.state.results.values() if r.status is TrialStatus.OK]
        self.state.status = ExperimentStatus.COMPLETED if best is not None else ExperimentStatus.FAILED
        self.state.finished_at = now or datetime.now(UTC)
        if message is None and best is None:
            errors = {r.error for r in self.state.results.values() if r.error}
            message = "no trial succeeded" + (f"; errors: {'; '.join(sorted(errors)[:3])}" if errors else "")
        self.state.message = message
        board = self.leaderboard()
        front = self.pareto_front()
        return ExperimentCompleted(
            experiment_id=self.state.experiment_id,
            tweak=self.state.tweak,
            source=self.state.source,
            status=self.state.status,
            trials=fitting(board, int(max_payload * COMPLETED_TRIALS_SHARE), first=[best.number] if best else [], then=front),
            trials_total=len(board),
            trials_ok=len(ok),
            best=best,
            started_at=self.state.started_at,
            finished_at=self.state.finished_at,
            message=message,
            warm_start=self.state.warm_start,
            pareto_front=front,
            feasible=sum(self.feasible(r) for r in ok) if self.spec.gate.thresholds else None,
        )


def fitting(board: list[TrialRecord], budget: int, *, first: Sequence[int] = (), then: Sequence[int] = ()) -> list[TrialRecord]:
    """The records of ``board`` (in its order) that one message carries: all of them if they fit in
    ``budget`` bytes of JSON, else the trials numbered ``first`` (always), ``then`` and the rest of
    the board, in that priority, as long as they fit."""
    by_number = {r.number: r for r in board}
    chosen: set[int] = set()
    size = 0
    for number in itertools.chain(first, then, (r.number for r in board)):
        record = by_number.get(number)
        if record is None or number in chosen:
            continue
        size += len(record.model_dump_json()) + 1
        if size > budget and number not in first:
            break
        chosen.add(number)
    if len(chosen) == len(board):
        return board
    return [r for r in board if r.number in chosen]

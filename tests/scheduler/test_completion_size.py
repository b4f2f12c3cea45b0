"""An experiment's completion is one message, and its stored state one KV value, however many trials it ran.

An experiment may run 100,000 trials; its ``ExperimentCompleted`` is read by services that accept
1 MiB by default. It lists the leaderboard's first trials (the best and the Pareto front first)
when all would not fit, and counts them all. Its stored state seals results into segments of
their own as they accumulate, so no save outgrows the bus's limit.
"""

from __future__ import annotations

import random

from tests.factories import make_tweak
from tweakline.proto.messages import (
    COMPLETED_TRIALS_SHARE,
    ExperimentState,
    ResultsSegment,
    TrialCompleted,
    TrialRecord,
    TrialStatus,
)
from tweakline.scheduler.engine import ExperimentRun, fitting

LIMIT = 1_048_576


def _finished(trials: int) -> ExperimentRun:
    """A random search of ``trials`` trials, every one issued and told a result (a few failed)."""
    tweak = make_tweak(
        "big-search",
        search={"algorithm": "random", "seed": 0, "space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
        budget={"max_trials": trials, "parallelism": 1000},
    )
    run = ExperimentRun(ExperimentState(experiment_id="big-search-1", tweak=tweak))
    scores = random.Random(0)
    while issued := run.next_trials():
        for number, params in issued:
            _tell(run, number, params, scores)
    return run


def _tell(run: ExperimentRun, number: int, params: dict, scores: random.Random) -> None:
    failed = number % 50 == 7
    score = None if failed else scores.random()
    run.record(
        TrialCompleted(
            experiment_id="big-search-1",
            trial_id=f"big-search-1.{number}",
            number=number,
            status=TrialStatus.FAILED if failed else TrialStatus.OK,
            params=params,
            score=score,
            metrics={} if failed else {"accuracy": score, "f1_macro": score, "precision_macro": score, "recall_macro": score},
            duration_s=0.001,
            runner="vm-1-trial-runner-0",
            error="ValueError: boom" if failed else None,
            fold_scores=[] if failed else [score, score],
        )
    )


def test_a_large_experiment_lists_its_best_trials_within_the_message_limit_and_counts_them_all() -> None:
    run = _finished(5000)
    board = run.leaderboard()
    assert len(run.state.results) == 5000
    assert sum(len(r.model_dump_json()) for r in board) > LIMIT, "all records would not fit: the case under test"

    completed = run.complete(max_payload=LIMIT)

    assert len(completed.model_dump_json()) < LIMIT
    assert sum(len(r.model_dump_json()) + 1 for r in completed.trials) <= COMPLETED_TRIALS_SHARE * LIMIT
    assert completed.total == 5000 and completed.ok == 4900
    assert 0 < len(completed.trials) < 5000
    assert completed.trials == board[: len(completed.trials)], "a prefix of the leaderboard, best first"
    assert completed.best is not None and completed.trials[0] == completed.best
    # The whole leaderboard stays in the state.
    assert len(run.state.results) == 5000


def test_a_small_experiment_lists_every_trial() -> None:
    run = _finished(40)
    completed = run.complete(max_payload=LIMIT)
    assert completed.trials == run.leaderboard()
    assert completed.total == 40 and completed.ok == len([r for r in completed.trials if r.status is TrialStatus.OK])


def _record(number: int, score: float) -> TrialRecord:
    return TrialRecord(number=number, params={"C": number}, status=TrialStatus.OK, score=score)


def test_the_best_and_the_pareto_front_come_first_and_the_rest_in_leaderboard_order() -> None:
    board = [_record(n, 1 - n / 100) for n in range(100)]
    # Room for 5 records: the best (always), two of the front far down the board, then the board's first.
    room = sum(len(board[n].model_dump_json()) + 1 for n in (3, 90, 95, 0, 1))
    chosen = fitting(board, room, first=[3], then=[90, 95])
    assert [r.number for r in chosen] == [0, 1, 3, 90, 95]
    assert fitting(board, sum(len(r.model_dump_json()) + 1 for r in board)) == board
    assert [r.number for r in fitting(board, 1, first=[42])] == [42], "the best even when it alone is over"


def test_an_experiment_completed_from_an_older_scheduler_counts_its_listed_trials() -> None:
    run = _finished(10)
    legacy = run.complete(max_payload=LIMIT).model_copy(update={"trials_total": None, "trials_ok": None})
    assert legacy.total == 10 and legacy.ok == sum(r.status is TrialStatus.OK for r in legacy.trials)


def test_a_large_experiment_seals_its_results_into_segments_and_every_save_stays_small() -> None:
    # The stored state is one KV value, under the server's max_payload: 2,000 trials of ~400 bytes
    # do not fit in 100 kB, so results move into segments of their own as they accumulate.
    limit = 100_000
    tweak = make_tweak(
        "full-state",
        search={"algorithm": "random", "seed": 0, "space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
        budget={"max_trials": 2000, "parallelism": 64},
    )
    run = ExperimentRun(ExperimentState(experiment_id="full-state-1", tweak=tweak))
    segments: dict[str, ResultsSegment] = {}
    scores = random.Random(0)

    def save() -> bytes:  # as the scheduler's _save: the segment first, then the state naming it
        sealing = run.seal(limit)
        if sealing is not None:
            ref, segment = sealing
            assert ref.key not in segments and len(segment.model_dump_json()) < limit
            segments[ref.key] = segment
            run.sealed_as(ref, segment)
        data = run.dump()
        assert len(data) < limit, f"a save over the limit after {len(run.state.results)} results"
        return data

    while issued := run.next_trials():
        save()
        for number, params in issued:
            _tell(run, number, params, scores)
        save()
    completed = run.complete(max_payload=limit)
    stored = ExperimentState.model_validate_json(save())

    assert completed.total == 2000 and completed.message is None, "every planned trial ran"
    assert len(stored.sealed) > 5
    assert stored.trials_recorded == 2000 and len(stored.results) < 2000
    assert stored.best_score() == completed.best.score
    whole = stored.with_segments([segments[ref.key] for ref in stored.sealed])
    assert list(whole.results.items()) == list(run.state.results.items()), "every result, in the order recorded"
    assert whole.issued == run.state.issued and not whole.sealed
    # A scheduler that resumes from the stored form saves exactly what this one would.
    resumed = ExperimentRun(whole, stored.sealed)
    assert resumed.dump() == run.dump()
    assert resumed.in_flight() == run.in_flight() == set()


def test_a_small_experiment_keeps_its_results_in_its_state() -> None:
    run = _finished(100)
    run.dump()
    assert run.seal(8 * 2**20) is None
    assert run.stored().results == run.state.results and not run.stored().sealed

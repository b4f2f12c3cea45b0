"""An experiment's completion is one message, however many trials it ran.

An experiment may run 100,000 trials; its ``ExperimentCompleted`` is read by services that accept
1 MiB by default. It lists the leaderboard's first trials (the best and the Pareto front first)
when all would not fit, and counts them all.
"""

from __future__ import annotations

import random

from tests.factories import make_tweak
from tweakline.proto.messages import COMPLETED_TRIALS_SHARE, ExperimentState, TrialCompleted, TrialRecord, TrialStatus
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


def test_the_budget_is_lowered_to_what_the_state_can_hold_and_the_completion_says_why() -> None:
    # The state is one KV value, under the server's max_payload. 2,000 trials of ~400 bytes do not
    # fit in 100 kB: the scheduler stops issuing in time, and says so.
    limit = 100_000
    tweak = make_tweak(
        "full-state",
        search={"algorithm": "random", "seed": 0, "space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
        budget={"max_trials": 2000, "parallelism": 64},
    )
    run = ExperimentRun(ExperimentState(experiment_id="full-state-1", tweak=tweak))
    scores = random.Random(0)
    rounds = 0
    while not run.finished():
        rounds += 1
        assert rounds < 100, "the experiment never finished"
        run.fit_budget(limit)  # as the scheduler does before each round
        issued = run.next_trials()
        run.dump()  # its save
        for number, params in issued:
            _tell(run, number, params, scores)
        run.dump()  # the results' save
        assert run.state_bytes < limit, f"a save over the limit after {len(run.state.results)} results"

    assert 100 < len(run.state.results) < 2000
    assert run.limit == len(run.state.results) == len(run.state.issued)
    completed = run.complete(max_payload=limit)
    assert completed.total == len(run.state.results)
    assert completed.message is not None and f"stopped after {run.limit} of 2000 trials" in completed.message
    assert "max_payload" in completed.message
    assert len(run.dump()) < limit, "the final state, completed, still fits"


def test_a_state_far_from_the_limit_keeps_its_budget() -> None:
    run = _finished(300)
    run.dump()
    assert run.fit_budget(8 * 2**20) is False and run.limit == 300 and run.budget_note is None

"""The leaderboard: successful trials best first, then failed and pruned ones by number."""

from __future__ import annotations

from tweakline.proto.messages import ExperimentState, TrialCompleted, TrialStatus
from tweakline.proto.tweakfile import TweakFile
from tweakline.scheduler.engine import ExperimentRun


def _run(direction: str) -> ExperimentRun:
    tweak = TweakFile.model_validate(
        {
            "apiVersion": "tweakline/v1",
            "kind": "Experiment",
            "metadata": {"name": "board"},
            "spec": {
                "dataset": {"source": "sklearn:diabetes"},
                "model": {"estimator": "sklearn.linear_model.Ridge"},
                "search": {"algorithm": "random", "seed": 0, "space": {"alpha": {"type": "float", "low": 0.1, "high": 10}}},
                "objective": {"metric": "rmse" if direction == "minimize" else "r2", "cv": 2},
                "budget": {"max_trials": 6, "parallelism": 6},
            },
        }
    )
    return ExperimentRun(ExperimentState(experiment_id="board", tweak=tweak))


def _feed(run: ExperimentRun, outcomes: dict[int, tuple[TrialStatus, float | None]]) -> None:
    issued = dict(run.next_trials())
    for number, (status, score) in outcomes.items():
        run.record(
            TrialCompleted(
                experiment_id="board",
                trial_id=f"board.{number}",
                number=number,
                status=status,
                params=issued[number],
                score=score,
            )
        )


OUTCOMES = {
    0: (TrialStatus.FAILED, None),
    1: (TrialStatus.OK, 0.5),
    2: (TrialStatus.PRUNED, 0.9),
    3: (TrialStatus.OK, 0.7),
    4: (TrialStatus.OK, 0.5),
    5: (TrialStatus.FAILED, None),
}


def test_maximize_orders_best_first_then_the_rest_by_number() -> None:
    run = _run("maximize")
    _feed(run, OUTCOMES)
    assert [r.number for r in run.leaderboard()] == [3, 1, 4, 0, 2, 5]
    assert run.best().number == 3


def test_minimize_orders_lowest_first() -> None:
    run = _run("minimize")
    _feed(run, OUTCOMES)
    assert [r.number for r in run.leaderboard()] == [1, 4, 3, 0, 2, 5]
    assert run.best().number == 1

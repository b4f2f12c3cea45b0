"""The ask/tell engine without a bus: plans, redeliveries and the grid's end."""

from __future__ import annotations

from tests.factories import make_tweak
from tweakline.proto.messages import ExperimentState, TrialCompleted, TrialStatus
from tweakline.scheduler.engine import ExperimentRun
from tweakline.validation.loading import parse_tweak_file

GRID = """
apiVersion: tweakline/v1
kind: Experiment
metadata: {name: grid}
spec:
  dataset: {source: "sklearn:iris"}
  model: {estimator: sklearn.neighbors.KNeighborsClassifier}
  search:
    algorithm: grid
    space:
      n_neighbors: {type: int, low: 1, high: 5, step: 2}
      weights: {type: categorical, choices: [uniform, distance]}
  objective: {metric: accuracy, cv: 3}
  budget: {max_trials: 50, parallelism: 4}
"""


def _result(exp_id: str, number: int, params: dict, score: float) -> TrialCompleted:
    return TrialCompleted(
        experiment_id=exp_id,
        trial_id=f"{exp_id}.{number}",
        number=number,
        status=TrialStatus.OK,
        params=params,
        score=score,
        metrics={"accuracy": score},
        duration_s=0.1,
        cpu_s=0.1,
        runner="r",
        attempt=1,
    )


def test_grid_runs_every_point_once_and_finishes_whatever_the_result_order() -> None:
    run = ExperimentRun(ExperimentState(experiment_id="grid-1", tweak=parse_tweak_file(GRID, source="t")))
    seen: dict[int, dict] = {}
    while not run.finished():
        issued = run.next_trials()
        seen.update(issued)
        # results come back newest first: the last grid point is told before earlier ones
        for number, params in reversed(issued):
            assert run.record(_result("grid-1", number, params, 0.5 + number / 100))
        if not issued:
            break
    points = {(p["n_neighbors"], p["weights"]) for p in seen.values()}
    assert len(seen) == 6 and len(points) == 6
    assert run.finished()
    # a redelivered result changes nothing
    number, params = next(iter(seen.items()))
    assert run.record(_result("grid-1", number, params, 0.99)) is False


def _fold_result(exp_id: str, number: int, params: dict) -> TrialCompleted:
    result = _result(exp_id, number, params, 0.5 + number / 100)
    return result.model_copy(update={"fold_scores": [0.4, 0.6]})


def test_fold_scores_reach_optuna_only_when_a_pruner_reads_them() -> None:
    """Telling Optuna every fold costs a report per fold per trial; only a pruner compares them."""
    for pruner, expected in (("none", {}), ("median", {1: 0.4, 2: 0.5})):
        tweak = make_tweak(search={"pruner": pruner, "space": {"C": {"type": "float", "low": 0.1, "high": 10}}})
        run = ExperimentRun(ExperimentState(experiment_id=f"folds-{pruner}", tweak=tweak))
        for number, params in run.next_trials():
            assert run.record(_fold_result(f"folds-{pruner}", number, params))
        told = run.study.get_trials(deepcopy=False)
        assert told and all(t.intermediate_values == expected for t in told), pruner


def test_trial_numbers_continue_after_the_highest_issued_one() -> None:
    """Numbers are never reused, also when a restart rebuilds the run from a state with gaps."""
    tweak = make_tweak(budget={"max_trials": 20, "parallelism": 3})
    state = ExperimentState(experiment_id="numbers-1", tweak=tweak, issued={0: {"C": 1.0}, 7: {"C": 2.0}})
    run = ExperimentRun(state)
    assert [n for n, _ in run.next_trials()] == [8]  # two in flight already: one slot
    assert run.record(_result("numbers-1", 9, {"C": 3.0}, 0.5))  # a result for a number never issued here
    assert run.record(_result("numbers-1", 0, {"C": 1.0}, 0.5))
    assert [n for n, _ in run.next_trials()] == [10]  # 7 and 8 still in flight: one slot, after 9

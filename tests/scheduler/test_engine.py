"""The ask/tell engine without a bus: plans, redeliveries and the grid's end."""

from __future__ import annotations

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

"""The search engine without a bus: algorithms, conditional parameters, parallel asks, pruning, warm start.

Scores come from a real, cheap function of the parameters (no mocks of Optuna); whole-stack
runs are in ``test_search_stack.py``.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import yaml

from tests.factories import make_tweak
from tweakline.proto.messages import (
    ExperimentState,
    LineageHistory,
    LineageTrial,
    TrialCompleted,
    TrialRecord,
    TrialStatus,
    trial_id,
)
from tweakline.proto.tweakfile import TweakFile
from tweakline.scheduler.engine import ExperimentRun
from tweakline.scheduler.lineage import context_of, lineage_of, select
from tweakline.search.algorithms import STRATEGIES

CONDITIONAL_SPACE = {
    "C": {"type": "float", "low": 0.01, "high": 100.0, "log": True},
    "kernel": {"type": "categorical", "choices": ["rbf", "poly"]},
    "degree": {"type": "int", "low": 2, "high": 4, "when": {"kernel": "poly"}},
    "coef0": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "when": {"kernel": ["poly"]}},
}
GRID_SPACE = {
    "C": {"type": "float", "low": 1.0, "high": 3.0, "step": 1.0},
    "kernel": {"type": "categorical", "choices": ["rbf", "poly"]},
}


def skip_unavailable(algorithm: str) -> None:
    """Every algorithm's dependencies come with the test extra (gp: PyTorch): none may be missing."""
    why = STRATEGIES[algorithm]().unavailable()
    assert not why, why


def tweak(space: dict[str, Any], **search: Any) -> TweakFile:
    budget = search.pop("budget", {"max_trials": 12, "parallelism": 3})
    cv = search.pop("cv", 3)
    objective = search.pop("objective", {"metric": "accuracy", "cv": cv})
    gate = search.pop("gate", {})
    dataset = search.pop("dataset", {"source": "sklearn:iris"})
    model = search.pop("model", {"estimator": "sklearn.svm.SVC"})
    return make_tweak(
        "svc",
        dataset=dataset,
        model=model,
        search={"space": space, "seed": search.pop("seed", 3), **search},
        objective=objective,
        budget=budget,
        gate=gate,
    )


def score_of(params: dict[str, Any]) -> float:
    """A smooth objective with its optimum at C=10, kernel poly, degree 3."""
    value = 1.0 - 0.05 * abs(math.log10(params["C"]) - 1.0)
    if params.get("kernel") == "poly":
        value += 0.02 - 0.01 * abs(params.get("degree", 2) - 3)
    return value


def result(
    run: ExperimentRun,
    number: int,
    params: dict[str, Any],
    folds: list[float] | None = None,
    status: TrialStatus = TrialStatus.OK,
) -> TrialCompleted:
    folds = folds if folds is not None else [score_of(params)] * run.spec.objective.cv
    return TrialCompleted(
        experiment_id=run.state.experiment_id,
        trial_id=trial_id(run.state.experiment_id, number),
        number=number,
        status=status,
        params=params,
        score=sum(folds) / len(folds),
        fold_scores=folds,
    )


def drive(run: ExperimentRun) -> list[dict[str, Any]]:
    """Run the experiment as the scheduler does: keep `parallelism` in flight, finish the oldest first."""
    seen: list[dict[str, Any]] = []
    in_flight: list[tuple[int, dict[str, Any]]] = []
    while not run.finished():
        in_flight += run.next_trials()
        number, params = in_flight.pop(0)
        seen.append(params)
        run.record(result(run, number, params))
    return seen


@pytest.mark.parametrize("algorithm", sorted(set(STRATEGIES) - {"grid", "nsga2"}))
def test_conditional_parameters_are_sampled_only_when_active(algorithm: str) -> None:
    skip_unavailable(algorithm)
    run = ExperimentRun(ExperimentState(experiment_id="e1", tweak=tweak(CONDITIONAL_SPACE, algorithm=algorithm)))
    trials = drive(run)
    assert len(trials) == 12
    for params in trials:
        poly = params["kernel"] == "poly"
        assert ("degree" in params) is poly and ("coef0" in params) is poly, params
    assert {p["kernel"] for p in trials} == {"rbf", "poly"}  # both branches explored
    assert run.best() is not None


def test_grid_visits_every_point_once() -> None:
    run = ExperimentRun(ExperimentState(experiment_id="e1", tweak=tweak(GRID_SPACE, algorithm="grid")))
    trials = drive(run)
    assert run.limit == 6
    assert sorted((p["C"], p["kernel"]) for p in trials) == sorted((c, k) for c in (1.0, 2.0, 3.0) for k in ("rbf", "poly"))


@pytest.mark.parametrize("algorithm", ["tpe", "gp", "cmaes", "random", "qmc"])
def test_parallel_asks_never_duplicate_a_pending_trial(algorithm: str) -> None:
    """With 8 trials in flight, pending trials keep the sampler from proposing the same point again."""
    skip_unavailable(algorithm)
    space = {
        "C": {"type": "float", "low": 0.01, "high": 100.0, "log": True},
        "gamma": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    }
    run = ExperimentRun(
        ExperimentState(
            experiment_id="e1",
            tweak=tweak(space, algorithm=algorithm, budget={"max_trials": 40, "parallelism": 8}),
        )
    )
    in_flight: dict[int, dict[str, Any]] = {}
    while not run.finished():
        for number, params in run.next_trials():
            key = tuple(round(math.log10(params[n]), 3) for n in ("C", "gamma"))
            pending = {tuple(round(math.log10(p[n]), 3) for n in ("C", "gamma")) for p in in_flight.values()}
            assert key not in pending, f"{algorithm} proposed {params} while the same point was pending"
            in_flight[number] = params
        number = min(in_flight)
        params = in_flight.pop(number)
        run.record(result(run, number, params, [1.0 - 0.05 * abs(math.log10(params["C"]) - 1)] * 3))
    assert len(run.state.results) == 40


def test_median_pruner_stops_a_trial_worse_than_its_peers() -> None:
    space = {"C": {"type": "float", "low": 0.01, "high": 100.0, "log": True}}
    run = ExperimentRun(
        ExperimentState(
            experiment_id="e1",
            tweak=tweak(space, algorithm="random", pruner="median", budget={"max_trials": 10, "parallelism": 1}),
        )
    )
    for _ in range(5):  # the median needs finished peers
        [(number, params)] = run.next_trials()
        assert run.report(number, 0, 0.9) is False
        run.record(result(run, number, params, [0.9, 0.9, 0.9]))
    [(number, params)] = run.next_trials()
    assert run.report(number, 0, 0.3) is True  # far below the median after the first fold
    assert run.report(number, 0, 0.3) is True  # a repeated report gets the same verdict
    run.record(result(run, number, params, [0.3], status=TrialStatus.PRUNED))
    assert run.state.results[number].status is TrialStatus.PRUNED
    assert run.state.results[number].fold_scores == [0.3]
    # Rebuilt from its state (a scheduler restart), the study keeps the pruned trial and its fold.
    rebuilt = ExperimentRun(run.state)
    pruned = [t for t in rebuilt.study.trials if t.state.name == "PRUNED"]
    assert len(pruned) == 1 and pruned[0].intermediate_values == {1: 0.3}


@pytest.mark.parametrize("pruner", ["asha", "hyperband", "wilcoxon"])
def test_every_pruner_prunes_a_clearly_bad_trial(pruner: str) -> None:
    space = {"C": {"type": "float", "low": 0.01, "high": 100.0, "log": True}}
    run = ExperimentRun(
        ExperimentState(
            experiment_id="e1",
            tweak=tweak(space, algorithm="random", pruner=pruner, cv=5, budget={"max_trials": 30, "parallelism": 1}),
        )
    )
    for _ in range(8):
        [(number, params)] = run.next_trials()
        for fold in range(5):
            run.report(number, fold, 0.9 + 0.01 * fold)
        run.record(result(run, number, params, [0.9 + 0.01 * f for f in range(5)]))
    [(number, params)] = run.next_trials()
    verdicts = [run.report(number, fold, 0.2) for fold in range(4)]
    assert any(v is True for v in verdicts), verdicts  # the bad trial is pruned at some fold


def test_no_pruner_never_prunes() -> None:
    run = ExperimentRun(ExperimentState(experiment_id="e1", tweak=tweak(CONDITIONAL_SPACE, algorithm="random")))
    [(number, _), *_] = run.next_trials()
    assert run.report(number, 0, -1e9) is False
    assert run.report(999, 0, 0.5) is None  # not in flight


def history(trials: list[tuple[dict[str, Any], TweakFile]]) -> LineageHistory:
    return LineageHistory(
        lineage="acme/svc",
        trials=[
            LineageTrial(
                experiment_id="old",
                context=context_of(t.spec),
                record=TrialRecord(number=i, params=p, status=TrialStatus.OK, score=score_of(p), fold_scores=[score_of(p)] * 3),
            )
            for i, (p, t) in enumerate(trials)
        ],
    )


def test_warm_start_reuses_compatible_trials_and_reports_the_others() -> None:
    old = tweak(CONDITIONAL_SPACE, algorithm="tpe")
    new_space = {**CONDITIONAL_SPACE, "C": {"type": "float", "low": 0.1, "high": 100.0, "log": True}}
    new = tweak(new_space, algorithm="tpe")
    other_metric = TweakFile.model_validate(
        {
            **old.model_dump(mode="json", by_alias=True),
            "spec": {**old.spec.model_dump(mode="json", by_alias=True), "objective": {"metric": "f1_macro", "cv": 3}},
        }
    )
    earlier = history(
        [
            ({"C": 1.0, "kernel": "rbf"}, old),  # fits
            ({"C": 5.0, "kernel": "poly", "degree": 3, "coef0": 0.5}, old),  # fits
            ({"C": 0.02, "kernel": "rbf"}, old),  # C below the new range
            ({"C": 1.0, "kernel": "linear"}, old),  # choice gone
            ({"C": 1.0, "kernel": "poly"}, old),  # degree now active but missing
            ({"C": 2.0, "kernel": "rbf"}, other_metric),  # scores of another objective
        ]
    )
    reused, report = select(earlier, "acme/svc", new.spec)
    assert [r.params["C"] for r in reused] == [1.0, 5.0]
    assert (report.available, report.reused, report.incompatible) == (6, 2, 4)
    assert report.reasons == {
        "parameter 'C' outside its new range or choices": 1,
        "parameter 'kernel' outside its new range or choices": 1,
        "no value for parameter 'degree' (new, or newly active)": 1,
        "the objective changed": 1,
    }
    state = ExperimentState(experiment_id="e2", tweak=new, warm_trials=reused, warm_start=report)
    run = ExperimentRun(state)
    seeded = [t for t in run.study.trials if t.state.name == "COMPLETE"]
    assert len(seeded) == 2  # seeded, and never counted as this experiment's trials
    assert run.state.results == {} and run.best() is None
    assert run.complete().warm_start == report


@pytest.mark.parametrize("algorithm", ["tpe", "random"])  # random draws without a study: its re-runs are queued apart
def test_a_warm_started_search_first_tries_the_best_earlier_configurations_again(algorithm: str) -> None:
    old = tweak(CONDITIONAL_SPACE, algorithm="tpe")
    configs = [
        {"C": 0.05, "kernel": "rbf"},
        {"C": 10.0, "kernel": "poly", "degree": 3, "coef0": 0.5},  # the best (score_of's optimum)
        {"C": 3.0, "kernel": "rbf"},  # second best
        {"C": 10.0, "kernel": "poly", "degree": 3, "coef0": 0.5},  # the best again (an earlier push): tried once
    ]
    reused, report = select(history([(p, old) for p in configs]), "acme/svc", old.spec)
    for rerun, expected in ((1, [configs[1]]), (2, [configs[1], configs[2]]), (0, [])):
        new = tweak(
            CONDITIONAL_SPACE,
            algorithm=algorithm,
            seed=11,
            warm_start={"rerun": rerun},
            budget={"max_trials": 6, "parallelism": 3},
        )
        state = ExperimentState(experiment_id=f"e{rerun}", tweak=new, warm_trials=reused, warm_start=report.model_copy())
        run = ExperimentRun(state)
        first = [params for _, params in run.next_trials()]
        assert first[: len(expected)] == expected, (rerun, first)
        assert all(p not in configs for p in first[len(expected) :])  # then the sampler proposes new points
        assert run.complete().warm_start.rerun == len(expected)
        # A scheduler restart rebuilds the study from state: nothing is queued a second time.
        rebuilt = ExperimentRun(ExperimentState.model_validate(state.model_dump()))
        assert [t for t in rebuilt.study.trials if t.state.name == "WAITING"] == []


def test_warm_start_lineage_and_switch() -> None:
    from tweakline.proto.messages import Source

    assert lineage_of(tweak(CONDITIONAL_SPACE), Source(repository="acme/models")) == "acme/models/svc"
    assert lineage_of(tweak(CONDITIONAL_SPACE), Source()) == "local/svc"
    assert lineage_of(tweak(CONDITIONAL_SPACE, warm_start={"from": "team/base"}), Source()) == "team/base"
    assert lineage_of(tweak(CONDITIONAL_SPACE, warm_start=False), Source(repository="acme/models")) is None


def test_warm_start_makes_tpe_start_near_the_earlier_optimum() -> None:
    """Seeded with a cold run's trials, the same lineage's next run beats the cold run's early trials."""
    cold = ExperimentRun(
        ExperimentState(experiment_id="cold", tweak=tweak(CONDITIONAL_SPACE, budget={"max_trials": 30, "parallelism": 1}))
    )
    drive(cold)
    earlier = LineageHistory(
        lineage="local/svc",
        trials=[LineageTrial(experiment_id="cold", context=context_of(cold.spec), record=r) for r in cold.state.results.values()],
    )
    new = tweak(CONDITIONAL_SPACE, seed=4, budget={"max_trials": 10, "parallelism": 1})
    reused, report = select(earlier, "local/svc", new.spec)
    assert report.reused == 30
    warm = ExperimentRun(ExperimentState(experiment_id="warm", tweak=new, warm_trials=reused, warm_start=report))
    drive(warm)
    first_cold = max(r.score for n, r in cold.state.results.items() if n < 10)
    assert warm.best().score >= first_cold


def test_search_options_fail_validation_with_field_precise_errors() -> None:
    from pydantic import ValidationError

    from tweakline.search.algorithms import check_search

    bad_pruner = check_search(tweak(CONDITIONAL_SPACE, pruner="sometimes").spec)
    assert [p.path for p in bad_pruner] == ["spec.search.pruner"]
    assert "'sometimes'" in bad_pruner[0].message and "'asha'" in bad_pruner[0].message
    with pytest.raises(ValidationError) as bad_from:
        tweak(CONDITIONAL_SPACE, warm_start={"from": "no spaces allowed"})
    assert any(e["loc"][-2:] == ("warm_start", "from") for e in bad_from.value.errors())


def test_an_algorithm_missing_its_library_is_reported_before_anything_runs() -> None:
    from tweakline.search.algorithms import check_search

    problems = check_search(tweak(CONDITIONAL_SPACE, algorithm="gp").spec)
    if STRATEGIES["gp"]().unavailable() is None:
        assert problems == []
    else:
        assert [p.path for p in problems] == ["spec.search.algorithm"]
        assert "tweakline[gp]" in problems[0].message
    assert check_search(tweak(CONDITIONAL_SPACE, algorithm="tpe").spec) == []


def tweak_with(
    space: dict[str, Any], *, objective: dict[str, Any], gate: dict[str, Any] | None = None, **search: Any
) -> TweakFile:
    return tweak(space, objective=objective, gate=gate or {}, **search)


def with_metrics(
    run: ExperimentRun, number: int, params: dict[str, Any], score: float, metrics: dict[str, float]
) -> TrialCompleted:
    return result(run, number, params, [score] * 3).model_copy(update={"metrics": {"accuracy": score, **metrics}})


def test_nsga2_gives_a_pareto_front_and_the_gate_picks_by_the_primary_metric() -> None:
    objective = {"metric": "accuracy", "cv": 3, "secondary": [{"metric": "recall_macro"}]}
    run = ExperimentRun(
        ExperimentState(
            experiment_id="mo",
            tweak=tweak_with(
                CONDITIONAL_SPACE, objective=objective, algorithm="nsga2", budget={"max_trials": 20, "parallelism": 4}
            ),
        )
    )
    assert [d.name for d in run.study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    in_flight: list[tuple[int, dict[str, Any]]] = []
    while not run.finished():
        in_flight += run.next_trials()
        number, params = in_flight.pop(0)
        assert ("degree" in params) is (params["kernel"] == "poly")  # conditional params under nsga2 too
        acc = score_of(params)
        run.record(with_metrics(run, number, params, acc, {"recall_macro": 2.0 - acc - 0.001 * number}))
    front = run.pareto_front()
    assert front and len(front) < 20
    points = {n: (r.score, r.metrics["recall_macro"]) for n, r in run.state.results.items()}
    for n in front:  # nobody beats a front member on both metrics
        assert not any(a >= points[n][0] and b >= points[n][1] and (a, b) != points[n] for a, b in points.values())
    best = run.best()
    assert best.score == max(p[0] for p in points.values())  # picked by the primary metric
    assert best.number in front
    completed = run.complete()
    assert completed.pareto_front == front


def test_gate_thresholds_become_optuna_constraints_and_best_prefers_feasible_trials() -> None:
    objective = {"metric": "accuracy", "cv": 3}
    gate = {"thresholds": {"recall_macro": 0.9}}
    run = ExperimentRun(
        ExperimentState(
            experiment_id="c",
            tweak=tweak_with(CONDITIONAL_SPACE, objective=objective, gate=gate, budget={"max_trials": 4, "parallelism": 4}),
        )
    )
    trials = run.next_trials()
    (n0, p0), (n1, p1), (n2, p2), (n3, p3) = trials
    run.record(with_metrics(run, n0, p0, 0.99, {"recall_macro": 0.80}))  # best accuracy, fails the threshold
    run.record(with_metrics(run, n1, p1, 0.95, {"recall_macro": 0.93}))
    run.record(with_metrics(run, n2, p2, 0.90, {"recall_macro": 0.95}))
    run.record(with_metrics(run, n3, p3, 0.97, {}))  # recall undefined: violated
    by_number = {t.number: t for t in run.study.trials}
    assert by_number[0].constraints == {"recall_macro": pytest.approx(0.1)}
    assert by_number[1].constraints == {"recall_macro": pytest.approx(-0.03)}
    assert by_number[3].constraints == {"recall_macro": 1.0}
    assert run.best().number == n1
    completed = run.complete()
    assert completed.best.number == n1 and completed.feasible == 2
    # Rebuilt from state, the constraints are restored with the history.
    rebuilt = ExperimentRun(run.state)
    assert [t.constraints for t in rebuilt.study.trials][1] == {"recall_macro": pytest.approx(-0.03)}


@pytest.mark.parametrize(
    ("search", "objective", "field", "text"),
    [
        ({"algorithm": "nsga2"}, {"metric": "accuracy"}, "search.algorithm", "nsga2 optimises several metrics"),
        (
            {"algorithm": "cmaes"},
            {"metric": "accuracy", "secondary": [{"metric": "f1_macro"}]},
            "search.algorithm",
            "cmaes optimises a single metric",
        ),
        (
            {"pruner": "asha"},
            {"metric": "accuracy", "secondary": [{"metric": "f1_macro"}]},
            "search.pruner",
            "pruners compare a single metric",
        ),
        (
            {},
            {"metric": "accuracy", "secondary": [{"metric": "r2"}]},
            "objective.secondary.0.metric",
            "'r2' is not a metric of the same task as accuracy",
        ),
        (
            {},
            {"metric": "accuracy", "secondary": [{"metric": "accuracy"}]},
            "objective.secondary.0.metric",
            "'accuracy' is already an objective",
        ),
    ],
)
def test_invalid_multi_objective_combinations_fail_validation(search, objective, field, text) -> None:
    from pydantic import ValidationError

    from tweakline.search.algorithms import check_search

    # Structure and metric rules are the contract's (pydantic); the algorithm's and the pruner's
    # are their plug-ins' (check_search): either way one problem at the precise field.
    try:
        spec = tweak_with(CONDITIONAL_SPACE, objective=objective, **search).spec
    except ValidationError as caught:
        problems = [(f"{'.'.join(map(str, e['loc']))}.{e['ctx']['field']}", e["msg"]) for e in caught.errors()]
    else:
        problems = [(p.path, p.message) for p in check_search(spec)]
    assert len(problems) == 1, problems
    assert problems[0][0] == f"spec.{field}"
    assert text in problems[0][1]


def test_a_study_rebuilt_from_state_keeps_warm_trials_results_and_trials_in_flight() -> None:
    """What a restarted scheduler does: rebuild from KV state, then carry on without repeats."""
    first = ExperimentRun(
        ExperimentState(experiment_id="r", tweak=tweak(CONDITIONAL_SPACE, budget={"max_trials": 12, "parallelism": 3}))
    )
    issued = first.next_trials()
    number, params = issued[0]
    first.record(result(first, number, params))
    state = ExperimentState.model_validate_json(first.state.model_dump_json())  # through JSON, as in the KV bucket

    rebuilt = ExperimentRun(state)
    assert rebuilt.in_flight() == {n for n, _ in issued[1:]}
    running = [t for t in rebuilt.study.trials if t.state.name == "RUNNING"]
    assert sorted(t.params["C"] for t in running) == sorted(p["C"] for _, p in issued[1:])  # the sampler sees them
    assert rebuilt.next_trials() == [(3, rebuilt.state.issued[3])]  # one free slot, numbering goes on
    for n, p in issued[1:]:
        assert rebuilt.record(result(rebuilt, n, p)) is True
        assert rebuilt.record(result(rebuilt, n, p)) is False  # a redelivered result counts once
    assert len(rebuilt.state.results) == 3


def test_a_csv_dataset_is_the_same_dataset_wherever_the_commit_is_checked_out() -> None:
    from tweakline.proto.messages import Source

    def csv_spec(root: str) -> TweakFile:
        raw = tweak(CONDITIONAL_SPACE).model_dump(mode="json", by_alias=True)
        raw["spec"]["dataset"] = {"source": f"csv:{root}/data/train.csv", "target": "y"}
        return TweakFile.model_validate(raw)

    build_1 = context_of(csv_spec("/builds/1/repo").spec, Source(path="/builds/1/repo/model.tweak.yaml"))
    build_2 = context_of(csv_spec("/builds/2/repo").spec, Source(path="/builds/2/repo/model.tweak.yaml"))
    assert build_1 == build_2
    moved = context_of(csv_spec("/builds/2/repo").spec, Source(path="/builds/2/repo/sub/model.tweak.yaml"))
    assert moved["dataset"] != build_1["dataset"]  # another file relative to the tweak file


def test_cmaes_takes_its_prior_from_warm_trials() -> None:
    """CMA-ES ignores trials it did not generate, so earlier trials become its starting distribution."""
    space = {
        "C": {"type": "float", "low": 0.01, "high": 100.0, "log": True},
        "gamma": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
    }

    def score(p: dict[str, Any]) -> float:  # optimum in a corner (C=80, gamma=0.8), far from CMA-ES's default start
        return 1.0 - 0.1 * abs(math.log10(p["C"]) - 1.9) - 0.1 * abs(math.log10(p["gamma"]) + 0.1)

    cold = ExperimentRun(
        ExperimentState(experiment_id="cold", tweak=tweak(space, algorithm="random", budget={"max_trials": 30, "parallelism": 1}))
    )
    while not cold.finished():
        [(n, p)] = cold.next_trials()
        cold.record(result(cold, n, p, [score(p)] * 3))
    history = LineageHistory(
        lineage="l",
        trials=[LineageTrial(experiment_id="cold", context=context_of(cold.spec), record=r) for r in cold.state.results.values()],
    )
    new = tweak(space, algorithm="cmaes", seed=5, budget={"max_trials": 8, "parallelism": 4})
    reused, report = select(history, "l", new.spec)
    warm = ExperimentRun(ExperimentState(experiment_id="warm", tweak=new, warm_trials=reused, warm_start=report))
    plain = ExperimentRun(ExperimentState(experiment_id="plain", tweak=new))

    def first_generation(run: ExperimentRun) -> float:
        proposals = []
        while not run.finished():
            for n, p in run.next_trials():
                proposals.append(score(p))
                run.record(result(run, n, p, [score(p)] * 3))
        return sum(proposals) / len(proposals)

    assert first_generation(warm) > first_generation(plain)


# -- rungs of a training resource ------------------------------------------------------------------

RESOURCE = {"name": "n_estimators", "min": 10, "max": 90}  # rungs 10, 30, 90 at steps 1, 3, 9


def rung_tweak(pruner: str) -> TweakFile:
    return tweak(
        {"learning_rate": {"type": "float", "low": 0.01, "high": 1.0, "log": True}},
        algorithm="random",
        seed=1,
        pruner=pruner,
        resource=RESOURCE,
        cv=3,
        dataset={"source": "sklearn:breast_cancer"},
        model={"estimator": "sklearn.ensemble.GradientBoostingClassifier"},
        budget={"max_trials": 30, "parallelism": 1},
    )


def rung_result(
    run: ExperimentRun, number: int, params: dict[str, Any], rungs: list[float], status: TrialStatus = TrialStatus.OK
) -> TrialCompleted:
    return TrialCompleted(
        experiment_id=run.state.experiment_id,
        trial_id=trial_id(run.state.experiment_id, number),
        number=number,
        status=status,
        params=params,
        score=rungs[-1],
        rung_scores=rungs,
        fold_scores=[rungs[-1]] * 3,
    )


@pytest.mark.parametrize("pruner", ["asha", "hyperband", "median"])
def test_with_a_resource_pruners_judge_rungs_at_their_resource_steps(pruner: str) -> None:
    run = ExperimentRun(ExperimentState(experiment_id="e1", tweak=rung_tweak(pruner)))
    assert [r.step for r in run.rungs] == [1, 3, 9]
    for _ in range(8):
        [(number, params)] = run.next_trials()
        for rung, value in enumerate([0.90, 0.93, 0.95]):
            assert run.report(number, rung, value) is False
        run.record(rung_result(run, number, params, [0.90, 0.93, 0.95]))
    # Clearly worse trials are stopped on a cheap rung, before the full resource. (Hyperband runs
    # one of its brackets' trials to the end whatever they score: hence several bad trials.)
    stopped: dict[int, int] = {}
    for _ in range(4):
        [(number, params)] = run.next_trials()
        verdicts = []
        for rung in range(2):  # as the runner does: the next rung only after a "continue"
            verdicts.append(run.report(number, rung, 0.5))
            if verdicts[-1]:
                break
        status = TrialStatus.PRUNED if verdicts[-1] else TrialStatus.OK
        run.record(rung_result(run, number, params, [0.5] * (len(verdicts) if verdicts[-1] else 3), status=status))
        if verdicts[-1]:
            stopped[number] = len(verdicts)
    assert stopped, "no bad trial was stopped on a cheap rung"
    pruned = {t.number: t for t in run.study.trials if t.state.name == "PRUNED"}
    assert set(pruned) == set(stopped)
    for number, rungs in stopped.items():
        assert pruned[number].intermediate_values == {run.rungs[i].step: 0.5 for i in range(rungs)}
    finished = [t for t in run.study.trials if t.state.name == "COMPLETE"]
    assert all(t.intermediate_values == {1: 0.90, 3: 0.93, 9: 0.95} for t in finished)
    # Rebuilt from its state (a scheduler restart), the study has the same rung values, and the
    # same name: Hyperband's brackets (a hash of study name and trial number) stay the same.
    rebuilt = ExperimentRun(run.state)
    assert rebuilt.study.study_name == run.study.study_name == "e1"
    assert [t.intermediate_values for t in rebuilt.study.trials] == [t.intermediate_values for t in run.study.trials]


@pytest.mark.parametrize(
    ("search", "model", "field", "text"),
    [
        ({"pruner": "none"}, {}, ("spec", "search", "pruner"), "expected asha, hyperband or median"),
        ({"pruner": "wilcoxon"}, {}, ("spec", "search", "pruner"), "got 'wilcoxon'"),
        (
            {"space": {"n_estimators": {"type": "int", "low": 10, "high": 90}}},
            {},
            ("spec", "search", "space", "n_estimators"),
            "drop it from the space",
        ),
        ({}, {"fixed": {"n_estimators": 50}}, ("spec", "model", "fixed", "n_estimators"), "drop it from fixed"),
        (
            {"resource": {"name": "n_estimators", "min": 40, "max": 90}},
            {},
            ("spec", "search", "resource", "min"),
            "expected at most max / 3 (30), got 40",
        ),
        (
            {"resource": {"name": "max_iter", "min": 2.5, "max": 90}},
            {},
            ("spec", "search", "resource", "min"),
            "expected an integer, got 2.5",
        ),
        ({"resource": {"name": "max_iter", "min": 10}}, {}, ("spec", "search", "resource", "max"), "is required"),
        (
            {"resource": {"name": "fraction", "min": 0.1, "max": 1.5}},
            {},
            ("spec", "search", "resource", "max"),
            "expected at most 1, got 1.5",
        ),
        ({"resource": {"name": "epochs", "min": 1, "max": 9}}, {}, ("spec", "search", "resource", "name"), "n_estimators"),
    ],
)
def test_invalid_resources_fail_validation_with_field_precise_errors(search, model, field, text) -> None:
    from tweakline.errors import InvalidTweakFileError
    from tweakline.validation.loading import parse_tweak_file

    raw = rung_tweak("asha").model_dump(mode="json", by_alias=True, exclude_none=True)
    raw["spec"]["search"].update(search)
    raw["spec"]["model"].update(model)
    from tweakline.search.algorithms import check_search

    try:  # structure in the contract, then the pruner's own rules
        problems = check_search(parse_tweak_file(yaml.safe_dump(raw), "gbc.tweak.yaml").spec)
    except InvalidTweakFileError as bad:
        problems = bad.problems
    paths = {p.path: p.message for p in problems}
    assert ".".join(field) in paths, paths
    assert text in paths[".".join(field)], paths


@pytest.mark.parametrize("algorithm", ["random", "qmc", "tpe", "cmaes", "grid"])
def test_a_rebuilt_seeded_search_goes_on_instead_of_proposing_its_first_trials_again(algorithm: str) -> None:
    # The sampler's random state is not in the experiment's state: after a restart or a handover,
    # the experiment's seed alone would draw the first trials' parameters again.
    space = GRID_SPACE if algorithm == "grid" else {"C": {"type": "float", "low": 0.01, "high": 100.0, "log": True}}
    search_tweak = tweak(space, algorithm=algorithm, budget={"max_trials": 6, "parallelism": 4})
    run = ExperimentRun(ExperimentState(experiment_id="rebuilt", tweak=search_tweak))
    first = run.next_trials()
    for number, params in first[:2]:
        assert run.record(result(run, number, params))
    rebuilt = ExperimentRun(ExperimentState.model_validate(run.state.model_dump()))
    later = [params for _, params in rebuilt.next_trials()]

    assert len(first) == 4 and len(later) == 2
    assert not [params for params in later if params in [p for _, p in first]], (first, later)
    # A new experiment still starts from its own seed: the same first trials every time.
    assert [p for _, p in ExperimentRun(ExperimentState(experiment_id="again", tweak=search_tweak)).next_trials()] == [
        p for _, p in first
    ]


def test_a_random_search_without_a_pruner_keeps_no_study_and_one_with_a_pruner_does() -> None:
    # Random proposals learn nothing from earlier trials: without a pruner to compare them, the
    # engine draws them (the same values Optuna's RandomSampler gives, tests/search/test_space.py)
    # and keeps no Optuna trial. A pruner needs every trial's intermediate values in the study.
    for pruner, kept in (("none", 0), ("median", 6)):
        run = ExperimentRun(
            ExperimentState(
                experiment_id=f"draws-{pruner}",
                tweak=tweak(CONDITIONAL_SPACE, algorithm="random", pruner=pruner, budget={"max_trials": 6, "parallelism": 3}),
            )
        )
        while issued := run.next_trials():
            for number, params in issued:
                assert run.record(result(run, number, params))
        assert len(run.state.results) == 6 and run.finished()
        assert len(run.study.trials) == kept, pruner
        assert run.best() is not None and run.complete().total == 6

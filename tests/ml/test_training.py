"""One trial: cross-validation on the training split, pruning, failure capture."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold

from tests import factories
from tweakline.errors import DatasetError
from tweakline.ml.datasets import DatasetCache, Split
from tweakline.ml.training import cv_splitter, describe_error, estimator_seed, run_trial
from tweakline.proto.messages import TrialStatus
from tweakline.proto.tweakfile import ExperimentSpec

ALLOWED = ["sklearn."]
CACHE = DatasetCache()


def make_spec(**sections: Any) -> ExperimentSpec:
    """The shared base, with a scaler in front of the SVC (as most tests here train one)."""
    sections.setdefault("model", {"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.preprocessing.StandardScaler"]})
    return factories.make_spec(**sections)


def split_of(spec: ExperimentSpec) -> Split:
    return CACHE.get(spec.dataset)


def forest_spec(seed: int = 0) -> ExperimentSpec:
    return make_spec(
        dataset={"source": "sklearn:wine", "seed": seed},
        model={"estimator": "sklearn.ensemble.RandomForestClassifier", "fixed": {"n_estimators": 5, "max_features": 1}},
        search={"space": {"max_depth": {"type": "int", "low": 1, "high": 4}}},
        objective={"metric": "f1_macro", "cv": 4},
    )


def test_ok_trial_scores_every_fold() -> None:
    spec = make_spec(gate={"thresholds": {"balanced_accuracy": 0.8}})
    outcome = run_trial(split_of(spec), spec, {"C": 1.0}, ALLOWED)
    assert outcome.status is TrialStatus.OK
    assert outcome.error is None
    assert len(outcome.fold_scores) == 3
    assert outcome.score == pytest.approx(np.mean(outcome.fold_scores))
    assert outcome.score > 0.85
    assert set(outcome.metrics) == {"accuracy", "balanced_accuracy", "f1_macro", "recall_macro", "precision_macro"}
    assert outcome.metrics["accuracy"] == pytest.approx(outcome.score)
    assert outcome.duration_s > 0
    assert outcome.cpu_s >= 0


def test_params_change_the_score() -> None:
    spec = make_spec()
    good = run_trial(split_of(spec), spec, {"C": 1.0}, ALLOWED)
    bad = run_trial(split_of(spec), spec, {"C": 1e-3}, ALLOWED)
    assert bad.score is not None and good.score is not None
    assert bad.score < good.score


def test_same_seed_same_scores_and_the_seed_matters() -> None:
    spec = forest_spec()
    first = run_trial(split_of(spec), spec, {"max_depth": 3}, ALLOWED, seed=1)
    again = run_trial(split_of(spec), spec, {"max_depth": 3}, ALLOWED, seed=1)
    assert first.status is TrialStatus.OK
    assert first.fold_scores == again.fold_scores
    assert first.metrics == again.metrics
    other = run_trial(split_of(spec), spec, {"max_depth": 3}, ALLOWED, seed=2)
    assert other.fold_scores != first.fold_scores


def test_folds_follow_the_dataset_seed() -> None:
    a = cv_splitter(forest_spec(seed=0), "classification")
    b = cv_splitter(forest_spec(seed=5), "classification")
    split = split_of(forest_spec())
    first_a = next(a.split(split.X_train, split.y_train))[1]
    first_b = next(b.split(split.X_train, split.y_train))[1]
    assert not np.array_equal(first_a, first_b)


def test_cv_splitters() -> None:
    spec = make_spec()
    classification = cv_splitter(spec, "classification")
    assert isinstance(classification, StratifiedKFold)
    assert classification.get_n_splits() == 3 and classification.shuffle
    assert isinstance(cv_splitter(spec, "regression"), KFold)
    split = split_of(spec)
    for _, valid in classification.split(split.X_train, split.y_train):
        assert set(split.y_train[valid]) == {0, 1, 2}


def test_only_the_training_split_is_used() -> None:
    spec = make_spec()
    real = split_of(spec)
    poisoned = Split(
        X_train=real.X_train,
        X_test=np.full_like(real.X_test, np.nan),
        y_train=real.y_train,
        y_test=np.full_like(real.y_test, -1),
        task=real.task,
        feature_names=real.feature_names,
    )
    seen: list[int] = []
    outcome = run_trial(poisoned, spec, {"C": 1.0}, ALLOWED, on_fold=lambda i, v: seen.append(i))
    assert outcome.status is TrialStatus.OK
    assert outcome.fold_scores == run_trial(real, spec, {"C": 1.0}, ALLOWED).fold_scores
    assert seen == [0, 1, 2]


def test_regression_trial() -> None:
    spec = make_spec(
        dataset={"source": "sklearn:diabetes"},
        model={"estimator": "sklearn.linear_model.Ridge"},
        search={"space": {"alpha": {"type": "float", "low": 1e-3, "high": 10, "log": True}}},
        objective={"metric": "rmse", "cv": 3},
    )
    outcome = run_trial(split_of(spec), spec, {"alpha": 0.1}, ALLOWED)
    assert outcome.status is TrialStatus.OK
    assert set(outcome.metrics) == {"rmse", "r2", "mae"}
    assert 30 < outcome.score < 80  # rmse in target units, positive


def test_on_fold_gets_each_objective_value_and_can_prune() -> None:
    spec = make_spec()
    calls: list[tuple[int, float]] = []

    def prune_after_second(index: int, value: float) -> bool:
        calls.append((index, value))
        return index == 1

    outcome = run_trial(split_of(spec), spec, {"C": 1.0}, ALLOWED, on_fold=prune_after_second)
    assert outcome.status is TrialStatus.PRUNED
    assert [i for i, _ in calls] == [0, 1]
    assert outcome.fold_scores == [v for _, v in calls]
    assert outcome.score == pytest.approx(np.mean(outcome.fold_scores))
    assert outcome.error is None


def test_on_fold_false_or_none_continues() -> None:
    spec = make_spec()
    assert run_trial(split_of(spec), spec, {"C": 1.0}, ALLOWED, on_fold=lambda i, v: False).status is TrialStatus.OK
    assert run_trial(split_of(spec), spec, {"C": 1.0}, ALLOWED, on_fold=lambda i, v: None).status is TrialStatus.OK


def test_prune_request_after_the_last_fold_is_a_completed_trial() -> None:
    spec = make_spec()
    outcome = run_trial(split_of(spec), spec, {"C": 1.0}, ALLOWED, on_fold=lambda i, v: True if i == 2 else None)
    assert outcome.status is TrialStatus.OK
    assert len(outcome.fold_scores) == 3


def test_errors_from_on_fold_are_the_callers() -> None:
    spec = make_spec()

    def broken(index: int, value: float) -> bool:
        raise RuntimeError("bus gone")

    with pytest.raises(RuntimeError, match="bus gone"):
        run_trial(split_of(spec), spec, {"C": 1.0}, ALLOWED, on_fold=broken)


def test_estimator_errors_become_a_failed_trial() -> None:
    spec = make_spec()
    outcome = run_trial(split_of(spec), spec, {"C": 1.0, "kernel": "nope"}, ALLOWED)
    assert outcome.status is TrialStatus.FAILED
    assert outcome.score is None
    assert outcome.metrics == {}
    assert outcome.error is not None
    assert outcome.error.startswith("fold 1/3: InvalidParameterError: The 'kernel' parameter of SVC must be")
    assert "Got 'nope' instead" in outcome.error
    assert "\n" not in outcome.error and "Traceback" not in outcome.error


def test_failure_mid_way_keeps_the_location() -> None:
    spec = make_spec(
        model={"estimator": "sklearn.linear_model.LogisticRegression"},
        search={"space": {"l1_ratio": {"type": "float", "low": 0, "high": 1}}},
    )
    outcome = run_trial(split_of(spec), spec, {"solver": "lbfgs", "l1_ratio": 1.0, "C": 1.0}, ALLOWED)
    assert outcome.status is TrialStatus.FAILED
    assert outcome.error is not None and outcome.error.startswith("fold 1/3: ValueError:")
    assert " (at " in outcome.error and ".py:" in outcome.error


def test_disallowed_estimator_is_a_failed_trial() -> None:
    spec = make_spec(model={"estimator": "os.system"})
    outcome = run_trial(split_of(make_spec()), spec, {}, ALLOWED)
    assert outcome.status is TrialStatus.FAILED
    assert outcome.error == "EstimatorNotAllowedError: 'os.system' is not allowed; allowed prefixes: sklearn."


def test_undefined_objective_fails_the_trial() -> None:
    spec = make_spec(objective={"metric": "log_loss", "cv": 3})  # SVC has no predict_proba
    outcome = run_trial(split_of(spec), spec, {"C": 1.0}, ALLOWED)
    assert outcome.status is TrialStatus.FAILED
    assert outcome.error is not None and "the objective 'log_loss' is undefined" in outcome.error


def test_convergence_warnings_are_recorded_not_emitted() -> None:
    spec = make_spec(
        dataset={"source": "sklearn:diabetes"},
        model={"estimator": "sklearn.linear_model.SGDRegressor", "fixed": {"max_iter": 2}},
        search={"space": {"alpha": {"type": "float", "low": 1e-4, "high": 1, "log": True}}},
        objective={"metric": "r2", "cv": 3},
    )
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        outcome = run_trial(split_of(spec), spec, {"alpha": 0.01}, ALLOWED, seed=0)
    assert outcome.status is TrialStatus.OK
    assert not [w for w in escaped if issubclass(w.category, ConvergenceWarning)]
    assert len(outcome.warnings) == 1
    assert outcome.warnings[0].startswith("ConvergenceWarning: Maximum number of iteration")


def test_seed_and_n_jobs_reach_every_fold_estimator(monkeypatch: pytest.MonkeyPatch) -> None:
    from tweakline.ml import training

    built: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        estimator = real(*args, **kwargs)
        built.append(estimator)
        return estimator

    real = training.build_estimator
    monkeypatch.setattr(training, "build_estimator", spy)
    spec = forest_spec()
    outcome = run_trial(split_of(spec), spec, {"max_depth": 2}, ALLOWED, seed=7, n_jobs=1)
    assert outcome.status is TrialStatus.OK
    assert len(built) == 4 and len({id(e) for e in built}) == 4  # a fresh estimator per fold
    assert all((e.random_state, e.n_jobs, e.max_depth) == (7, 1, 2) for e in built)


def test_estimators_are_seeded_by_the_dataset_seed_not_the_samplers() -> None:
    assert estimator_seed(make_spec(dataset={"source": "sklearn:iris", "seed": 4})) == 4
    # Another sampler seed (the next push of a lineage may change it) leaves scores comparable.
    seeded = make_spec(search={"space": {"C": {"type": "float", "low": 1, "high": 2}}, "seed": 9})
    assert estimator_seed(seeded) == 0


def test_describe_error_is_one_bounded_line() -> None:
    try:
        raise ValueError("bad\nthings " + "x" * 1000)
    except ValueError as exc:
        text = describe_error(exc, limit=80)
    assert text.startswith("ValueError: bad things xxx")
    assert len(text) == 80 and text.endswith("…")
    assert "\n" not in text


def test_a_dataset_error_for_the_bus_carries_no_file_contents(tmp_path: Any) -> None:
    """What a runner reports for a file it cannot use never quotes the file (a header, a cell)."""
    from tweakline.ml.datasets import load_dataset
    from tweakline.ml.training import public_error

    secret = tmp_path / "environ.csv"
    # a mostly numeric column with one secret cell (a column of words would be a text feature)
    secret.write_text("AWS_SECRET_ACCESS_KEY=hunter2,label\n1,0\n2,1\nTOKEN=abc123,1\n")
    spec = make_spec(dataset={"source": f"csv:{secret}", "target": "label", "seed": 0}).dataset
    with pytest.raises(DatasetError) as caught:
        load_dataset(spec)
    assert "hunter2" in str(caught.value) or "abc123" in str(caught.value)  # the local message is detailed
    public = public_error(caught.value)
    assert public.startswith("DatasetError: ") and "hunter2" not in public and "abc123" not in public, public


def test_csv_dataset_end_to_end(tmp_path: Any) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 3))
    labels = np.where(X[:, 0] + 0.5 * X[:, 1] > 0, "yes", "no")
    lines = ["a,b,c,label"] + [f"{r[0]},{r[1]},{r[2]},{lab}" for r, lab in zip(X, labels)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec = make_spec(
        dataset={"source": "csv:train.csv", "target": "label"},
        model={"estimator": "sklearn.linear_model.LogisticRegression"},
        search={"space": {"C": {"type": "float", "low": 0.01, "high": 10, "log": True}}},
        objective={"metric": "roc_auc", "cv": 4},
        gate={"thresholds": {"log_loss": 0.5}},
    )
    split = DatasetCache().get(spec.dataset, tmp_path)
    # 120 rows, 3 features; the test rows are chosen by a hash of each row (about test_size of them)
    assert split.X_train.shape[1] == 3 and split.X_train.shape[0] + split.X_test.shape[0] == 120
    assert 12 <= split.X_test.shape[0] <= 40
    outcome = run_trial(split, spec, {"C": 1.0}, ALLOWED)
    assert outcome.status is TrialStatus.OK
    assert outcome.score is not None and outcome.score > 0.95
    assert {"roc_auc", "log_loss", "accuracy"} <= set(outcome.metrics)


# -- rungs of a training resource ------------------------------------------------------------------


def gbc_spec(resource: dict[str, Any], estimator: str = "sklearn.ensemble.GradientBoostingClassifier") -> ExperimentSpec:
    return make_spec(
        dataset={"source": "sklearn:breast_cancer", "seed": 0},
        model={"estimator": estimator},
        search={
            "space": {"learning_rate": {"type": "float", "low": 0.01, "high": 1.0, "log": True}},
            "pruner": "asha",
            "resource": resource,
        },
        objective={"metric": "accuracy", "cv": 3},
    )


def test_a_resource_grows_each_folds_model_and_ends_where_one_full_fit_would() -> None:
    spec = gbc_spec({"name": "n_estimators", "min": 10, "max": 90})
    seen: list[tuple[int, float]] = []
    outcome = run_trial(
        split_of(spec),
        spec,
        {"learning_rate": 0.1},
        ALLOWED,
        seed=0,
        on_fold=lambda rung, value: seen.append((rung, value)) and False,
    )
    assert outcome.status is TrialStatus.OK
    assert [rung for rung, _ in seen] == [0, 1, 2]  # one report per rung (10, 30, 90 trees), not per fold
    assert outcome.rung_scores == [value for _, value in seen]
    assert outcome.score == outcome.rung_scores[-1] and len(outcome.fold_scores) == 3
    # Growing 10 -> 30 -> 90 trees (warm_start) gives exactly the CV score of fitting 90 trees at once.
    plain = make_spec(
        **{
            **spec.model_dump(mode="json", by_alias=True, exclude_none=True),
            "search": {"space": spec.search.model_dump(mode="json")["space"]},
        }
    )
    direct = run_trial(split_of(plain), plain, {"learning_rate": 0.1, "n_estimators": 90}, ALLOWED, seed=0)
    assert direct.fold_scores == pytest.approx(outcome.fold_scores)


def test_a_trial_pruned_on_its_first_rung_never_trains_a_bigger_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from tweakline.ml import training

    built: list[Any] = []
    real_build = training.build_estimator

    def recording_build(*args: Any, **kwargs: Any) -> Any:
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(training, "build_estimator", recording_build)
    spec = gbc_spec({"name": "n_estimators", "min": 10, "max": 90})
    outcome = run_trial(split_of(spec), spec, {"learning_rate": 0.1}, ALLOWED, seed=0, on_fold=lambda rung, value: True)
    assert outcome.status is TrialStatus.PRUNED and len(outcome.rung_scores) == 1
    assert len(built) == 3 and all(model.n_estimators_ == 10 for model in built)  # one 10-tree model per fold


def test_an_estimator_without_warm_start_is_refitted_at_each_rung() -> None:
    raw = gbc_spec({"name": "max_iter", "min": 5, "max": 45}, estimator="sklearn.linear_model.LogisticRegression").model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    raw["search"]["space"] = {"C": {"type": "float", "low": 0.01, "high": 10.0, "log": True}}
    spec = ExperimentSpec.model_validate(raw)
    outcome = run_trial(split_of(spec), spec, {"C": 0.5}, ALLOWED, seed=0)
    assert outcome.status is TrialStatus.OK and len(outcome.rung_scores) == 3
    assert any("ConvergenceWarning" in w for w in outcome.warnings)  # 5 iterations do not converge: a real small rung


def test_fraction_rungs_train_on_growing_nested_stratified_samples() -> None:
    from tweakline.ml.training import _growth_order

    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    order = _growth_order(y, seed=3, stratified=True)
    assert sorted(order) == list(range(100))  # a permutation: every prefix nests in the longer ones
    for size in (10, 30, 100):
        counts = np.bincount(y[order[:size]], minlength=3)
        assert np.abs(counts - np.array([0.6, 0.3, 0.1]) * size).max() <= 1, (size, counts)

    raw = gbc_spec({"name": "fraction", "min": 0.1}, estimator="sklearn.ensemble.RandomForestClassifier").model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    raw["search"]["space"] = {"max_depth": {"type": "int", "low": 1, "high": 5}}
    spec = ExperimentSpec.model_validate(raw)
    outcome = run_trial(split_of(spec), spec, {"max_depth": 3}, ALLOWED, seed=0)
    assert outcome.status is TrialStatus.OK and len(outcome.rung_scores) == 3
    # The last rung is the whole training fold: the same scores as a trial without rungs.
    plain = ExperimentSpec.model_validate(
        {
            **spec.model_dump(mode="json", by_alias=True, exclude_none=True),
            "search": {"space": {"max_depth": {"type": "int", "low": 1, "high": 5}}},
        }
    )
    assert run_trial(split_of(plain), plain, {"max_depth": 3}, ALLOWED, seed=0).fold_scores == outcome.fold_scores


def test_the_final_model_gets_the_whole_resource() -> None:
    from tweakline.evaluator.scoring import refit_and_score
    from tweakline.ml.training import full_params

    spec = gbc_spec({"name": "n_estimators", "min": 10, "max": 90})
    assert full_params(spec, {"learning_rate": 0.1}) == {"learning_rate": 0.1, "n_estimators": 90}
    refit = refit_and_score(split_of(spec), spec, {"learning_rate": 0.1}, ALLOWED, "classification")
    assert refit.model.n_estimators == 90 and refit.model.n_estimators_ == 90
    fraction = gbc_spec({"name": "fraction", "min": 0.1})
    assert full_params(fraction, {"learning_rate": 0.1}) == {"learning_rate": 0.1}


def test_a_trial_scores_the_same_on_cached_folds_as_on_fresh_ones() -> None:
    """Folds are computed once per dataset and reused by the next trials; a copy of the data gets its own."""
    spec = make_spec(dataset={"source": "sklearn:iris", "seed": 3}, objective={"metric": "accuracy", "cv": 4})
    split = split_of(spec)
    first = run_trial(split, spec, {"C": 0.3}, ALLOWED, seed=0)
    again = run_trial(split, spec, {"C": 0.3}, ALLOWED, seed=0)
    copied = dataclasses.replace(split, X_train=split.X_train.copy(), y_train=split.y_train.copy())
    fresh = run_trial(copied, spec, {"C": 0.3}, ALLOWED, seed=0)
    assert first.status == "ok" and len(first.fold_scores) == 4
    assert first.fold_scores == again.fold_scores == fresh.fold_scores

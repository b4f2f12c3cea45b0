"""One trial: cross-validation on the training split, pruning, failure capture."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold, StratifiedKFold

from tweakline.proto.messages import TrialStatus
from tweakline.proto.tweakfile import ExperimentSpec
from tweakline.trial_runner.datasets import DatasetCache, Split
from tweakline.trial_runner.training import cv_splitter, describe_error, estimator_seed, run_trial

ALLOWED = ["sklearn."]
CACHE = DatasetCache()


def make_spec(**overrides: Any) -> ExperimentSpec:
    data: dict[str, Any] = {
        "dataset": {"source": "sklearn:iris", "seed": 0},
        "model": {"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.preprocessing.StandardScaler"]},
        "search": {"space": {"C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True}}},
        "objective": {"metric": "accuracy", "cv": 3},
    }
    data.update(overrides)
    return ExperimentSpec.model_validate(data)


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
    from tweakline.trial_runner import training

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


def test_estimator_seed() -> None:
    assert estimator_seed(make_spec(dataset={"source": "sklearn:iris", "seed": 4})) == 4
    seeded = make_spec(search={"space": {"C": {"type": "float", "low": 1, "high": 2}}, "seed": 9})
    assert estimator_seed(seeded) == 9


def test_describe_error_is_one_bounded_line() -> None:
    try:
        raise ValueError("bad\nthings " + "x" * 1000)
    except ValueError as exc:
        text = describe_error(exc, limit=80)
    assert text.startswith("ValueError: bad things xxx")
    assert len(text) == 80 and text.endswith("…")
    assert "\n" not in text


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
    assert split.X_train.shape == (96, 3)
    outcome = run_trial(split, spec, {"C": 1.0}, ALLOWED)
    assert outcome.status is TrialStatus.OK
    assert outcome.score is not None and outcome.score > 0.95
    assert {"roc_auc", "log_loss", "accuracy"} <= set(outcome.metrics)

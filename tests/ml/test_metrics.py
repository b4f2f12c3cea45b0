"""Metrics by name, in natural units, and which metrics a spec needs."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from tweakline.ml.metrics import compute_metrics, objective_metrics, predictions, task_of_metric
from tweakline.proto.tweakfile import CLASSIFICATION_METRICS, REGRESSION_METRICS, ExperimentSpec


def make_spec(objective: str, thresholds: dict[str, float] | None = None) -> ExperimentSpec:
    data: dict[str, Any] = {
        "dataset": {"source": "sklearn:iris"},
        "model": {"estimator": "sklearn.svm.SVC"},
        "search": {"space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
        "objective": {"metric": objective},
        "gate": {"thresholds": thresholds or {}},
    }
    return ExperimentSpec.model_validate(data)


@pytest.fixture(scope="module")
def iris_model() -> tuple[Any, np.ndarray, np.ndarray]:
    X, y = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X[::2], y[::2])
    return model, X[1::2], y[1::2]


def test_classification_metrics_match_scikit_learn(iris_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    model, X, y = iris_model
    values = compute_metrics(model, X, y, list(CLASSIFICATION_METRICS), "classification")
    assert set(values) == set(CLASSIFICATION_METRICS)
    pred, proba = model.predict(X), model.predict_proba(X)
    assert values["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert values["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert values["precision_macro"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert values["recall_macro"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert values["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert values["roc_auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert values["log_loss"] == pytest.approx(skm.log_loss(y, proba))
    assert values["log_loss"] > 0
    assert all(isinstance(v, float) for v in values.values())


def test_only_requested_metrics_are_computed(iris_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    model, X, y = iris_model
    assert set(compute_metrics(model, X, y, ["f1_macro", "accuracy", "f1_macro"], "classification")) == {
        "f1_macro",
        "accuracy",
    }


def test_binary_roc_auc_uses_decision_function_without_probabilities() -> None:
    X, y = load_breast_cancer(return_X_y=True)
    model = make_pipeline(StandardScaler(), LinearSVC()).fit(X[::2], y[::2])
    values = compute_metrics(model, X[1::2], y[1::2], ["roc_auc", "log_loss", "accuracy"], "classification")
    assert "log_loss" not in values  # needs predict_proba: left out, not NaN
    assert values["roc_auc"] == pytest.approx(skm.roc_auc_score(y[1::2], model.decision_function(X[1::2])))
    assert values["roc_auc"] > 0.9


def test_binary_roc_auc_with_string_labels() -> None:
    X, y = load_breast_cancer(return_X_y=True)
    labels = np.where(y == 1, "benign", "malignant")
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[::2], labels[::2])
    values = compute_metrics(model, X[1::2], labels[1::2], ["roc_auc"], "classification")
    positive = list(model.classes_).index("malignant")
    expected = skm.roc_auc_score(labels[1::2] == "malignant", model.predict_proba(X[1::2])[:, positive])
    assert values["roc_auc"] == pytest.approx(expected)


def test_multiclass_without_probabilities_leaves_roc_auc_and_log_loss_out() -> None:
    X, y = load_iris(return_X_y=True)
    model = SVC().fit(X, y)
    assert set(compute_metrics(model, X, y, ["roc_auc", "log_loss", "accuracy"], "classification")) == {"accuracy"}


def test_roc_auc_undefined_for_a_single_class() -> None:
    X, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    values = compute_metrics(model, X[y == 0], y[y == 0], ["roc_auc", "accuracy"], "classification")
    assert "roc_auc" not in values
    assert values["accuracy"] == 1.0


def test_regression_metrics_in_natural_units() -> None:
    X, y = load_diabetes(return_X_y=True)
    model = Ridge().fit(X[::2], y[::2])
    values = compute_metrics(model, X[1::2], y[1::2], list(REGRESSION_METRICS), "regression")
    pred = model.predict(X[1::2])
    assert values["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y[1::2], pred)))
    assert values["rmse"] > 0
    assert values["mae"] == pytest.approx(skm.mean_absolute_error(y[1::2], pred))
    assert values["r2"] == pytest.approx(skm.r2_score(y[1::2], pred))


def test_non_finite_values_are_left_out() -> None:
    X, y = load_diabetes(return_X_y=True)
    model = Ridge().fit(X, y)
    values = compute_metrics(model, X[:1], y[:1], ["r2", "mae"], "regression")  # r2 of one sample is NaN
    assert set(values) == {"mae"}


def test_metric_of_the_other_task_or_unknown_is_refused() -> None:
    X, y = load_diabetes(return_X_y=True)
    model = Ridge().fit(X, y)
    with pytest.raises(ValueError, match="'accuracy' is not a regression metric"):
        compute_metrics(model, X, y, ["accuracy"], "regression")
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        compute_metrics(model, X, y, ["auc"], "regression")
    assert task_of_metric("rmse") == "regression"
    assert task_of_metric("log_loss") == "classification"


def test_objective_metrics_order_and_defaults() -> None:
    assert objective_metrics(make_spec("roc_auc", {"recall_macro": 0.9, "log_loss": 0.5})) == [
        "roc_auc",
        "recall_macro",
        "log_loss",
        "accuracy",
        "f1_macro",
        "precision_macro",
    ]
    assert objective_metrics(make_spec("accuracy")) == ["accuracy", "f1_macro", "recall_macro", "precision_macro"]
    assert objective_metrics(make_spec("mae", {"rmse": 60})) == ["mae", "rmse", "r2"]


def test_predictions(iris_model: tuple[Any, np.ndarray, np.ndarray]) -> None:
    model, X, _ = iris_model
    pred = predictions(model, X)
    assert isinstance(pred, np.ndarray)
    np.testing.assert_array_equal(pred, model.predict(X))


class _Fixed:
    """A fitted stand-in that predicts the given labels (to compare metrics on chosen label sets)."""

    def __init__(self, pred: np.ndarray):
        self.pred = pred

    def predict(self, X: Any) -> np.ndarray:
        return self.pred


def _label_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    cases = []
    for classes in (2, 3, 7):
        y = rng.integers(0, classes, 60)
        cases.append((f"{classes} classes", y, np.where(rng.random(60) < 0.7, y, rng.integers(0, classes, 60))))
    y = rng.integers(0, 4, 40)
    cases.append(("a class never predicted", y, np.where(y == 3, 0, y)))
    cases.append(("a label only predicted", y, np.where(rng.random(40) < 0.2, 9, y)))
    cases.append(("every prediction wrong", np.zeros(10, int), np.ones(10, int)))
    words = np.array(["cat", "dog", "emu"])
    yi = rng.integers(0, 3, 50)
    cases.append(("text labels", words[yi], words[np.where(rng.random(50) < 0.6, yi, rng.integers(0, 3, 50))]))
    cases.append(("text labels as objects", words[yi].astype(object), np.roll(words[yi], 3).astype(object)))
    cases.append(("booleans", rng.random(30) < 0.5, rng.random(30) < 0.5))
    cases.append(("float labels", rng.integers(0, 3, 30).astype(float), rng.integers(0, 3, 30).astype(float)))
    # Integer labels in [0, 1024) are counted without np.unique: gaps, other widths, and the ones left to it.
    gaps = np.array([2, 5, 9])[rng.integers(0, 3, 40)]
    cases.append(("integer labels with gaps", gaps, np.where(rng.random(40) < 0.3, 7, gaps)))
    cases.append(("unsigned bytes", gaps.astype(np.uint8), np.roll(gaps, 5).astype(np.uint8)))
    cases.append(("negative labels", gaps - 6, np.roll(gaps, 2) - 6))
    cases.append(("labels past 1023", gaps * 1000, np.roll(gaps, 1) * 1000))
    return cases


@pytest.mark.parametrize(("y", "pred"), [(y, p) for _, y, p in _label_cases()], ids=[n for n, _, _ in _label_cases()])
def test_label_metrics_from_one_confusion_matrix_equal_scikit_learns(y: np.ndarray, pred: np.ndarray) -> None:
    names = ["accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro"]
    got = compute_metrics(_Fixed(pred), np.zeros((len(y), 1)), y, names, "classification")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about the undefined per-label values
        expected = {
            "accuracy": skm.accuracy_score(y, pred),
            "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
            "precision_macro": skm.precision_score(y, pred, average="macro", zero_division=0),
            "recall_macro": skm.recall_score(y, pred, average="macro", zero_division=0),
            "f1_macro": skm.f1_score(y, pred, average="macro", zero_division=0),
        }
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_labels_of_mixed_kinds_are_left_to_scikit_learn() -> None:
    y, pred = np.array(["a", "b", "a"], dtype=object), np.array([0, 1, 0], dtype=object)
    with pytest.raises(ValueError, match="[Mm]ix"):
        compute_metrics(_Fixed(pred), np.zeros((3, 1)), y, ["accuracy", "f1_macro"], "classification")

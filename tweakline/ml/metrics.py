"""Metrics by name, in natural units: what trials report and what the gate compares.

Names are those of :mod:`tweakline.proto.tweakfile` (``CLASSIFICATION_METRICS``,
``REGRESSION_METRICS``). Values are never negated: ``rmse``, ``mae`` and ``log_loss`` are
positive and lower is better (``LOWER_IS_BETTER``); everything else is higher-is-better.

A metric that is undefined for the data at hand (``roc_auc`` when the fold holds one class, or the
estimator gives no scores; ``log_loss`` without ``predict_proba``; any non-finite value) is left
out of the result rather than reported as NaN, which JSON cannot carry.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from tweakline.ml.datasets import Task
from tweakline.proto.tweakfile import CLASSIFICATION_METRICS, REGRESSION_METRICS, ExperimentSpec

DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro", "recall_macro", "precision_macro"),
    "regression": ("r2", "rmse", "mae"),
}
"""Always computed for a task, besides the objective and the gate's metrics."""


def _skm() -> Any:
    """``sklearn.metrics``, imported on first use: the deployer and validation need the names, not the code."""
    from sklearn import metrics

    return metrics


def task_of_metric(metric: str) -> Task:
    """The task a metric belongs to; ``ValueError`` for an unknown name."""
    if metric in CLASSIFICATION_METRICS:
        return "classification"
    if metric in REGRESSION_METRICS:
        return "regression"
    raise ValueError(f"unknown metric '{metric}', expected one of {', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}")


def objective_metrics(spec: ExperimentSpec) -> list[str]:
    """The metrics a trial computes: the objective first, then secondary objectives, the gate's, the task's defaults."""
    task = task_of_metric(spec.objective.metric)
    secondary = [o.metric for o in spec.objective.secondary]
    names = [spec.objective.metric, *secondary, *spec.gate.thresholds, *DEFAULT_METRICS[task]]
    return list(dict.fromkeys(names))


def predictions(estimator: Any, X: np.ndarray) -> np.ndarray:
    """Predicted labels (classification) or values (regression) of a fitted estimator, as an array."""
    return np.asarray(estimator.predict(X))


class _Scores:
    """Predictions and scores of one estimator on one ``X``, each computed at most once."""

    def __init__(self, estimator: Any, X: np.ndarray):
        self.estimator = estimator
        self.X = X
        self._pred: np.ndarray | None = None
        self._proba: np.ndarray | None = None
        self._decision: np.ndarray | None = None
        self._prf: tuple[float, float, float] | None = None
        self._confusion: np.ndarray | bool | None = None  # False: not computable here
        self._counts: _Counts | None = None

    def prf_macro(self, y: np.ndarray) -> tuple[float, float, float]:
        """Macro precision, recall and F1 (zero where undefined), from one confusion matrix."""
        if self._prf is None:
            counts = self.counts(y)
            if counts is None:
                p, r, f, _ = _skm().precision_recall_fscore_support(y, self.pred, average="macro", zero_division=0)
                self._prf = (float(p), float(r), float(f))
            else:
                tp, predicted, actual = counts
                self._prf = (
                    _mean_ratio(tp, predicted),
                    _mean_ratio(tp, actual),
                    _mean_ratio([2 * t for t in tp], [p + a for p, a in zip(predicted, actual)]),
                )
        return self._prf

    def confusion(self, y: np.ndarray) -> np.ndarray | None:
        """The confusion matrix (true label x predicted label, over the sorted union of both).

        Computed once with numpy for every label metric: scikit-learn's metric functions each
        re-validate their input, which was most of a fast trial's CPU (profiled in
        docs/benchmarks.md). ``None`` for labels it does not handle as scikit-learn does
        (mixed or non-finite); scikit-learn's own functions then decide.
        """
        if self._confusion is None:
            self._confusion = _confusion(np.asarray(y), self.pred)
        return self._confusion if self._confusion is not False else None

    def counts(self, y: np.ndarray) -> _Counts | None:
        """The confusion matrix's diagonal and sums as Python numbers, or ``None`` (see :meth:`confusion`)."""
        if self._counts is None:
            table = self.confusion(y)
            if table is None:
                return None
            self._counts = _Counts(np.diag(table).tolist(), table.sum(axis=0).tolist(), table.sum(axis=1).tolist())
        return self._counts

    @property
    def pred(self) -> np.ndarray:
        if self._pred is None:
            self._pred = predictions(self.estimator, self.X)
        return self._pred

    def proba(self) -> np.ndarray | None:
        if self._proba is None and hasattr(self.estimator, "predict_proba"):
            self._proba = np.asarray(self.estimator.predict_proba(self.X))
        return self._proba

    def decision(self) -> np.ndarray | None:
        if self._decision is None and hasattr(self.estimator, "decision_function"):
            self._decision = np.asarray(self.estimator.decision_function(self.X))
        return self._decision

    @property
    def classes(self) -> np.ndarray | None:
        classes = getattr(self.estimator, "classes_", None)
        return None if classes is None else np.asarray(classes)


class _Counts(NamedTuple):
    """Per label (sorted): true positives, times predicted, times present.

    Plain lists: the label metrics are a few divisions per label, cheaper in Python than numpy's
    per-call cost for the handful of labels a fold holds (they were a third of a fast trial's CPU
    in the seventh profiling round, docs/benchmarks.md).
    """

    tp: list[int]
    predicted: list[int]
    actual: list[int]


def _mean_ratio(numerators: Sequence[int], denominators: Sequence[int]) -> float:
    """Mean of ``numerator / denominator`` per label, 0 where the denominator is 0 (``zero_division=0``)."""
    return math.fsum(n / d if d else 0.0 for n, d in zip(numerators, denominators)) / len(numerators)


# Integer labels in [0, this) are counted straight into a table, without sorting them first.
_SMALL_LABELS = 1024


def _confusion(y: np.ndarray, pred: np.ndarray) -> np.ndarray | bool:
    """Confusion matrix over the sorted union of labels, or ``False`` to leave it to scikit-learn."""
    if y.ndim != 1 or pred.ndim != 1 or y.shape != pred.shape or y.size == 0:
        return False
    if y.dtype.kind in "iu" and pred.dtype.kind in "iu":  # class indices: no np.unique (a sort) per fold
        yi, pi = y.astype(np.intp, copy=False), pred.astype(np.intp, copy=False)
        low, high = min(yi.min(), pi.min()), max(yi.max(), pi.max())
        if low >= 0 and high < _SMALL_LABELS:
            k = int(high) + 1
            table = np.bincount(yi * k + pi, minlength=k * k).reshape(k, k)
            present = np.flatnonzero(table.sum(axis=0) + table.sum(axis=1))  # the labels seen, sorted
            return table if present.size == k else table[np.ix_(present, present)]
    kinds = {y.dtype.kind, pred.dtype.kind}
    if kinds <= set("biu") or (kinds <= set("biuf") and np.isfinite(y).all() and np.isfinite(pred).all()):
        pass  # numbers: compared by value, as scikit-learn does
    elif kinds <= set("US") or (kinds <= set("USO") and all(isinstance(v, str) for v in (*y, *pred))):
        pass  # text labels
    else:
        return False
    try:
        labels, index = np.unique(np.concatenate([y, pred]), return_inverse=True)
    except TypeError:
        return False
    n = labels.size
    true_index, pred_index = index[: y.size], index[y.size :]
    return np.bincount(true_index * n + pred_index, minlength=n * n).reshape(n, n)


def _accuracy(s: _Scores, y: np.ndarray) -> float:
    counts = s.counts(y)
    if counts is None:
        return float(_skm().accuracy_score(y, s.pred))
    return sum(counts.tp) / sum(counts.actual)


def _balanced_accuracy(s: _Scores, y: np.ndarray) -> float:
    counts = s.counts(y)
    if counts is None:
        return float(_skm().balanced_accuracy_score(y, s.pred))
    # A label only ever predicted has no recall (scikit-learn leaves it out too).
    recalls = [t / a for t, a in zip(counts.tp, counts.actual) if a > 0]
    return math.fsum(recalls) / len(recalls)


def _roc_auc(s: _Scores, y: np.ndarray) -> float | None:
    classes = s.classes
    if classes is None or np.unique(y).size < 2:
        return None
    if classes.size == 2:
        proba = s.proba()
        if proba is not None:
            return float(_skm().roc_auc_score(y, proba[:, 1]))
        decision = s.decision()
        if decision is not None:
            return float(_skm().roc_auc_score(y, decision))
        return None
    proba = s.proba()
    if proba is None:
        return None
    try:
        return float(_skm().roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))
    except ValueError:  # a class missing from this fold: one-vs-rest AUC undefined for it
        return None


def _log_loss(s: _Scores, y: np.ndarray) -> float | None:
    proba = s.proba()
    if proba is None or s.classes is None:
        return None
    return float(_skm().log_loss(y, proba, labels=s.classes))


_METRICS: dict[str, Callable[[_Scores, np.ndarray], float | None]] = {
    "accuracy": _accuracy,
    "balanced_accuracy": _balanced_accuracy,
    "precision_macro": lambda s, y: s.prf_macro(y)[0],
    "recall_macro": lambda s, y: s.prf_macro(y)[1],
    "f1_macro": lambda s, y: s.prf_macro(y)[2],
    "roc_auc": _roc_auc,
    "log_loss": _log_loss,
    "r2": lambda s, y: _skm().r2_score(y, s.pred),
    "rmse": lambda s, y: _skm().root_mean_squared_error(y, s.pred),
    "mae": lambda s, y: _skm().mean_absolute_error(y, s.pred),
}


def compute_metrics(estimator: Any, X: np.ndarray, y: np.ndarray, metrics: Sequence[str], task: Task) -> dict[str, float]:
    """Each requested metric of a fitted ``estimator`` on ``(X, y)``; undefined ones are left out.

    Args:
        estimator: A fitted estimator or pipeline.
        X: Features.
        y: True targets.
        metrics: Metric names, all of ``task``'s family.
        task: ``"classification"`` or ``"regression"``.

    Raises:
        ValueError: A name is unknown or belongs to the other task (the spec was not checked).
    """
    family = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    for name in metrics:
        if task_of_metric(name) != task:
            raise ValueError(f"'{name}' is not a {task} metric; expected one of {', '.join(family)}")
    from sklearn.exceptions import UndefinedMetricWarning

    scores = _Scores(estimator, X)
    result: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        for name in dict.fromkeys(metrics):
            value = _METRICS[name](scores, y)
            if value is not None and math.isfinite(value):
                result[name] = float(value)
    return result

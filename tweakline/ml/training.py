"""One trial: cross-validation of one parameter set on the training split.

The test split is never touched here. Folds are ``StratifiedKFold`` (classification) or ``KFold``
(regression), shuffled with the dataset seed, so every trial of an experiment sees the same folds
and the same parameters give the same scores. After each fold the caller's ``on_fold`` hook gets
the fold's objective value and may stop the trial (early stopping): it is then ``pruned``.

With ``search.resource`` the trial climbs rungs instead: at each rung every fold trains with that
amount of the resource (``n_estimators``, ``max_iter``, or a share of the training fold), the
hook gets the rung's CV score, and a pruned trial never trains the bigger rungs. Ensembles that
support ``warm_start`` keep growing each fold's model from rung to rung (the same trees a single
fit at that size would give), so a trial that reaches the last rung costs no more than without rungs.

Errors from the estimator (an invalid parameter combination, a solver that cannot run) do not
propagate: the trial is ``failed`` with a one-line error text. Warnings (convergence, deprecation)
are recorded on the outcome instead of flooding the runner's log.
"""

from __future__ import annotations

import math
import re
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import KFold, StratifiedKFold

from tweakline.errors import DatasetError, TweaklineError
from tweakline.ml.datasets import Split
from tweakline.ml.encoding import with_encoding
from tweakline.ml.estimators import build_estimator, final_estimator, task_of
from tweakline.ml.metrics import compute_metrics, objective_metrics
from tweakline.ml.outcome import TrialOutcome
from tweakline.proto.messages import TrialStatus
from tweakline.proto.tweakfile import ExperimentSpec, ResourceName, ResourceSpec, Rung

MAX_ERROR_CHARS = 600
MAX_WARNINGS = 5

OnFold = Callable[[int, float], "bool | None"]
"""``on_fold(stage, objective_value)`` after each fold (or, with ``search.resource``, each rung);
returning True stops the trial (pruned)."""


class UndefinedObjectiveError(ValueError):
    """The objective metric could not be computed on a fold."""


# Errors whose message says everything: where they were raised would only add noise.
_SELF_EXPLAINING = (TweaklineError, UndefinedObjectiveError)
_NO_LOCATION = frozenset({"InvalidParameterError"})  # scikit-learn's parameter validation


def estimator_seed(spec: ExperimentSpec) -> int:
    """The ``random_state`` of the estimators of ``spec`` (unless the tweak file sets one): ``dataset.seed``.

    The dataset seed already fixes the split and the folds; fixing the estimators' randomness with
    it makes a configuration's score a property of the configuration: the same in every trial,
    in the evaluator's refit, and in the next push of the lineage even when ``search.seed``
    changes (warm start compares scores across pushes). The runner's training child and the
    evaluator both use this.
    """
    return spec.dataset.seed


def cv_splitter(spec: ExperimentSpec, task: str) -> KFold | StratifiedKFold:
    """The folds every trial of ``spec`` uses."""
    if task == "classification":
        return StratifiedKFold(n_splits=spec.objective.cv, shuffle=True, random_state=spec.dataset.seed)
    return KFold(n_splits=spec.objective.cv, shuffle=True, random_state=spec.dataset.seed)


def describe_error(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """``Type: message (at file.py:123 in function)`` on one line, cut to ``limit`` characters."""
    message = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and not isinstance(exc, _SELF_EXPLAINING) and type(exc).__name__ not in _NO_LOCATION:
        last = frames[-1]
        text += f" (at {Path(last.filename).name}:{last.lineno} in {last.name})"
    return text if len(text) <= limit else text[: limit - 1] + "…"


_QUOTED = re.compile(r"'[^']*'")


def public_error(exc: BaseException, limit: int = MAX_ERROR_CHARS) -> str:
    """:func:`describe_error` for a message everyone following the events stream reads.

    A dataset error quotes what it found (cells, header names); from a runner, that would be
    the content of whatever the source pointed at, so quoted values are replaced by ``'…'``.
    The full text is for ``tweakline validate``, on the user's own machine.
    """
    text = describe_error(exc, limit)
    return _QUOTED.sub("'…'", text) if isinstance(exc, DatasetError) else text


def full_params(spec: ExperimentSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's parameters as its final model is built: with the whole resource when it is an estimator parameter.

    The evaluator's refit uses this, so the promoted model has what the last rung trained with.
    """
    resource = spec.search.resource
    if resource is None or resource.name is ResourceName.FRACTION:
        return dict(params)
    return {**params, resource.name.value: resource.value(resource.full)}


def _grows(estimator: BaseEstimator, resource: ResourceSpec) -> bool:
    """Whether ``estimator`` can continue training to a bigger ``resource`` (``warm_start``) instead of starting over."""
    final = final_estimator(estimator)
    own = final.get_params(deep=False)
    if "warm_start" not in own:
        return False
    if resource.name is ResourceName.N_ESTIMATORS:
        return "n_estimators" in own  # forests, extra trees, gradient boosting, bagging
    # max_iter only counts boosting iterations in histogram gradient boosting; elsewhere
    # (MLP, SGD, linear models) warm_start reruns max_iter epochs from the last solution.
    return resource.name is ResourceName.MAX_ITER and type(final).__name__.startswith("HistGradientBoosting")


def _growth_order(y: np.ndarray, seed: int, stratified: bool) -> np.ndarray:
    """Row positions in an order whose every prefix is a random sample (stratified for classification).

    Rungs of ``fraction`` train on prefixes of it, so each rung's rows include the previous rung's.
    """
    rng = np.random.default_rng(seed)
    if not stratified:
        return rng.permutation(len(y))
    # Each row gets its class-relative position (0..1) plus jitter: sorting interleaves the classes
    # in proportion, so any prefix holds about the same class shares as the whole fold.
    keys = np.empty(len(y))
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        keys[rows] = (rng.permutation(len(rows)) + rng.random(len(rows))) / len(rows)
    return np.argsort(keys, kind="stable")


def _means(per_fold: list[dict[str, float]]) -> dict[str, float]:
    names = dict.fromkeys(name for fold in per_fold for name in fold)
    return {name: _mean([fold[name] for fold in per_fold if name in fold]) for name in names}


def _mean(values: Sequence[float]) -> float:
    """The mean of a few fold scores: ``math.fsum`` over a list, not numpy's per-call cost per metric."""
    return math.fsum(values) / len(values)


def _warning_texts(caught: list[warnings.WarningMessage]) -> list[str]:
    texts = dict.fromkeys(f"{w.category.__name__}: {' '.join(str(w.message).split())[:200]}" for w in caught)
    return list(texts)[:MAX_WARNINGS]


def _scored(estimator: BaseEstimator, X: Any, y: Any, names: Sequence[str], task: str, objective: str) -> dict[str, float]:
    values = compute_metrics(estimator, X, y, names, task)
    if objective not in values:
        raise UndefinedObjectiveError(
            f"the objective '{objective}' is undefined on this fold "
            f"({type(final_estimator(estimator)).__name__} gives no usable scores for it)"
        )
    return values


def _rows_at(rung: Rung, rows: int) -> int:
    return max(2, min(rows, int(np.ceil(rung.amount * rows))))


def _amount(resource: ResourceSpec, rung: Rung) -> str:
    if resource.name is ResourceName.FRACTION:
        return f"fraction {rung.amount:.3g}"
    return f"{resource.name.value}={resource.value(rung.amount)}"


def _at_rung(
    models: list[BaseEstimator | None],
    fold: int,
    rung: Rung,
    resource: ResourceSpec,
    spec: ExperimentSpec,
    params: Mapping[str, Any],
    allowed_prefixes: Sequence[str],
    n_jobs: int | None,
    seed: int | None,
    categorical: Sequence[int] = (),
) -> BaseEstimator:
    """The estimator to fit for ``fold`` at ``rung``: the fold's model grown further when it can be, else a new one."""
    if resource.name is ResourceName.FRACTION:
        return with_encoding(build_estimator(spec.model, params, allowed_prefixes, n_jobs, seed=seed), categorical)
    name, amount = resource.name.value, resource.value(rung.amount)
    grown = models[fold]
    if grown is not None:
        final_estimator(grown).set_params(**{name: amount})  # fit() then adds to what it has
        return grown
    estimator = with_encoding(
        build_estimator(spec.model, {**params, name: amount}, allowed_prefixes, n_jobs, seed=seed), categorical
    )
    if _grows(estimator, resource):
        final_estimator(estimator).set_params(warm_start=True)
        models[fold] = estimator
    return estimator


# The latest datasets' folds: a runner's child trains many trials of one experiment on the same
# arrays, and StratifiedKFold's split was a tenth of a fast trial's CPU. Keyed by the arrays'
# identity (kept alive by the entry, so an id is never reused while cached) and the splitter.
_FOLDS: dict[tuple[int, int, str, int, int], tuple[Any, Any, list[tuple[np.ndarray, np.ndarray]]]] = {}
_FOLDS_KEPT = 4


def _folds(spec: ExperimentSpec, task: str, X: Any, y: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cross-validation folds of ``(X, y)`` for ``spec`` (computed once per dataset and splitter)."""
    key = (id(X), id(y), task, spec.objective.cv, spec.dataset.seed)
    cached = _FOLDS.get(key)
    if cached is not None and cached[0] is X and cached[1] is y:
        return cached[2]
    folds = list(cv_splitter(spec, task).split(X, y))
    while len(_FOLDS) >= _FOLDS_KEPT:
        _FOLDS.pop(next(iter(_FOLDS)))
    _FOLDS[key] = (X, y, folds)
    return folds


def run_trial(
    split: Split,
    spec: ExperimentSpec,
    params: Mapping[str, Any],
    allowed_prefixes: Sequence[str],
    *,
    seed: int | None = None,
    on_fold: OnFold | None = None,
    n_jobs: int | None = None,
) -> TrialOutcome:
    """Cross-validate ``params`` on ``split``'s training part and score every metric per fold.

    Args:
        split: The dataset split (only ``X_train`` / ``y_train`` are used).
        spec: The experiment (estimator, objective metric and folds, gate metrics).
        params: This trial's parameter values (estimator parameter names).
        allowed_prefixes: The platform's allow-list of import paths.
        seed: ``random_state`` for the estimator (unless the tweak file sets one); None leaves
            the estimator's default (see :func:`estimator_seed` for a reproducible choice).
        on_fold: Called after each fold with ``(fold_index, objective_value)``; True stops the
            trial with status pruned. Exceptions it raises propagate (they are the caller's).
        n_jobs: Threads the estimator may use.

    Returns:
        The outcome; estimator errors are reported in it as status failed, never raised.
    """
    started, cpu_started = time.perf_counter(), time.process_time()
    objective = spec.objective.metric
    names = objective_metrics(spec)
    per_fold: list[dict[str, float]] = []
    fold_scores: list[float] = []
    rung_scores: list[float] = []
    status = TrialStatus.OK
    error: str | None = None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        X, y = split.X_train, split.y_train
        try:
            task = task_of(spec.model, allowed_prefixes)
            folds = _folds(spec, task, X, y)
        except Exception as exc:
            status, error, folds = TrialStatus.FAILED, describe_error(exc), []

        resource = spec.search.resource
        if resource is None:
            for index, (train, valid) in enumerate(folds):
                try:
                    estimator: BaseEstimator = with_encoding(
                        build_estimator(spec.model, params, allowed_prefixes, n_jobs, seed=seed), split.categorical
                    )
                    estimator.fit(X[train], y[train])
                    values = _scored(estimator, X[valid], y[valid], names, task, objective)
                except Exception as exc:
                    status, error = TrialStatus.FAILED, f"fold {index + 1}/{len(folds)}: {describe_error(exc)}"
                    break
                per_fold.append(values)
                fold_scores.append(values[objective])
                if on_fold is not None and on_fold(index, values[objective]) is True and index + 1 < len(folds):
                    status = TrialStatus.PRUNED
                    break
        elif folds:
            rungs = resource.rungs()
            models: list[BaseEstimator | None] = [None] * len(folds)
            orders = (
                [
                    _growth_order(y[train], spec.dataset.seed + index, task == "classification")
                    for index, (train, _) in enumerate(folds)
                ]
                if resource.name is ResourceName.FRACTION
                else []
            )
            for rung in rungs:
                per_fold, fold_scores = [], []
                for index, (train, valid) in enumerate(folds):
                    try:
                        # The whole fold in its own order at fraction 1: the last rung is exactly a trial without rungs.
                        rows = train if not orders or rung.amount >= 1 else train[orders[index][: _rows_at(rung, len(train))]]
                        estimator = _at_rung(
                            models, index, rung, resource, spec, params, allowed_prefixes, n_jobs, seed, split.categorical
                        )
                        estimator.fit(X[rows], y[rows])
                        values = _scored(estimator, X[valid], y[valid], names, task, objective)
                    except Exception as exc:
                        status = TrialStatus.FAILED
                        error = f"rung {rung.index + 1}/{len(rungs)} ({_amount(resource, rung)}), fold {index + 1}/{len(folds)}: {describe_error(exc)}"
                        break
                    per_fold.append(values)
                    fold_scores.append(values[objective])
                if status is TrialStatus.FAILED:
                    break
                rung_scores.append(_mean(fold_scores))
                last = rung.index + 1 >= len(rungs)
                if on_fold is not None and on_fold(rung.index, rung_scores[-1]) is True and not last:
                    status = TrialStatus.PRUNED
                    break

    failed = status == TrialStatus.FAILED
    return TrialOutcome(
        status=status,
        score=None if failed or not fold_scores else _mean(fold_scores),
        metrics={} if failed else _means(per_fold),
        fold_scores=fold_scores,
        rung_scores=rung_scores,
        duration_s=time.perf_counter() - started,
        cpu_s=time.process_time() - cpu_started,
        error=error,
        warnings=_warning_texts(caught),
    )

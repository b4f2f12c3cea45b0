"""A trial of a trainer, and the refit of the best parameters: the platform scores, the trainer predicts.

During the search the trainer gets the training split minus a validation share
(``model.trainer.validation_fraction``, stratified and seeded by ``dataset.seed``, the same rows
in every trial) and returns predictions for the validation rows; the platform computes every
metric on them. Its ``report(step, ...)`` values with the objective are the intermediate values
the pruners judge. For the final model (:func:`refit_trainer`) it gets the whole training split
and the test rows without their targets; the evaluator scores those predictions exactly as it
scores an estimator. A trainer that loads its own data (``data: own``) gets no rows: its last
reported objective is its score, and the gate says which guarantees that costs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from tweakline.ml.datasets import Split
from tweakline.ml.metrics import compute_metrics, objective_metrics, task_of_metric
from tweakline.ml.outcome import TrialOutcome
from tweakline.ml.trainers.bundles import cached_code
from tweakline.ml.trainers.sandbox import TrainerError, TrainerJob, TrainerResult, run_trainer
from tweakline.ml.training import describe_error
from tweakline.proto.messages import TrialStatus
from tweakline.proto.tweakfile import ExperimentSpec, TrainerData, TrainerSpec

OnStage = Callable[[int, float], "bool | None"]


class FixedPredictions:
    """An estimator-shaped view of a trainer's predictions, so the platform's metrics apply unchanged.

    Use :meth:`of`: it gives a ``predict_proba`` only when the trainer returned probabilities (a
    metric that needs them is then undefined, not an error).
    """

    def __init__(self, predictions: np.ndarray, classes: list[Any] | None):
        self._predictions = predictions
        if classes is not None:
            self.classes_ = np.asarray(classes)

    @staticmethod
    def of(predictions: np.ndarray, probabilities: np.ndarray | None, classes: list[Any] | None) -> FixedPredictions:
        """The view for what the trainer returned."""
        if probabilities is None:
            return FixedPredictions(predictions, classes)
        return _FixedProbabilities(predictions, probabilities, classes)

    def _rows(self, X: Any) -> None:
        if len(X) != len(self._predictions):
            raise TrainerError(f"asked for {len(X)} rows, the trainer predicted {len(self._predictions)}")

    def predict(self, X: Any) -> np.ndarray:
        """The trainer's predictions for ``X`` (the rows it was given)."""
        self._rows(X)
        return self._predictions


class _FixedProbabilities(FixedPredictions):
    def __init__(self, predictions: np.ndarray, probabilities: np.ndarray, classes: list[Any] | None):
        super().__init__(predictions, classes)
        self._probabilities = probabilities

    def predict_proba(self, X: Any) -> np.ndarray:
        self._rows(X)
        return self._probabilities


def code_dir_of(trainer: TrainerSpec, code_cache: Path | None = None) -> Path:
    """Where the trainer's code is on this machine: the working tree (``tweakline run``) or a fetched bundle."""
    if trainer.code.startswith("object:"):
        cached = cached_code(trainer.code, code_cache)
        if cached is None:
            raise TrainerError(f"the code bundle {trainer.code} was not fetched before the trial")
        return cached
    path = Path(trainer.code)
    if not path.is_absolute():
        raise TrainerError(
            f"model.trainer.code is '{trainer.code}', relative to a tweak file this process cannot see; "
            "'tweakline run' sets the working tree and 'tweakline submit' ships a bundle"
        )
    if not path.is_dir():
        raise TrainerError(f"model.trainer.code: the folder {path} does not exist on this machine")
    return path


def _classes(y: np.ndarray, task: str) -> list[Any] | None:
    return [v.item() if hasattr(v, "item") else v for v in np.unique(y)] if task == "classification" else None


def _objective_values(result_reports: list[tuple[int, dict[str, float]]], objective: str) -> list[float]:
    return [m[objective] for _, m in result_reports if objective in m and math.isfinite(m[objective])]


def _numeric_only(split: Split) -> None:
    """Refuse text feature columns for a trainer: only estimator pipelines encode them (tweakline.ml.encoding)."""
    if split.categorical:
        raise TrainerError(
            f"the dataset has text feature columns ({', '.join(split.text_features[:5])}); the platform one-hot "
            "encodes them only for model.estimator pipelines, a trainer gets numbers: encode them in the data, "
            "or let the trainer load its own data (model.trainer.data: own)"
        )


def run_trainer_trial(
    split: Split,
    spec: ExperimentSpec,
    params: Mapping[str, Any],
    *,
    code_dir: Path,
    on_fold: OnStage | None = None,
    threads: int = 1,
    timeout: float | None = None,
    memory_mb: int | None = None,
) -> TrialOutcome:
    """Train ``params`` with the trainer of ``spec`` and score it on the validation rows; failures become ``failed``."""
    trainer = spec.model.trainer
    assert trainer is not None
    started = time.perf_counter()
    objective = spec.objective.metric
    task = task_of_metric(objective)
    stages: list[float] = []

    def on_report(step: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(objective)
        if value is None or not math.isfinite(value):
            return False
        stage = len(stages)
        stages.append(float(value))
        return bool(on_fold(stage, float(value))) if on_fold is not None else False

    X_valid = y_valid = None
    try:
        if trainer.data is TrainerData.OWN:
            job = _job(spec, params, code_dir, None, None, None, None, None, task, threads)
        else:
            _numeric_only(split)
            stratify = split.y_train if task == "classification" else None
            X_fit, X_valid, y_fit, y_valid = train_test_split(
                split.X_train,
                split.y_train,
                test_size=trainer.validation_fraction,
                random_state=spec.dataset.seed,
                stratify=stratify,
            )
            classes = _classes(split.y_train, task)
            job = _job(spec, params, code_dir, X_fit, y_fit, X_valid, y_valid, classes, task, threads)
        result = run_trainer(job, on_report, timeout=timeout, memory_mb=memory_mb)
    except Exception as exc:  # every failure of user code is the trial's, named
        text = str(exc) if isinstance(exc, TrainerError) else describe_error(exc)
        return TrialOutcome(status=TrialStatus.FAILED, fold_scores=stages, duration_s=time.perf_counter() - started, error=text)
    if result.status == "pruned":
        return TrialOutcome(
            status=TrialStatus.PRUNED,
            score=stages[-1] if stages else None,
            fold_scores=stages,
            duration_s=result.duration_s,
            cpu_s=result.cpu_s,
        )
    return _scored(result, spec, stages, X_valid, y_valid, task, job.classes)


def _job(
    spec: ExperimentSpec,
    params: Mapping[str, Any],
    code_dir: Path,
    X: Any,
    y: Any,
    X_eval: Any,
    y_eval: Any,
    classes: list[Any] | None,
    task: str,
    threads: int,
    *,
    final: bool = False,
    model_dir: Path | None = None,
) -> TrainerJob:
    trainer = spec.model.trainer
    assert trainer is not None
    return TrainerJob(
        trainer=trainer,
        params={**spec.model.fixed, **params},
        code_dir=code_dir,
        X=X,
        y=y,
        X_eval=X_eval,
        y_eval=y_eval,
        classes=classes,
        task=task,
        objective=spec.objective.metric,
        threads=threads,
        seed=spec.dataset.seed,
        final=final,
        model_dir=model_dir,
    )


def _scored(
    result: TrainerResult,
    spec: ExperimentSpec,
    stages: list[float],
    X_valid: Any,
    y_valid: Any,
    task: str,
    classes: list[Any] | None,
) -> TrialOutcome:
    objective = spec.objective.metric
    trainer = spec.model.trainer
    assert trainer is not None
    base = {"fold_scores": stages, "duration_s": result.duration_s, "cpu_s": result.cpu_s}
    if trainer.steps > 1 and not stages:
        return TrialOutcome(
            status=TrialStatus.FAILED,
            error=f"the trainer never reported the objective '{objective}' (model.trainer.steps is {trainer.steps}: "
            f"expected ctx.report(step, {objective}=...) at each step)",
            **base,
        )
    if trainer.data is TrainerData.OWN:
        if not stages:
            return TrialOutcome(
                status=TrialStatus.FAILED,
                error=f"the trainer loads its own data (data: own) but never reported the objective '{objective}'",
                **base,
            )
        last = result.reports[-1][1]
        return TrialOutcome(
            status=TrialStatus.OK, score=stages[-1], metrics={k: v for k, v in last.items() if math.isfinite(v)}, **base
        )
    assert result.predictions is not None
    model = FixedPredictions.of(result.predictions, result.probabilities, classes)
    try:
        metrics = compute_metrics(model, X_valid, y_valid, objective_metrics(spec), task)  # type: ignore[arg-type]
    except Exception as exc:  # labels of another kind than the targets, say
        return TrialOutcome(
            status=TrialStatus.FAILED, error=f"cannot score the trainer's predictions: {describe_error(exc)}", **base
        )
    if objective not in metrics:
        return TrialOutcome(
            status=TrialStatus.FAILED,
            error=f"the objective '{objective}' is undefined on the trainer's predictions (probabilities missing?)",
            **base,
        )
    return TrialOutcome(status=TrialStatus.OK, score=metrics[objective], metrics=metrics, **base)


def refit_trainer(
    split: Split,
    spec: ExperimentSpec,
    params: Mapping[str, Any],
    *,
    code_dir: Path,
    model_dir: Path | None = None,
    threads: int = 1,
    timeout: float | None = None,
    memory_mb: int | None = None,
) -> FixedPredictions:
    """Fit ``params`` on the whole training split and predict the test rows (given without targets).

    The trainer's model lands in ``model_dir``. Raises :class:`TrainerError` naming the cause.
    """
    trainer = spec.model.trainer
    assert trainer is not None
    task = task_of_metric(spec.objective.metric)
    classes = _classes(split.y_train, task)
    if trainer.data is TrainerData.OWN:
        raise TrainerError("a trainer with data: own cannot be scored on the platform's held-out rows")
    _numeric_only(split)
    job = _job(
        spec,
        params,
        code_dir,
        split.X_train,
        split.y_train,
        split.X_test,
        None,  # the test targets stay with the platform
        classes,
        task,
        threads,
        final=True,
        model_dir=model_dir,
    )
    result = run_trainer(job, None, timeout=timeout, memory_mb=memory_mb)
    if result.status != "ok" or result.predictions is None:
        raise TrainerError("the final fit of the trainer stopped before it returned predictions")
    return FixedPredictions.of(result.predictions, result.probabilities, classes)

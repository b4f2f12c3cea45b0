"""Refit the best configuration on the training split and score models on the held-out test split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tweakline.ml.datasets import Split
from tweakline.ml.encoding import with_encoding
from tweakline.ml.estimators import build_estimator
from tweakline.ml.holdout import digest
from tweakline.ml.metrics import compute_metrics, objective_metrics
from tweakline.ml.training import estimator_seed, full_params
from tweakline.proto.messages import Holdout
from tweakline.proto.tweakfile import ExperimentSpec


@dataclass
class Refit:
    """The refitted best model and the test-split metrics of it and of the default-params estimator."""

    model: Any
    metrics: dict[str, float]
    default_metrics: dict[str, float]
    task: str
    default_model: Any = None


def refit_and_score(split: Split, spec: ExperimentSpec, params: dict[str, Any], allowed: list[str], task: str) -> Refit:
    """Fit the best params and the defaults on the whole training split; score both on the test split.

    The best is built with the whole training resource (``search.resource``'s max) its last rung used.
    """
    metrics = objective_metrics(spec)
    seed = estimator_seed(spec)  # what the trials' CV used
    # text features are one-hot encoded inside the model, as in the trials (tweakline.ml.encoding)
    best = with_encoding(build_estimator(spec.model, full_params(spec, params), allowed, seed=seed), split.categorical)
    best.fit(split.X_train, split.y_train)
    default = with_encoding(build_estimator(spec.model, {}, allowed, seed=seed), split.categorical)
    default.fit(split.X_train, split.y_train)
    return Refit(
        model=best,
        metrics=compute_metrics(best, split.X_test, split.y_test, metrics, task),
        default_metrics=compute_metrics(default, split.X_test, split.y_test, metrics, task),
        task=task,
        default_model=default,
    )


def score_model(model: Any, split: Split, spec: ExperimentSpec, task: str, rows: Any = None) -> dict[str, float]:
    """Test-split metrics of an already fitted model (the one in production), on ``rows`` (a mask) if given."""
    X, y = (split.X_test, split.y_test) if rows is None else (split.X_test[rows], split.y_test[rows])
    return compute_metrics(model, X, y, objective_metrics(spec), task)


def holdout_record(split: Split) -> Holdout | None:
    """What the split held out, for the evidence and the release history."""
    if split.rule is None or split.test_keys is None or split.train_keys is None:
        return None
    return Holdout(
        method=split.rule.method,
        test_size=split.rule.test_size,
        seed=split.rule.seed,
        test_rows=len(split.test_keys),
        test_digest=digest(split.test_keys),
        train_rows=len(split.train_keys),
        train_digest=digest(split.train_keys),
    )


def probe_set(split: Split, rows: int) -> bytes:
    """The first ``rows`` test rows as JSON (feature name -> value, and the true target): the post-deploy probe.

    Test rows only: the served model never saw them, so its live metrics are comparable with the gate's.
    """
    n = min(rows, len(split.y_test))
    names = list(split.feature_names)
    body = {
        "task": split.task,
        "features": names,
        "rows": [dict(zip(names, map(_plain, x))) for x in split.X_test[:n]],
        "targets": [v.item() if hasattr(v, "item") else v for v in split.y_test[:n]],
    }
    return json.dumps(body).encode()


def _plain(cell: Any) -> Any:
    """A feature cell as JSON: a text label (or None) as it is, a number as a float."""
    return cell if cell is None or isinstance(cell, str) else float(cell)


@dataclass
class TrainerRefit(Refit):
    """A trainer's refit: :class:`Refit` plus the packed model (trainer bundle bytes and hash)."""

    bundle: bytes = b""
    sha256: str = ""
    default_error: str | None = None


def refit_trainer_and_score(
    split: Split,
    spec: ExperimentSpec,
    params: dict[str, Any],
    *,
    memory_mb: int | None = None,
    code_cache: Any = None,
) -> TrainerRefit:
    """A trainer's final model: fit ``params`` on the training split in the sandbox, predict the test rows, score.

    The trainer gets the test rows without their targets; the platform scores its predictions
    exactly as it scores an estimator. Its defaults (``model.fixed`` only) are fitted the same way
    for the tuned-vs-default comparison; a trainer that needs every parameter fails that fit,
    which is reported, not fatal. The model it saved is packed with its code for the model server.
    """
    import tempfile
    from pathlib import Path

    from tweakline.ml.artifacts import pack_trainer_model
    from tweakline.ml.metrics import task_of_metric
    from tweakline.ml.trainers import TrainerError, code_dir_of, refit_trainer

    trainer = spec.model.trainer
    assert trainer is not None
    task = task_of_metric(spec.objective.metric)
    code_dir = code_dir_of(trainer, code_cache)
    names = objective_metrics(spec)
    timeout = spec.budget.trial_timeout
    with tempfile.TemporaryDirectory(prefix="tweakline-final-") as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        best = refit_trainer(split, spec, params, code_dir=code_dir, model_dir=model_dir, timeout=timeout, memory_mb=memory_mb)
        metrics = compute_metrics(best, split.X_test, split.y_test, names, task)
        bundle, sha = (b"", "")
        if trainer.predict is not None:
            bundle, sha = pack_trainer_model(model_dir, code_dir, trainer.predict)
    default_metrics: dict[str, float] = {}
    default_error = None
    try:
        default = refit_trainer(split, spec, {}, code_dir=code_dir, timeout=timeout, memory_mb=memory_mb)
        default_metrics = compute_metrics(default, split.X_test, split.y_test, names, task)
    except TrainerError as exc:
        default_error = str(exc)
    return TrainerRefit(
        model=best,
        metrics=metrics,
        default_metrics=default_metrics,
        task=task,
        bundle=bundle,
        sha256=sha,
        default_error=default_error,
    )

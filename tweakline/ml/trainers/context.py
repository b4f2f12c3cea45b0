"""What a callable trainer receives: the trial's data, a way to report, a model folder, its resources.

This module runs inside the sandboxed trainer process (:mod:`tweakline.ml.trainers.child`) and is
the only tweakline API user code needs::

    def fit(params, ctx):
        model = make_net(params["channels"], params["dropout"])
        for epoch in range(ctx.steps):
            train_one_epoch(model, ctx.X, ctx.y, lr=params["lr"])
            ctx.report(epoch, accuracy=accuracy(model, ctx.X_eval, ctx.y_eval))  # feeds the pruners
        torch.save(model.state_dict(), ctx.model_dir / "model.pt")
        return model_predict(model, ctx.X_eval)  # or an object with predict()/predict_proba()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class TrialPruned(BaseException):
    """Raised by :meth:`TrainContext.report` when the platform stops the trial (early stopping).

    A ``BaseException``, so ``except Exception`` in user code does not swallow it.
    """


@dataclass
class TrainContext:
    """The trial as the trainer sees it.

    Attributes:
        params: The trial's parameter values (also the first argument of ``fit``).
        X: Training features (never the held-out test split).
        y: Training targets (``None`` when the trainer loads its own data).
        X_eval: Rows to return predictions for: the validation rows during trials, the held-out
            test rows (without their targets) when the best parameters are refitted.
        y_eval: The targets of ``X_eval`` during trials (validation rows: score your epochs on
            them); ``None`` for the final fit, whose ``X_eval`` is the test split.
        classes: The class labels, in the column order of probabilities (classification).
        task: ``classification`` or ``regression``.
        objective: The objective metric's name (report it to feed the pruners).
        steps: The intermediate reports a full trial makes (``model.trainer.steps``, e.g. epochs).
        model_dir: Save the model here (the platform stores it when it is the final model).
        threads: Threads this trial may use.
        seed: ``dataset.seed``: seed your own randomness with it for reproducible trials.
        final: True when fitting the final model with the best parameters.
    """

    params: dict[str, Any]
    X: np.ndarray | None
    y: np.ndarray | None
    X_eval: np.ndarray | None
    y_eval: np.ndarray | None
    classes: list[Any] | None
    task: str
    objective: str
    steps: int
    model_dir: Path
    threads: int
    seed: int
    final: bool = False
    _send: Callable[[int, dict[str, float]], bool] | None = field(default=None, repr=False)

    def report(self, step: int, **metrics: float) -> None:
        """Report intermediate ``metrics`` after ``step`` (e.g. an epoch); raises :class:`TrialPruned` when stopped.

        A report that includes the objective metric is what the pruners judge.
        """
        values = {str(k): float(v) for k, v in metrics.items()}
        if self._send is not None and self._send(int(step), values):
            raise TrialPruned(f"pruned after step {step}")

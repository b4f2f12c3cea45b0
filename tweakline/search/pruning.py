"""Early stopping: each an Optuna pruner behind one small plug-in interface.

Runners report the objective of every CV fold as it finishes (``trials.progress``); the
scheduler turns those fold scores into the intermediate values its pruner expects and asks
``should_prune``. Adding a pruner is one subclass of :class:`PruningStrategy` plus one line in
:data:`PRUNERS` (and its name in ``tweakline.proto.tweakfile.PrunerName``).

With ``search.resource`` trials report a CV score per rung instead, and every pruner but
Wilcoxon (which validation refuses there) sees it at the rung's step (1, 3, 9, ...: the resource
in units of the first rung), so ASHA and Hyperband promote on the resource itself.

Two ways to read fold scores:

- *learning-curve* pruners (median, ASHA, Hyperband) get the running mean of the folds done so
  far at step ``folds_done`` (1..cv): a trial whose first folds are clearly worse than its peers'
  is stopped, with CV folds as the resource;
- *racing* pruners (Wilcoxon) get each fold's own score at step ``fold`` (0..cv-1) and compare
  them fold by fold with the best trial's, a paired test.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import ClassVar

import optuna

from tweakline.proto.tweakfile import RUNG_FACTOR, ExperimentSpec


class PruningStrategy(ABC):
    """When an unpromising trial is stopped, given fold scores so far."""

    name: ClassVar[str]

    @abstractmethod
    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        """The Optuna pruner for this experiment."""

    def intermediate(self, folds: Mapping[int, float]) -> dict[int, float]:
        """Intermediate values (step -> value) from the fold scores seen so far (fold index -> score).

        Default: the running mean at step ``k`` over folds ``0..k-1``, for every prefix of
        consecutive folds received.
        """
        values: dict[int, float] = {}
        total = 0.0
        for k in range(len(folds)):
            if k not in folds:
                break
            total += folds[k]
            values[k + 1] = total / (k + 1)
        return values

    @property
    def enabled(self) -> bool:
        """Whether trials are ever pruned (runners then wait briefly for a verdict per fold)."""
        return True


class NoPruning(PruningStrategy):
    """Every trial runs all its folds."""

    name = "none"

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    @property
    def enabled(self) -> bool:
        return False


class MedianPruning(PruningStrategy):
    """Stop a trial whose running mean is worse than the median of earlier trials at the same fold."""

    name = "median"

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        # Enough finished trials for a meaningful median; from the first fold on.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


def _max_step(spec: ExperimentSpec) -> int:
    """The step of a trial's last intermediate value: its last rung's, else its fold count."""
    resource = spec.search.resource
    return resource.rungs()[-1].step if resource is not None else spec.objective.cv


class AshaPruning(PruningStrategy):
    """Asynchronous successive halving: only the top third at each rung (1, 3, 9 folds, or the resource's rungs) goes on."""

    name = "asha"

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=RUNG_FACTOR)


class HyperbandPruning(PruningStrategy):
    """Hyperband: several successive-halving brackets of different aggressiveness, on folds or the resource's rungs."""

    name = "hyperband"

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=_max_step(spec), reduction_factor=RUNG_FACTOR)


class WilcoxonPruning(PruningStrategy):
    """Fold-wise racing: a paired Wilcoxon test against the best trial's scores on the same folds."""

    name = "wilcoxon"

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)

    def intermediate(self, folds: Mapping[int, float]) -> dict[int, float]:
        return dict(folds)


PRUNERS: dict[str, type[PruningStrategy]] = {
    cls.name: cls for cls in (NoPruning, MedianPruning, AshaPruning, HyperbandPruning, WilcoxonPruning)
}


def pruning_for(spec: ExperimentSpec) -> PruningStrategy:
    """The strategy named by ``search.pruner``."""
    return PRUNERS[spec.search.pruner.value]()

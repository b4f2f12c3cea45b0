"""Early stopping: each an Optuna pruner behind one small plug-in interface.

Runners report the objective of every CV fold as it finishes (``trials.progress``); the
scheduler turns those fold scores into the intermediate values its pruner expects and asks
``should_prune``. Adding a pruner is one subclass of :class:`PruningStrategy` registered with
:func:`register_pruner`; its :meth:`PruningStrategy.check` holds the rules only it has.

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

from tweakline.errors import Problem
from tweakline.proto.tweakfile import RUNG_FACTOR, ExperimentSpec
from tweakline.search.names import unknown_name


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

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        """Problems with ``spec`` that only this pruner has (paths from the tweak file's root). Default: none."""
        return []


def _single_metric(spec: ExperimentSpec) -> list[Problem]:
    """Pruners that stop trials compare one metric: refuse a multi-objective search."""
    if spec.objective.secondary:
        return [
            Problem(
                "spec.search.pruner",
                f"pruners compare a single metric; with objective.secondary use pruner: none, got '{spec.search.pruner}'",
            )
        ]
    return []


def _no_rungs(spec: ExperimentSpec) -> list[Problem]:
    """For a pruner that does not judge rungs: refuse ``search.resource``."""
    if spec.search.resource is not None:
        return [
            Problem(
                "spec.search.pruner",
                "search.resource grows trials in rungs for a pruner to judge: expected asha, hyperband or median, "
                f"got '{spec.search.pruner}'",
            )
        ]
    return []


class NoPruning(PruningStrategy):
    """Every trial runs all its folds."""

    name = "none"

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.NopPruner()

    @property
    def enabled(self) -> bool:
        return False

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        return _no_rungs(spec)


class MedianPruning(PruningStrategy):
    """Stop a trial whose running mean is worse than the median of earlier trials at the same fold."""

    name = "median"

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        return _single_metric(spec)

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        # Enough finished trials for a meaningful median; from the first fold on.
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


def _max_step(spec: ExperimentSpec) -> int:
    """The step of a trial's last intermediate value: its last rung's, else its fold count."""
    resource = spec.search.resource
    if resource is None and spec.model.trainer is not None:
        return spec.model.trainer.steps  # a trainer reports once per step (epoch)
    return resource.rungs()[-1].step if resource is not None else spec.objective.cv


class AshaPruning(PruningStrategy):
    """Asynchronous successive halving: only the top third at each rung (1, 3, 9 folds, or the resource's rungs) goes on."""

    name = "asha"

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        return _single_metric(spec)

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=RUNG_FACTOR)


class HyperbandPruning(PruningStrategy):
    """Hyperband: several successive-halving brackets of different aggressiveness, on folds or the resource's rungs."""

    name = "hyperband"

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        return _single_metric(spec)

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=_max_step(spec), reduction_factor=RUNG_FACTOR)


class WilcoxonPruning(PruningStrategy):
    """Fold-wise racing: a paired Wilcoxon test against the best trial's scores on the same folds."""

    name = "wilcoxon"

    def pruner(self, spec: ExperimentSpec) -> optuna.pruners.BasePruner:
        return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)

    def intermediate(self, folds: Mapping[int, float]) -> dict[int, float]:
        return dict(folds)

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        # Racing compares fold by fold: it has no use for rungs of a resource.
        return _no_rungs(spec) or _single_metric(spec)


PRUNERS: dict[str, type[PruningStrategy]] = {}


def register_pruner(cls: type[PruningStrategy]) -> type[PruningStrategy]:
    """Register ``cls`` under ``cls.name`` (usable as a class decorator); a name is registered once."""
    if cls.name in PRUNERS and PRUNERS[cls.name] is not cls:
        raise ValueError(f"pruner '{cls.name}' is already registered as {PRUNERS[cls.name].__qualname__}")
    PRUNERS[cls.name] = cls
    return cls


for _builtin in (NoPruning, MedianPruning, AshaPruning, HyperbandPruning, WilcoxonPruning):
    register_pruner(_builtin)


def pruning_for(spec: ExperimentSpec) -> PruningStrategy:
    """The strategy named by ``search.pruner`` (a name :func:`check_pruning` has accepted)."""
    cls = PRUNERS.get(spec.search.pruner)
    if cls is None:
        raise KeyError(unknown_name(spec.search.pruner, PRUNERS))
    return cls()


def check_pruning(spec: ExperimentSpec) -> list[Problem]:
    """Problems with ``search.pruner`` (or ``search.early_stopping.algorithm``): an unknown name, or the pruner's own rules."""
    if spec.search.pruner not in PRUNERS:
        # Written as early_stopping.algorithm, the name is reported where it was written.
        stopping = spec.search.early_stopping
        path = "spec.search.early_stopping.algorithm" if stopping is not None else "spec.search.pruner"
        return [Problem(path, unknown_name(spec.search.pruner, PRUNERS))]
    return pruning_for(spec).check(spec)

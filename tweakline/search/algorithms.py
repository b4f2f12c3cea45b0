"""Search algorithms: each an Optuna sampler behind one small plug-in interface.

Adding an algorithm is one subclass of :class:`SearchStrategy` plus one line in
:data:`STRATEGIES` (and its name in ``tweakline.proto.tweakfile.SearchAlgorithm``).
"""

from __future__ import annotations

import importlib.util
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import optuna

from tweakline.errors import Problem
from tweakline.proto.tweakfile import SearchSpec
from tweakline.search.space import grid_values


class SearchStrategy(ABC):
    """How the next parameters are chosen, given the trials so far."""

    name: ClassVar[str]

    @abstractmethod
    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        """The Optuna sampler for this search (seeded from ``search.seed``)."""

    def warm_sampler(self, search: SearchSpec, history: Sequence[optuna.trial.FrozenTrial]) -> optuna.samplers.BaseSampler:
        """The sampler when earlier trials seed the study (they are also added to it).

        Most samplers learn from the study's trials and need nothing more; override for one that
        takes its prior at construction.
        """
        return self.sampler(search)

    def trial_limit(self, search: SearchSpec, max_trials: int) -> int:
        """How many trials the search can use at most (exhaustive strategies stop early)."""
        return max_trials

    def unavailable(self) -> str | None:
        """Why this strategy cannot run on this installation (a missing optional library), else ``None``."""
        return None


class RandomSearch(SearchStrategy):
    """Independent uniform (or log-uniform) draws: the baseline every search must beat."""

    name = "random"

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=search.seed)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its ``study.stop()`` on the last point.

    ``Study.stop`` only works inside ``optimize``; under ask/tell it raises on the last tell.
    The scheduler already stops at :meth:`GridSearch.trial_limit` (the grid's size).
    """

    def after_trial(self, study, trial, state, values) -> None:
        return None


class GridSearch(SearchStrategy):
    """Every combination of the listed values, in a seeded random order."""

    name = "grid"

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return _AskTellGridSampler(grid_values(search.space), seed=search.seed)

    def trial_limit(self, search: SearchSpec, max_trials: int) -> int:
        size = math.prod(len(v) for v in grid_values(search.space).values())
        return min(max_trials, size)


class TpeSearch(SearchStrategy):
    """Tree-structured Parzen estimator; the constant liar keeps parallel proposals apart."""

    name = "tpe"

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=search.seed, multivariate=True, group=True, constant_liar=True)


class GpSearch(SearchStrategy):
    """Gaussian-process Bayesian optimisation: sample-efficient on small continuous spaces."""

    name = "gp"

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.GPSampler(seed=search.seed)

    def unavailable(self) -> str | None:
        # Optuna's GP sampler is built on PyTorch, a large optional dependency (extra "gp").
        if importlib.util.find_spec("torch") is None:
            return "gp needs PyTorch, which is not installed here: pip install 'tweakline[gp]', or use tpe"
        return None


WARM_CMAES_MIN_TRIALS = 10


class CmaEsSearch(SearchStrategy):
    """CMA-ES for continuous parameters (categoricals are sampled at random)."""

    name = "cmaes"

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.CmaEsSampler(seed=search.seed, warn_independent_sampling=False)

    def warm_sampler(self, search: SearchSpec, history: Sequence[optuna.trial.FrozenTrial]) -> optuna.samplers.BaseSampler:
        # CMA-ES ignores trials it did not generate: its warm start (mean, step size, covariance
        # from the best earlier trials) is given at construction. Too few trials give no prior.
        complete = [t for t in history if t.state is optuna.trial.TrialState.COMPLETE]
        if len(complete) < WARM_CMAES_MIN_TRIALS:
            return self.sampler(search)
        return optuna.samplers.CmaEsSampler(seed=search.seed, warn_independent_sampling=False, source_trials=complete)


class QmcSearch(SearchStrategy):
    """Quasi-Monte-Carlo (scrambled Sobol): a space-filling random search."""

    name = "qmc"

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.QMCSampler(seed=search.seed, warn_independent_sampling=False)


class Nsga2Search(SearchStrategy):
    """NSGA-II, a genetic algorithm for several metrics at once (a Pareto front)."""

    name = "nsga2"

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        # Optuna's default population (50) is larger than most CI budgets: evolve sooner.
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=16)


STRATEGIES: dict[str, type[SearchStrategy]] = {
    cls.name: cls for cls in (RandomSearch, GridSearch, TpeSearch, GpSearch, CmaEsSearch, QmcSearch, Nsga2Search)
}


def strategy_for(search: SearchSpec) -> SearchStrategy:
    """The strategy named by ``search.algorithm``."""
    return STRATEGIES[search.algorithm.value]()


def check_search(search: SearchSpec) -> list[Problem]:
    """Problems with ``search`` on this installation (run before anything starts)."""
    why = strategy_for(search).unavailable()
    return [] if why is None else [Problem("spec.search.algorithm", why)]

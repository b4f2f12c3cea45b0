"""Search algorithms: each an Optuna sampler behind one small plug-in interface.

Adding an algorithm is one subclass of :class:`SearchStrategy` registered with
:func:`register_strategy`: the tweak file names it by string, :func:`check_search` checks the
name against :data:`STRATEGIES` and runs the strategy's own :meth:`SearchStrategy.check`, and the
JSON Schema lists the registered names (``tweakline.cli.generate``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import optuna

from tweakline.errors import Problem
from tweakline.proto.tweakfile import CategoricalParam, ExperimentSpec, FloatParam, SearchSpec
from tweakline.search.names import unknown_name
from tweakline.search.space import IndependentDraws, grid_values


def continued_seed(seed: int, issued: int) -> int:
    """A seed for a sampler that goes on after ``issued`` trials of a search seeded with ``seed``."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{issued}".encode()).digest()[:4], "big")


class SearchStrategy(ABC):
    """How the next parameters are chosen, given the trials so far."""

    name: ClassVar[str]
    # Whether an ask costs next to nothing whatever the history (random draws, a grid, Sobol
    # points): the scheduler then asks on its event loop instead of in its sampler thread.
    cheap: ClassVar[bool] = False

    @abstractmethod
    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        """The Optuna sampler for this search (seeded from ``search.seed``)."""

    def warm_sampler(self, search: SearchSpec, history: Sequence[optuna.trial.FrozenTrial]) -> optuna.samplers.BaseSampler:
        """The sampler when earlier trials seed the study (they are also added to it).

        Most samplers learn from the study's trials and need nothing more; override for one that
        takes its prior at construction.
        """
        return self.sampler(search)

    def continued(self, search: SearchSpec, issued: int) -> SearchSpec:
        """The search settings of a run rebuilt (after a restart or a handover) with ``issued``
        trials issued already.

        A sampler's random state is not kept with the experiment, and a new one seeded with the
        experiment's seed would propose the first trials' parameters again. Default: a new seed,
        derived from the seed and ``issued`` (a seeded search stays reproducible); the first run
        keeps the experiment's own seed.
        """
        if search.seed is None:
            return search
        return search.model_copy(update={"seed": continued_seed(search.seed, issued)})

    def draws(self, search: SearchSpec) -> IndependentDraws | None:
        """Proposals that need no study (each trial's parameters drawn from the space alone), or
        ``None`` (default): the scheduler then asks the sampler through an Optuna study.

        With draws and no pruner, the scheduler keeps no Optuna trials for the experiment.
        """
        return None

    def resume(self, sampler: optuna.samplers.BaseSampler, issued: int) -> None:
        """``sampler`` is new, for a run rebuilt with ``issued`` trials issued already: make it go
        on after them. Default: nothing (see :meth:`continued`); override for a sampler whose
        sequence does not come from its seed.
        """
        return None

    def trial_limit(self, search: SearchSpec, max_trials: int) -> int:
        """How many trials the search can use at most (exhaustive strategies stop early)."""
        return max_trials

    def unavailable(self) -> str | None:
        """Why this strategy cannot run on this installation (a missing optional library), else ``None``."""
        return None

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        """Problems with ``spec`` that only this strategy has (paths from the tweak file's root).

        Default: none. Rules that hold whatever the algorithm stay in ``tweakline.proto.tweakfile``.
        """
        return []


class RandomSearch(SearchStrategy):
    """Independent uniform (or log-uniform) draws: the baseline every search must beat."""

    name = "random"
    cheap = True

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=search.seed)

    def draws(self, search: SearchSpec) -> IndependentDraws | None:
        return IndependentDraws(search.seed)  # the sampler's own proposals, without a study


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
    cheap = True

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return _AskTellGridSampler(grid_values(search.space), seed=search.seed)

    def continued(self, search: SearchSpec, issued: int) -> SearchSpec:
        # The seed orders the grid, and a trial's number picks its point in that order: a rebuilt
        # study numbers its trials on from the ones replayed, so the same order goes on unvisited.
        return search

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        # Every point of the grid must be listed: no parameter may depend on another, floats need a step.
        for name, param in spec.search.space.items():
            if param.when:
                return [
                    Problem(
                        f"spec.search.space.{name}.when",
                        "grid search does not support conditional parameters; use random or tpe, or drop 'when'",
                    )
                ]
            if isinstance(param, FloatParam) and param.step is None:
                return [
                    Problem(
                        f"spec.search.space.{name}.step",
                        "grid search needs a step for float parameters (or use categorical choices), got none",
                    )
                ]
        return []

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

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        if all(isinstance(p, CategoricalParam) for p in spec.search.space.values()):
            return [
                Problem(
                    "spec.search.algorithm",
                    "cmaes needs at least one float or int parameter; this space is all categorical, use tpe",
                )
            ]
        if spec.objective.secondary:
            return [
                Problem("spec.search.algorithm", "cmaes optimises a single metric; with objective.secondary use nsga2 or tpe")
            ]
        return []

    def warm_sampler(self, search: SearchSpec, history: Sequence[optuna.trial.FrozenTrial]) -> optuna.samplers.BaseSampler:
        # CMA-ES ignores trials it did not generate: its warm start (mean, step size, covariance
        # from the best earlier trials) is given at construction. Too few trials give no prior.
        complete = [t for t in history if t.state is optuna.trial.TrialState.COMPLETE]
        if len(complete) < WARM_CMAES_MIN_TRIALS:
            return self.sampler(search)
        return optuna.samplers.CmaEsSampler(seed=search.seed, warn_independent_sampling=False, source_trials=complete)


class _ContinuedQmcSampler(optuna.samplers.QMCSampler):
    """Optuna's QMC sampler, whose sequence can start after the points a rebuilt run issued before.

    Optuna counts the points drawn in the study's own attributes, which a rebuilt study starts
    again from zero: without the offset it would propose the first points again.
    """

    def __init__(self, **kwargs: object):
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.skip = 0

    def _find_sample_id(self, study, search_space) -> int:  # type: ignore[no-untyped-def]
        return super()._find_sample_id(study, search_space) + self.skip


class QmcSearch(SearchStrategy):
    """Quasi-Monte-Carlo (Sobol points): a space-filling random search."""

    name = "qmc"
    cheap = True

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return _ContinuedQmcSampler(seed=search.seed, warn_independent_sampling=False)

    def resume(self, sampler: optuna.samplers.BaseSampler, issued: int) -> None:
        if isinstance(sampler, _ContinuedQmcSampler):
            sampler.skip = issued


class Nsga2Search(SearchStrategy):
    """NSGA-II, a genetic algorithm for several metrics at once (a Pareto front)."""

    name = "nsga2"

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        # Optuna's default population (50) is larger than most CI budgets: evolve sooner.
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=16)

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        if not spec.objective.secondary:
            return [
                Problem(
                    "spec.search.algorithm",
                    "nsga2 optimises several metrics; list them in objective.secondary (e.g. recall_macro), or use tpe",
                )
            ]
        return []


STRATEGIES: dict[str, type[SearchStrategy]] = {}


def register_strategy(cls: type[SearchStrategy]) -> type[SearchStrategy]:
    """Register ``cls`` under ``cls.name`` (usable as a class decorator); a name is registered once."""
    if cls.name in STRATEGIES and STRATEGIES[cls.name] is not cls:
        raise ValueError(f"search algorithm '{cls.name}' is already registered as {STRATEGIES[cls.name].__qualname__}")
    STRATEGIES[cls.name] = cls
    return cls


for _builtin in (GridSearch, RandomSearch, TpeSearch, GpSearch, CmaEsSearch, QmcSearch, Nsga2Search):
    register_strategy(_builtin)


def strategy_for(search: SearchSpec) -> SearchStrategy:
    """The strategy named by ``search.algorithm`` (a name :func:`check_search` has accepted)."""
    cls = STRATEGIES.get(search.algorithm)
    if cls is None:
        raise KeyError(unknown_name(search.algorithm, STRATEGIES))
    return cls()


def check_search_rules(spec: ExperimentSpec) -> list[Problem]:
    """Problems with the search (algorithm and pruner) of ``spec``, wherever it runs.

    Unknown names are reported against the registries; a known algorithm and pruner then apply
    their own rules.
    """
    from tweakline.search.pruning import check_pruning

    cls = STRATEGIES.get(spec.search.algorithm)
    if cls is None:
        problems = [Problem("spec.search.algorithm", unknown_name(spec.search.algorithm, STRATEGIES))]
    else:
        problems = cls().check(spec)
    return problems + check_pruning(spec)


def check_search(spec: ExperimentSpec) -> list[Problem]:
    """Problems with the search of ``spec`` on this installation (run before anything starts).

    :func:`check_search_rules`, and whether the algorithm can run here (an optional library).
    """
    cls = STRATEGIES.get(spec.search.algorithm)
    why = cls().unavailable() if cls is not None else None
    unavailable = [] if why is None else [Problem("spec.search.algorithm", why)]
    return unavailable + check_search_rules(spec)

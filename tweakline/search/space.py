"""The tweak file's search space as Optuna distributions, with conditional parameters.

A parameter with ``when`` is suggested only when the parameters it depends on took one of the
listed values, so the sampler never learns from (and the estimator never receives) inactive ones.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tweakline.proto.tweakfile import CategoricalParam, FloatParam, IntParam, ParamSpec


def distribution(param: ParamSpec) -> BaseDistribution:
    """The Optuna distribution of one parameter."""
    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, IntParam):
        return IntDistribution(param.low, param.high, log=param.log, step=param.step)
    return CategoricalDistribution(param.choices)


def ordered(space: dict[str, ParamSpec]) -> list[str]:
    """Parameter names with every parameter after those its ``when`` refers to."""
    done: list[str] = []
    pending = dict(space)
    while pending:
        progressed = False
        for name, param in list(pending.items()):
            if all(dep in done for dep in (param.when or {})):
                done.append(name)
                del pending[name]
                progressed = True
        if not progressed:  # a cycle: validation should have refused it; keep declaration order
            done.extend(pending)
            break
    return done


def is_active(param: ParamSpec, chosen: dict[str, Any]) -> bool:
    """Whether a (possibly conditional) parameter applies, given the values chosen so far."""
    return all(name in chosen and chosen[name] in values for name, values in (param.when or {}).items())


def suggest(trial: optuna.Trial, space: dict[str, ParamSpec], order: list[str] | None = None) -> dict[str, Any]:
    """Ask ``trial`` for a value of every active parameter (in ``order``, :func:`ordered` of ``space`` if not given)."""
    chosen: dict[str, Any] = {}
    for name in ordered(space) if order is None else order:
        param = space[name]
        if not is_active(param, chosen):
            continue
        if isinstance(param, FloatParam):
            chosen[name] = trial.suggest_float(name, param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, IntParam):
            chosen[name] = trial.suggest_int(name, param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, CategoricalParam):
            chosen[name] = trial.suggest_categorical(name, param.choices)
    return chosen


class IndependentDraws:
    """Random search's proposals without an Optuna study: exactly what ``study.ask()`` and
    :func:`suggest` give with a ``RandomSampler`` of the same seed, in the same order.

    A random search learns nothing from earlier trials, so keeping them in a study (a trial
    created, every value stored, the result told) is pure cost on the scheduler's path: about
    0.04 ms per trial against 0.012 ms per parameter drawn here (docs/benchmarks.md, sixth
    round). Values come from the sampler's own ``sample_independent``, which reads neither the
    study nor the trial; a single-valued parameter takes its value without a draw, and an
    enqueued (fixed) value is used as given, as :meth:`optuna.Trial.suggest_float` does.
    """

    def __init__(self, seed: int | None):
        self._sampler = optuna.samplers.RandomSampler(seed=seed)
        self._distributions: dict[str, BaseDistribution] = {}

    def __call__(self, space: dict[str, ParamSpec], order: list[str], fixed: dict[str, Any] | None = None) -> dict[str, Any]:
        """One trial's parameters: ``fixed`` values where given, draws for the other active ones."""
        chosen: dict[str, Any] = {}
        for name in order:
            param = space[name]
            if not is_active(param, chosen):
                continue
            dist = self._distributions.get(name)
            if dist is None:
                dist = self._distributions[name] = distribution(param)
            if fixed is not None and name in fixed:
                value = fixed[name]
            elif dist.single():  # Optuna takes the one value without asking the sampler
                value = dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
            else:
                value = self._sampler.sample_independent(None, None, name, dist)  # type: ignore[arg-type]
            chosen[name] = int(value) if isinstance(param, IntParam) else value
        return chosen


def distributions_of(params: dict[str, Any], space: dict[str, ParamSpec]) -> dict[str, BaseDistribution] | None:
    """Distributions for recorded ``params`` if they still fit ``space``, else ``None`` (for replaying history)."""
    result: dict[str, BaseDistribution] = {}
    for name, value in params.items():
        param = space.get(name)
        if param is None:
            return None
        dist = distribution(param)
        try:
            if not dist._contains(dist.to_internal_repr(value)):
                return None
        except (ValueError, TypeError):
            return None
        result[name] = dist
    return result


def grid_values(space: dict[str, ParamSpec]) -> dict[str, list[Any]]:
    """Every value of every parameter, for grid search (floats need a step)."""
    grid: dict[str, list[Any]] = {}
    for name, param in space.items():
        if isinstance(param, CategoricalParam):
            grid[name] = list(param.choices)
        elif isinstance(param, IntParam):
            grid[name] = list(range(param.low, param.high + 1, param.step))
        else:
            assert param.step is not None  # enforced by SearchSpec validation
            count = int(round((param.high - param.low) / param.step)) + 1
            grid[name] = [
                round(param.low + i * param.step, 12) for i in range(count) if param.low + i * param.step <= param.high + 1e-12
            ]
    return grid

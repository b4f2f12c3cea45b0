"""The search space's study-less random draws against Optuna's own ask and suggest."""

from __future__ import annotations

import optuna
import pytest

from tests.factories import make_tweak
from tweakline.search.space import IndependentDraws, ordered, suggest

SPACE = {
    "C": {"type": "float", "low": 0.01, "high": 100.0, "log": True},
    "alpha": {"type": "float", "low": 0.0, "high": 1.0},
    "tol": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25},
    "n": {"type": "int", "low": 1, "high": 9},
    "width": {"type": "int", "low": 8, "high": 512, "log": True},
    "depth": {"type": "int", "low": 2, "high": 10, "step": 2},
    "one": {"type": "int", "low": 3, "high": 3},
    "kernel": {"type": "categorical", "choices": ["rbf", "poly", "linear"]},
    "degree": {"type": "int", "low": 2, "high": 4, "when": {"kernel": "poly"}},
    "coef0": {"type": "float", "low": 0.0, "high": 1.0, "when": {"kernel": ["poly", "linear"]}},
}


@pytest.mark.parametrize("seed", [0, 7])
def test_independent_draws_are_what_optuna_s_random_sampler_suggests(seed: int) -> None:
    space = make_tweak(search={"algorithm": "random", "seed": seed, "space": SPACE}).spec.search.space
    order = ordered(space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    draws = IndependentDraws(seed)
    fixed = {"kernel": "poly", "C": 5.0}  # an enqueued trial, as a warm start's re-run is
    study.enqueue_trial(fixed)
    expected = [suggest(study.ask(), space, order) for _ in range(300)]
    got = [draws(space, order, fixed)] + [draws(space, order) for _ in range(299)]

    assert got == expected
    assert [{k: type(v) for k, v in p.items()} for p in got] == [{k: type(v) for k, v in p.items()} for p in expected]
    assert {p["kernel"] for p in got} == {"rbf", "poly", "linear"} and all(p["one"] == 3 for p in got)

"""Every search algorithm and pruner runs through one contract; their own rules, moved out of the tweak file."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import ClassVar

import optuna
import pytest
import yaml

from tweakline.errors import InvalidTweakFileError, Problem
from tweakline.proto.tweakfile import ExperimentSpec, SearchSpec, TweakFile
from tweakline.search.algorithms import STRATEGIES, RandomSearch, SearchStrategy, check_search, register_strategy
from tweakline.search.pruning import PRUNERS, check_pruning
from tweakline.validation import validate_tweak_file

GOOD = {
    "apiVersion": "tweakline/v1",
    "kind": "Experiment",
    "metadata": {"name": "digits-svc"},
    "spec": {
        "dataset": {"source": "sklearn:iris"},
        "model": {"estimator": "sklearn.svm.SVC"},
        "search": {
            "algorithm": "tpe",
            "space": {
                "C": {"type": "float", "low": 0.1, "high": 1.0, "step": 0.3},
                "kernel": {"type": "categorical", "choices": ["rbf", "linear"]},
            },
        },
        "objective": {"metric": "accuracy", "cv": 3},
    },
}
# A spec built to break every built-in plug-in's own rule at once.
BAD_SEARCH = {
    "space": {
        "kernel": {"type": "categorical", "choices": ["rbf", "poly"]},
        "degree": {"type": "categorical", "choices": [2, 3], "when": {"kernel": "poly"}},
    },
    "resource": {"name": "fraction", "min": 0.1},
}


def spec_with(search: dict | None = None, objective: dict | None = None) -> ExperimentSpec:
    doc = copy.deepcopy(GOOD)
    doc["spec"]["search"].update(search or {})
    doc["spec"]["objective"].update(objective or {})
    return TweakFile.model_validate(doc).spec


def minimal_good(name: str, *, pruner: str = "none") -> ExperimentSpec:
    return spec_with({"algorithm": name, "pruner": pruner}, {"secondary": [{"metric": "f1_macro"}]} if name == "nsga2" else None)


# ---- the contract every registered search algorithm meets


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_algorithm_contract(name: str) -> None:
    cls = STRATEGIES[name]
    assert cls.name == name
    assert (cls.__doc__ or "").strip(), f"{cls.__qualname__} needs a docstring"
    strategy = cls()
    good = minimal_good(name)
    assert strategy.check(good) == []
    problems = strategy.check(spec_with({"algorithm": name, **BAD_SEARCH}, {"secondary": [{"metric": "f1_macro"}]}))
    assert isinstance(problems, list) and all(isinstance(p, Problem) for p in problems)
    assert all(p.path.startswith("spec.") for p in problems)
    if strategy.unavailable() is None:
        assert isinstance(strategy.sampler(good.search), optuna.samplers.BaseSampler)


@pytest.mark.parametrize("name", list(PRUNERS))
def test_pruner_contract(name: str) -> None:
    cls = PRUNERS[name]
    assert cls.name == name
    assert (cls.__doc__ or "").strip(), f"{cls.__qualname__} needs a docstring"
    pruning = cls()
    good = minimal_good("tpe", pruner=name)
    assert pruning.check(good) == []
    bad = spec_with({"pruner": name, **BAD_SEARCH}, {"secondary": [{"metric": "f1_macro"}]})
    problems = pruning.check(bad)
    assert isinstance(problems, list) and all(isinstance(p, Problem) for p in problems)
    assert all(p.path.startswith("spec.") for p in problems)
    assert isinstance(pruning.pruner(good), optuna.pruners.BasePruner)


# ---- each plug-in's own rules: the texts and paths the tweak file's validators used to report


@pytest.mark.parametrize(
    ("search", "objective", "path", "words"),
    [
        ({"algorithm": "bayes"}, None, "spec.search.algorithm", ["Input should be 'grid'", "'tpe'", "got 'bayes'"]),
        ({"pruner": "sometimes"}, None, "spec.search.pruner", ["'asha'", "got 'sometimes'"]),
        (
            {"early_stopping": {"algorithm": "sometimes"}},
            None,
            "spec.search.early_stopping.algorithm",
            ["'asha'", "got 'sometimes'"],
        ),
        (
            {"algorithm": "grid", "space": {"C": {"type": "float", "low": 0.1, "high": 1.0}}},
            None,
            "spec.search.space.C.step",
            ["grid search needs a step for float parameters (or use categorical choices), got none"],
        ),
        (
            {"algorithm": "grid", **BAD_SEARCH, "resource": None},
            None,
            "spec.search.space.degree.when",
            ["grid search does not support conditional parameters; use random or tpe, or drop 'when'"],
        ),
        (
            {"algorithm": "cmaes", "space": {"kernel": {"type": "categorical", "choices": ["rbf"]}}},
            None,
            "spec.search.algorithm",
            ["cmaes needs at least one float or int parameter; this space is all categorical, use tpe"],
        ),
        (
            {"algorithm": "cmaes"},
            {"secondary": [{"metric": "f1_macro"}]},
            "spec.search.algorithm",
            ["cmaes optimises a single metric; with objective.secondary use nsga2 or tpe"],
        ),
        (
            {"algorithm": "nsga2"},
            None,
            "spec.search.algorithm",
            ["nsga2 optimises several metrics; list them in objective.secondary (e.g. recall_macro), or use tpe"],
        ),
        (
            {"pruner": "median"},
            {"secondary": [{"metric": "f1_macro"}]},
            "spec.search.pruner",
            ["pruners compare a single metric; with objective.secondary use pruner: none, got 'median'"],
        ),
        (
            {"pruner": "wilcoxon", "resource": {"name": "fraction", "min": 0.1}},
            None,
            "spec.search.pruner",
            ["search.resource grows trials in rungs for a pruner to judge: expected asha, hyperband or median, got 'wilcoxon'"],
        ),
    ],
)
def test_plugin_rules_name_field_and_rule(search: dict, objective: dict | None, path: str, words: list[str]) -> None:
    problems = {p.path: p.message for p in check_search(spec_with(search, objective))}
    assert path in problems, problems
    assert all(w in problems[path] for w in words), problems[path]


def test_the_validation_entry_point_reports_plugin_rules(tmp_path) -> None:
    doc = copy.deepcopy(GOOD)
    doc["spec"]["search"] = {"algorithm": "cmaes", "space": {"kernel": {"type": "categorical", "choices": ["rbf"]}}}
    path = tmp_path / "bad.tweak.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(InvalidTweakFileError) as info:
        validate_tweak_file(path, ["sklearn."])
    assert [p.path for p in info.value.problems] == ["spec.search.algorithm"]


def test_a_good_spec_has_no_search_problems() -> None:
    assert check_pruning(spec_with({"pruner": "asha"})) == []
    assert check_search(spec_with({"algorithm": "grid"})) == []


# ---- adding an algorithm is one class and its registration


class _EveryOther(RandomSearch):
    """A throwaway algorithm: random search that refuses spaces of one parameter."""

    name: ClassVar[str] = "every-other"

    def check(self, spec: ExperimentSpec) -> list[Problem]:
        if len(spec.search.space) < 2:
            return [Problem("spec.search.space", "every-other needs two parameters")]
        return []

    def sampler(self, search: SearchSpec) -> optuna.samplers.BaseSampler:
        return optuna.samplers.RandomSampler(seed=search.seed)


@pytest.fixture
def every_other() -> Iterator[type[SearchStrategy]]:
    register_strategy(_EveryOther)
    yield _EveryOther
    del STRATEGIES[_EveryOther.name]


def test_a_registered_algorithm_is_listed_and_validated(every_other: type[SearchStrategy], tmp_path) -> None:
    from tweakline.cli.generate import render_tweakfile_schema

    assert "every-other" in STRATEGIES
    assert check_search(spec_with({"algorithm": "every-other"})) == []
    one = check_search(spec_with({"algorithm": "every-other", "space": {"C": {"type": "float", "low": 0.1, "high": 1}}}))
    assert [(p.path, p.message) for p in one] == [("spec.search.space", "every-other needs two parameters")]
    assert '"every-other"' in render_tweakfile_schema()
    doc = copy.deepcopy(GOOD)
    doc["spec"]["search"]["algorithm"] = "every-other"
    path = tmp_path / "new.tweak.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert validate_tweak_file(path, ["sklearn."]).spec.search.algorithm == "every-other"


def test_a_name_is_registered_once() -> None:
    class Impostor(RandomSearch):
        """Not the real tpe."""

        name = "tpe"

    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Impostor)

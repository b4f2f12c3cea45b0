"""The tweak file: valid files load; every invalid one is refused with the field, the value and the rule."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tweakline.errors import InvalidTweakFileError
from tweakline.proto.tweakfile import TweakFile, parse_duration
from tweakline.validation.loading import load_tweak_file, parse_tweak_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BASE = {
    "apiVersion": "tweakline/v1",
    "kind": "Experiment",
    "metadata": {"name": "digits-svc"},
    "spec": {
        "dataset": {"source": "sklearn:digits", "test_size": 0.2},
        "model": {"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.preprocessing.StandardScaler"]},
        "search": {
            "algorithm": "tpe",
            "space": {
                "C": {"type": "float", "low": 1e-3, "high": 1e3, "log": True},
                "kernel": {"type": "categorical", "choices": ["rbf", "poly"]},
                "degree": {"type": "int", "low": 2, "high": 5, "when": {"kernel": "poly"}},
            },
        },
        "objective": {"metric": "accuracy", "cv": 3},
        "budget": {"max_trials": 10, "parallelism": 2, "timeout": "15m"},
        "gate": {"thresholds": {"accuracy": 0.9}},
        "deploy": {"target": "local", "release": "digits"},
    },
}


def with_change(path: str, value: object) -> dict:
    """BASE with the value at a dotted path replaced (``...=None`` deletes the key)."""
    doc = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


DELETE = object()


def test_base_document_is_valid() -> None:
    tweak = TweakFile.model_validate(BASE)
    assert tweak.spec.budget.timeout == 900.0
    assert tweak.spec.search.space["degree"].when == {"kernel": ["poly"]}
    assert tweak.spec.objective.maximize is True


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads(example: Path) -> None:
    assert load_tweak_file(example).apiVersion == "tweakline/v1"


# (change, expected path, words the message must contain)
BAD = [
    ("spec.search.space.C.low", -1, "spec.search.space.C.low", ["must be > 0 when log is true", "got -1"]),
    ("spec.search.space.C.high", 1e-4, "spec.search.space.C.high", ["must be >= low", "0.0001"]),
    ("spec.search.space.C.type", "floaty", "spec.search.space.C", ["floaty", "float", "categorical"]),
    ("spec.search.space.kernel.choices", [], "spec.search.space.kernel.choices", ["at least 1"]),
    ("spec.search.space.kernel.choices", ["rbf", "rbf"], "spec.search.space.kernel.choices", ["distinct"]),
    ("spec.search.space.degree.when", {"kernel": "linear"}, "spec.search.space.degree.when.kernel", ["linear", "choices"]),
    ("spec.search.space.degree.when", {"gamma": "x"}, "spec.search.space.degree.when.gamma", ["another parameter", "gamma"]),
    ("spec.search.space", {}, "spec.search.space", ["at least 1"]),
    ("spec.search.seed", -4, "spec.search.seed", ["greater than or equal to 0", "-4"]),
    ("spec.objective.metric", "acuracy", "spec.objective.metric", ["acuracy", "accuracy"]),
    ("spec.objective.cv", 1, "spec.objective.cv", ["greater than or equal to 2", "got 1"]),
    ("spec.objective.direction", "up", "spec.objective.direction", ["maximize", "'up'"]),
    ("spec.budget.max_trials", 0, "spec.budget.max_trials", ["greater than 0", "got 0"]),
    ("spec.budget.max_trials", "many", "spec.budget.max_trials", ["integer", "many"]),
    ("spec.budget.parallelism", -2, "spec.budget.parallelism", ["greater than 0", "-2"]),
    ("spec.budget.timeout", "15x", "spec.budget.timeout", ["duration", "15x"]),
    ("spec.budget.timeout", "-5m", "spec.budget.timeout", ["duration", "-5m"]),
    ("spec.dataset.test_size", 1.5, "spec.dataset.test_size", ["less than 1", "1.5"]),
    ("spec.model.estimator", "not a path", "spec.model.estimator", ["dotted import path", "not a path"]),
    ("spec.model.pipeline", ["ok.Path", "bad path"], "spec.model.pipeline", ["bad path"]),
    ("spec.gate.thresholds", {"accuracyy": 0.9}, "spec.gate.thresholds", ["accuracyy"]),
    ("spec.gate.thresholds", {"r2": 0.9}, "spec.gate.thresholds.r2", ["regression", "accuracy"]),
    ("spec.gate.beat_production_by", -0.1, "spec.gate.beat_production_by", ["greater than or equal to 0", "-0.1"]),
    ("spec.deploy.release", "Bad_Name", "spec.deploy.release", ["Bad_Name", "pattern"]),
    ("metadata.name", "Digits SVC", "metadata.name", ["Digits SVC", "pattern"]),
    ("apiVersion", "tweakline/v2", "apiVersion", ["tweakline/v1", "tweakline/v2"]),
    ("kind", "Job", "kind", ["Experiment", "Job"]),
    ("spec.objective", DELETE, "spec.objective", ["required"]),
    ("spec.dataset.colour", "red", "spec.dataset.colour", ["unknown field", "source"]),
    ("spec.extra", 1, "spec.extra", ["unknown field", "dataset"]),
]


@pytest.mark.parametrize(
    ("change", "value", "path", "words"), BAD, ids=[f"{c[0]}=" + ("<deleted>" if c[1] is DELETE else repr(c[1])) for c in BAD]
)
def test_invalid_documents_name_field_value_and_rule(change: str, value: object, path: str, words: list[str]) -> None:
    with pytest.raises(InvalidTweakFileError) as info:
        parse_tweak_file(yaml.safe_dump(with_change(change, value)), "bad.yaml")
    problems = {p.path: p.message for p in info.value.problems}
    assert path in problems, f"expected a problem at {path}, got {problems}"
    for word in words:
        assert word in problems[path], f"{word!r} missing from {problems[path]!r}"


def test_every_problem_is_reported_at_once() -> None:
    doc = with_change("spec.budget.max_trials", 0)
    doc["spec"]["objective"]["metric"] = "nope"
    doc["spec"]["dataset"]["test_size"] = 2
    with pytest.raises(InvalidTweakFileError) as info:
        parse_tweak_file(yaml.safe_dump(doc))
    paths = {p.path for p in info.value.problems}
    assert {"spec.budget.max_trials", "spec.objective.metric", "spec.dataset.test_size"} <= paths


def test_yaml_syntax_error_gives_the_line() -> None:
    text = "apiVersion: tweakline/v1\nkind: Experiment\nmetadata: {name: x\nspec: {}\n"
    with pytest.raises(InvalidTweakFileError) as info:
        parse_tweak_file(text)
    assert "line 4" in str(info.value) or "line 3" in str(info.value)


def test_non_mapping_document_is_refused() -> None:
    with pytest.raises(InvalidTweakFileError, match="expected a mapping"):
        parse_tweak_file("- just\n- a list\n")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidTweakFileError, match="cannot read the file"):
        load_tweak_file(tmp_path / "nope.yaml")


@pytest.mark.parametrize(("text", "seconds"), [(90, 90.0), ("90s", 90.0), ("15m", 900.0), ("1.5h", 5400.0), ("500ms", 0.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_error_metric_defaults_to_minimize() -> None:
    doc = copy.deepcopy(BASE)
    doc["spec"]["objective"] = {"metric": "rmse"}
    doc["spec"]["gate"] = {}
    assert TweakFile.model_validate(doc).spec.objective.maximize is False


DESIGN_SPELLING = """
apiVersion: tweakline/v1
kind: Experiment
metadata: {name: digits-svc}
spec:
  dataset: {source: "sklearn:digits", test_size: 0.2}
  model: {estimator: sklearn.svm.SVC, pipeline: [sklearn.preprocessing.StandardScaler], fixed: {}}
  search:
    algorithm: tpe
    space:
      C:      {type: float, low: 1.0e-3, high: 1.0e3, log: true}
      kernel: {type: categorical, choices: [rbf, poly, sigmoid]}
    early_stopping: %s
  objective: {metric: accuracy, direction: maximize, cv: 3}
  budget: {max_trials: 40, parallelism: 4, timeout: 15m}
"""


def test_the_design_docs_early_stopping_spelling_sets_the_pruner_and_resource() -> None:
    from tweakline.proto.tweakfile import ResourceName

    plain = parse_tweak_file(DESIGN_SPELLING % "{algorithm: asha}")
    assert plain.spec.search.pruner == "asha" and plain.spec.search.resource is None
    rungs = parse_tweak_file(DESIGN_SPELLING % "{algorithm: hyperband, resource: {name: fraction, min: 0.1}}")
    assert rungs.spec.search.pruner == "hyperband"
    assert rungs.spec.search.resource is not None and rungs.spec.search.resource.name is ResourceName.FRACTION
    # what the services send each other (a dump) reads back the same
    assert TweakFile.model_validate_json(rungs.model_dump_json()) == rungs


@pytest.mark.parametrize(
    ("early_stopping", "extra", "path", "words"),
    [
        (
            "{algorithm: asha, resource: {name: fraction, min: 0.9}}",
            "",
            "spec.search.early_stopping.resource.min",
            ["at most max / 3", "0.9"],
        ),
        ("{algorithm: asha, when: later}", "", "spec.search.early_stopping.when", ["unknown field"]),
        ("{algorithm: asha}", "    pruner: median\n", "spec.search.pruner", ["median", "asha", "write early stopping once"]),
    ],
)
def test_a_bad_early_stopping_names_its_field(early_stopping: str, extra: str, path: str, words: list[str]) -> None:
    text = DESIGN_SPELLING % early_stopping
    text = text.replace("    early_stopping:", extra + "    early_stopping:")
    with pytest.raises(InvalidTweakFileError) as bad:
        parse_tweak_file(text)
    messages = {p.path: p.message for p in bad.value.problems}
    assert path in messages, messages
    assert all(w in messages[path] for w in words), messages

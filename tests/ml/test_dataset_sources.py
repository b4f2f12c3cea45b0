"""Every registered dataset source (one loader per scheme) meets the plug-in contract, and owns its rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.factories import tweak_dict
from tweakline.errors import DatasetError, Problem
from tweakline.ml.datasets import check_dataset, load_dataset
from tweakline.ml.sources import LOADERS, Dataset, DatasetLoader, loader_for, register_source, source_problems
from tweakline.proto.tweakfile import DatasetSpec
from tweakline.validation import inspect

ALLOWED = ["sklearn."]

SHA = "ab" * 32


def good_spec(scheme: str, tmp_path: Path) -> DatasetSpec:
    if scheme == "sklearn":
        return DatasetSpec(source="sklearn:iris")
    if scheme == "csv":
        table = tmp_path / "tiny.csv"
        table.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(10)))
        return DatasetSpec(source=f"csv:{table}", target="y")
    if scheme == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = tmp_path / "tiny.parquet"
        pq.write_table(pa.table({"x": list(range(10)), "y": [i % 2 for i in range(10)]}), table)
        return DatasetSpec(source=f"parquet:{table}", target="y")
    if scheme == "object":
        return DatasetSpec(source=f"object:csv:{SHA}", target="y")
    if scheme == "https":
        return DatasetSpec(source="https://example.org/data.csv", target="y")
    raise AssertionError(f"add a minimal good spec for the new scheme {scheme!r}")


def bad_source(scheme: str) -> str:
    """A source of the scheme that breaks its own syntax rule."""
    return {"sklearn": "sklearn:mnist", "object": "object:csv:abc", "https": "https://example.org/data.parquet"}.get(
        scheme, f"{scheme}:"
    )


def bad_spec(scheme: str, tmp_path: Path) -> DatasetSpec:
    # Built without validation: the loader's check must still answer with Problems.
    if scheme == "sklearn":
        return DatasetSpec(source="sklearn:digits")  # a classification set, checked against a regressor below
    return DatasetSpec.model_construct(source=f"{scheme}:{tmp_path / 'missing.csv'}", target="nope", test_size=0.2, seed=0)


@pytest.mark.parametrize("scheme", list(LOADERS))
def test_dataset_source_contract(scheme: str, tmp_path: Path) -> None:
    loader = LOADERS[scheme]
    assert isinstance(loader, DatasetLoader)
    assert loader.scheme == scheme
    assert (type(loader).__doc__ or "").strip(), f"{type(loader).__qualname__} needs a docstring"
    assert loader.form.startswith(scheme), f"{scheme}: form {loader.form!r} should show how the source is written"
    good = good_spec(scheme, tmp_path)
    assert loader_for(good.source) is loader
    # its own syntax rule: a good source passes, a bad one is refused naming the value or the rule
    assert loader.source_problem(good.source) is None
    assert source_problems(good.source, good.target) == []
    bad = bad_source(scheme)
    why = loader.source_problem(bad)
    assert why and (bad in why or bad.partition(":")[2] in why), f"{scheme}: {bad!r} should be refused naming it, got {why!r}"
    assert [p.path for p in source_problems(bad, "y")] == ["spec.dataset.source"]
    with pytest.raises(DatasetError):  # and never reaches the loader
        loader_for(bad)
    # a table needs a target column, a bundled dataset does not
    without = [p.path for p in source_problems(good.source, None)]
    assert without == (["spec.dataset.target"] if loader.needs_target else [])
    assert check_dataset(good, tmp_path, task="classification") == [] or scheme not in ("sklearn", "csv", "parquet")
    problems = loader.check(bad_spec(scheme, tmp_path), tmp_path, "regression")
    assert isinstance(problems, list) and all(isinstance(p, Problem) and p.path.startswith("spec.dataset") for p in problems)
    if scheme in (
        "sklearn",
        "csv",
        "parquet",
    ):  # the offline ones load a tiny dataset; object: and https: need a store or network
        assert problems, f"{scheme} should report the bad spec"
        data = loader.load(good, tmp_path, None)
        assert isinstance(data, Dataset) and data.n_samples > 0


def test_an_unknown_scheme_lists_the_registered_ones() -> None:
    spec = DatasetSpec.model_construct(source="s3://bucket/x.csv", target="y", test_size=0.2, seed=0)
    problems = check_dataset(spec)
    assert [p.path for p in problems] == ["spec.dataset.source"]
    assert all(scheme in problems[0].message for scheme in LOADERS)


# (source, target, the field reported, words its message must contain): the messages users saw
# when these rules lived in the tweak-file contract, unchanged, through the one entry point.
BAD_SOURCES = [
    ("sklearn:mnist", None, "spec.dataset.source", ["unknown scikit-learn dataset 'mnist'", "digits"]),
    ("s3://bucket/x.csv", "y", "spec.dataset.source", ["unknown dataset source 's3://bucket/x.csv'", "csv:<path>"]),
    ("csv:data.csv", None, "spec.dataset.target", ["required for csv:, parquet:, https: and object: sources"]),
    ("csv:", "y", "spec.dataset.source", ["csv: needs a path, e.g. csv:data/train.csv"]),
    ("parquet:", "y", "spec.dataset.source", ["parquet: needs a path"]),
    ("object:csv:abc", "y", "spec.dataset.source", ["'object:csv:abc' is not object:csv:<sha256> or object:parquet:<sha256>"]),
    ("https://e.org/x.parquet", "y", "spec.dataset.source", ["is not an https:// URL of a .csv file"]),
    ("http://e.org/x.csv", "y", "spec.dataset.source", ["unknown dataset source", "https://<url>.csv"]),
]


@pytest.mark.parametrize(("source", "target", "path", "words"), BAD_SOURCES, ids=[b[0] for b in BAD_SOURCES])
def test_a_bad_source_is_refused_naming_the_field_value_and_rule(
    source: str, target: str | None, path: str, words: list[str]
) -> None:
    dataset = {"source": source} | ({"target": target} if target else {})
    _, problems = inspect(yaml.safe_dump(tweak_dict(dataset=dataset)), ALLOWED, pools=None)
    assert [p.path for p in problems] == [path]
    for word in words:
        assert word in problems[0].message, f"{word!r} missing from {problems[0].message!r}"


@pytest.mark.parametrize("source", ["csv:", "parquet:"])
def test_a_source_without_a_path_is_refused_also_beside_a_tweak_file(source: str, tmp_path: Path) -> None:
    # with the tweak file's folder known, relative paths are resolved: an empty one must not become the folder
    _, problems = inspect(tweak_dict(dataset={"source": source, "target": "y"}), ALLOWED, tmp_path, pools=None)
    assert [(p.path, p.message.split(",")[0]) for p in problems] == [("spec.dataset.source", f"{source} needs a path")]


def test_a_bad_source_is_reported_with_the_structural_problems_in_one_pass() -> None:
    document = tweak_dict(dataset={"source": "sklearn:nope", "test_size": 2}, budget={"max_trials": 0})
    _, problems = inspect(document, ALLOWED, pools=None)
    assert {"spec.budget.max_trials", "spec.dataset.test_size", "spec.dataset.source"} <= {p.path for p in problems}


def test_a_load_refuses_a_source_its_plug_in_refuses() -> None:
    # Defence in depth: a spec built without checks (as from an old message) never reaches a loader.
    spec = DatasetSpec.model_construct(source="object:csv:../../etc/passwd", target="y", test_size=0.2, seed=0)
    with pytest.raises(DatasetError, match="is not object:csv:<sha256>"):
        load_dataset(spec)


@pytest.fixture
def memory_source():
    """A throwaway ``memory:<rows>`` source, registered for one test."""

    @register_source
    class MemoryLoader(DatasetLoader):
        """``memory:<rows>``: a synthetic two-class table of that many rows."""

        scheme = "memory"
        form = "memory:<rows>"

        def source_problem(self, source: str) -> str | None:
            rows = source.partition(":")[2]
            return None if rows.isdigit() and int(rows) >= 10 else f"'{source}' is not memory:<rows> with at least 10 rows"

        def load(self, spec, base_dir, task):
            import numpy as np

            n = int(spec.source.partition(":")[2])
            return Dataset(np.arange(n, dtype=float).reshape(-1, 1), np.arange(n) % 2, ["x"], "classification", "memory")

    yield MemoryLoader
    del LOADERS["memory"]


def test_a_registered_source_is_listed_and_validated(memory_source) -> None:
    assert inspect(tweak_dict(dataset={"source": "memory:50", "target": "y"}), ALLOWED, pools=None)[1] == []
    _, problems = inspect(tweak_dict(dataset={"source": "memory:3", "target": "y"}), ALLOWED, pools=None)
    assert [(p.path, p.message) for p in problems] == [
        ("spec.dataset.source", "'memory:3' is not memory:<rows> with at least 10 rows")
    ]
    _, problems = inspect(tweak_dict(dataset={"source": "memory:50"}), ALLOWED, pools=None)
    assert [p.path for p in problems] == ["spec.dataset.target"] and "memory:" in problems[0].message
    assert "memory:<rows>" in source_problems("nope:1", "y")[0].message
    assert load_dataset(DatasetSpec(source="memory:20", target="y")).n_samples == 20

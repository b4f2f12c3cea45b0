"""Every registered dataset source (one loader per scheme) meets the plug-in contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from tweakline.errors import Problem
from tweakline.ml.datasets import LOADERS, Dataset, DatasetLoader, check_dataset, loader_for
from tweakline.proto.tweakfile import DatasetSpec

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
    good = good_spec(scheme, tmp_path)
    assert loader_for(good.source) is loader
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

"""Dataset loaders, the deterministic train/test split and the process-wide cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tweakline.errors import DatasetError
from tweakline.ml.datasets import (
    LOADERS,
    MAX_INFERRED_CLASSES,
    CsvLoader,
    DatasetCache,
    DatasetLoader,
    SklearnLoader,
    check_dataset,
    load_dataset,
    split_dataset,
)
from tweakline.proto.tweakfile import DatasetSpec


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def csv_spec(name: str = "data.csv", target: str = "y", **kw: object) -> DatasetSpec:
    return DatasetSpec(source=f"csv:{name}", target=target, **kw)


# ------------------------------------------------------------------------------------ registry


def test_registry_has_one_loader_per_scheme() -> None:
    assert set(LOADERS) == {"sklearn", "csv", "parquet", "object", "https"}
    for scheme, loader in LOADERS.items():
        assert isinstance(loader, DatasetLoader)
        assert loader.scheme == scheme
    assert isinstance(LOADERS["sklearn"], SklearnLoader)
    assert isinstance(LOADERS["csv"], CsvLoader)


# ------------------------------------------------------------------------------------- sklearn


@pytest.mark.parametrize(
    ("name", "shape", "task", "n_classes"),
    [
        ("iris", (150, 4), "classification", 3),
        ("digits", (1797, 64), "classification", 10),
        ("wine", (178, 13), "classification", 3),
        ("breast_cancer", (569, 30), "classification", 2),
        ("diabetes", (442, 10), "regression", None),
    ],
)
def test_sklearn_datasets(name: str, shape: tuple[int, int], task: str, n_classes: int | None) -> None:
    ds = load_dataset(DatasetSpec(source=f"sklearn:{name}"))
    assert ds.X.shape == shape
    assert ds.X.dtype == np.float64
    assert ds.y.shape == (shape[0],)
    assert ds.task == task
    assert ds.name == name
    assert len(ds.feature_names) == shape[1]
    if n_classes is None:
        assert ds.y.dtype == np.float64
    else:
        assert np.unique(ds.y).size == n_classes


def test_sklearn_dataset_of_the_other_task_is_refused() -> None:
    with pytest.raises(DatasetError, match="'sklearn:diabetes' is a regression dataset"):
        load_dataset(DatasetSpec(source="sklearn:diabetes"), task="classification")
    assert load_dataset(DatasetSpec(source="sklearn:iris"), task="classification").task == "classification"


# ----------------------------------------------------------------------------------------- csv


def test_csv_relative_to_base_dir_with_integer_labels(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["a", "b", "y"], [[i, i * 0.5, i % 3] for i in range(30)])
    ds = load_dataset(csv_spec(), base_dir=tmp_path)
    assert ds.task == "classification"
    assert ds.feature_names == ["a", "b"]
    assert ds.X.shape == (30, 2)
    assert ds.X.dtype == np.float64
    assert ds.y.dtype == np.int64
    assert ds.X[3].tolist() == [3.0, 1.5]
    assert ds.name == "data.csv"


def test_csv_target_may_be_any_column_and_strings_are_labels(tmp_path: Path) -> None:
    write_csv(tmp_path / "d.csv", ["label", "x"], [["cat" if i % 2 else "dog", i] for i in range(10)])
    ds = load_dataset(csv_spec("d.csv", target="label"), base_dir=tmp_path)
    assert ds.task == "classification"
    assert ds.feature_names == ["x"]
    assert sorted(set(ds.y.tolist())) == ["cat", "dog"]


def test_csv_float_target_is_regression(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["x", "y"], [[i, i * 1.5 + 0.25] for i in range(10)])
    ds = load_dataset(csv_spec(), base_dir=tmp_path)
    assert ds.task == "regression"
    assert ds.y.dtype == np.float64


def test_csv_many_integer_values_is_regression(tmp_path: Path) -> None:
    n = MAX_INFERRED_CLASSES + 1
    write_csv(tmp_path / "data.csv", ["x", "y"], [[i, i] for i in range(n)])
    assert load_dataset(csv_spec(), base_dir=tmp_path).task == "regression"
    write_csv(tmp_path / "data.csv", ["x", "y"], [[i, i % MAX_INFERRED_CLASSES] for i in range(n)])
    assert load_dataset(csv_spec(), base_dir=tmp_path).task == "classification"


def test_csv_task_given_wins_over_inference(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["x", "y"], [[i, i % 3] for i in range(12)])
    ds = load_dataset(csv_spec(), base_dir=tmp_path, task="regression")
    assert ds.task == "regression"
    assert ds.y.dtype == np.float64


def test_csv_continuous_target_for_a_classifier_is_refused(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["x", "y"], [[1, 1], [2, 2.5], [3, 1]])
    with pytest.raises(DatasetError, match=r"target 'y' has non-integer values \(line 3 has '2.5'\)"):
        load_dataset(csv_spec(), base_dir=tmp_path, task="classification")


def test_csv_string_target_for_a_regressor_is_refused(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["x", "y"], [[1, 1.5], [2, "high"]])
    with pytest.raises(DatasetError, match=r"target 'y' is not numeric \(line 3 has 'high'\).*regression"):
        load_dataset(csv_spec(), base_dir=tmp_path, task="regression")


def test_csv_non_numeric_feature_names_column_and_line(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["size", "colour", "y"], [[1, 2, 0], [2, 3, 1], [3, "red", 0]])
    with pytest.raises(DatasetError) as info:
        load_dataset(csv_spec(), base_dir=tmp_path)
    message = str(info.value)
    assert "column 'colour' is not numeric" in message
    assert "line 4 has 'red'" in message


def test_csv_missing_target_lists_available_columns(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["a", "b", "label"], [[1, 2, 0]])
    with pytest.raises(DatasetError, match="target column 'y' not found .*available columns: a, b, label"):
        load_dataset(csv_spec(), base_dir=tmp_path)


def test_csv_file_not_found_names_the_absolute_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"file not found: {tmp_path / 'nope.csv'}"):
        load_dataset(csv_spec("nope.csv"), base_dir=tmp_path)


def test_csv_empty_feature_cells_are_nan_but_a_target_is_required(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["a", "b", "y"], [[1, "", 0], ["NA", 2, 1], [3, 4, 0]])
    ds = load_dataset(csv_spec(), base_dir=tmp_path)
    assert np.isnan(ds.X[0, 1]) and np.isnan(ds.X[1, 0])
    assert ds.X[2].tolist() == [3.0, 4.0]
    write_csv(tmp_path / "data.csv", ["a", "y"], [[1, 0], [2, ""], [3, 1]])
    with pytest.raises(DatasetError, match="target 'y' is empty at line 3"):
        load_dataset(csv_spec(), base_dir=tmp_path)


def test_csv_ragged_row_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b,y\n1,2,0\n\n3,1\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="line 4 has 2 fields, expected 3"):
        load_dataset(csv_spec(), base_dir=tmp_path)


def test_csv_header_problems(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("", encoding="utf-8")
    with pytest.raises(DatasetError, match="is empty; expected a header row"):
        load_dataset(csv_spec(), base_dir=tmp_path)
    (tmp_path / "data.csv").write_text("a,a,y\n1,2,0\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="duplicate column names in the header: a"):
        load_dataset(csv_spec(), base_dir=tmp_path)
    (tmp_path / "data.csv").write_text("y\n1\n0\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no feature columns"):
        load_dataset(csv_spec(), base_dir=tmp_path)


def test_csv_single_class_is_refused(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["x", "y"], [[i, "a"] for i in range(5)])
    with pytest.raises(DatasetError, match="single class"):
        load_dataset(csv_spec(), base_dir=tmp_path)


def test_csv_bom_and_quoted_fields(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text('\ufeff"a","y"\n"1.5","x"\n"2","z"\n', encoding="utf-8")
    ds = load_dataset(csv_spec(), base_dir=tmp_path)
    assert ds.feature_names == ["a"]
    assert ds.X[:, 0].tolist() == [1.5, 2.0]


# ------------------------------------------------------------------------------------ checking


def test_check_dataset(tmp_path: Path) -> None:
    [missing] = check_dataset(csv_spec("nope.csv"), tmp_path)
    assert (missing.path, missing.message) == ("spec.dataset.source", f"file not found: {tmp_path / 'nope.csv'}")
    write_csv(tmp_path / "data.csv", ["a", "label"], [[1, 0]])
    [target] = check_dataset(csv_spec(), tmp_path)
    assert target.path == "spec.dataset.target"
    assert "available columns: a, label" in target.message
    assert check_dataset(csv_spec(target="label"), tmp_path) == []
    [task] = check_dataset(DatasetSpec(source="sklearn:diabetes"), task="classification")
    assert task.path == "spec.dataset.source"
    assert "regression dataset" in task.message
    assert check_dataset(DatasetSpec(source="sklearn:diabetes"), task="regression") == []


# --------------------------------------------------------------------------------------- split


def test_split_is_deterministic_and_seeded() -> None:
    spec = DatasetSpec(source="sklearn:wine", test_size=0.25, seed=7)
    ds = load_dataset(spec)
    a, b = split_dataset(ds, spec), split_dataset(ds, spec)
    for name in ("X_train", "X_test", "y_train", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other = split_dataset(ds, DatasetSpec(source="sklearn:wine", test_size=0.25, seed=8))
    assert not np.array_equal(a.X_test, other.X_test)
    # each row is held out on its own (a hash), so the size is about test_size, not exact
    assert 0.15 * 178 < a.X_test.shape[0] < 0.35 * 178 and a.X_test.shape[0] + a.X_train.shape[0] == 178
    assert a.task == "classification" and a.feature_names == ds.feature_names


def test_split_holds_both_classes_and_is_disjoint(tmp_path: Path) -> None:
    rows = [[i, 0 if i < 80 else 1] for i in range(100)]  # 80/20 classes, unique ids in 'id'
    write_csv(tmp_path / "data.csv", ["id", "y"], rows)
    spec = csv_spec(test_size=0.2, seed=3)
    split = split_dataset(load_dataset(spec, base_dir=tmp_path), spec)
    assert sorted(set(split.y_test.tolist())) == [0, 1]  # per-row, so only about stratified
    assert 0.1 < len(split.y_test) / 100 < 0.3
    train_ids, test_ids = set(split.X_train[:, 0]), set(split.X_test[:, 0])
    assert not train_ids & test_ids
    assert len(train_ids | test_ids) == 100


def test_split_too_small_is_a_dataset_error(tmp_path: Path) -> None:
    write_csv(tmp_path / "data.csv", ["x", "y"], [[1, 0], [2, 1]])
    spec = csv_spec()
    with pytest.raises(DatasetError, match=r"data.csv: .*test_size=0.2.* \(use more rows or another test_size\)"):
        split_dataset(load_dataset(spec, base_dir=tmp_path), spec)


# --------------------------------------------------------------------------------------- cache


def test_cache_loads_once_and_returns_read_only_arrays() -> None:
    cache = DatasetCache()
    spec = DatasetSpec(source="sklearn:iris")
    first = cache.get(spec)
    assert cache.get(DatasetSpec(source="sklearn:iris")) is first
    assert (cache.hits, cache.misses) == (1, 1)
    with pytest.raises(ValueError, match="read-only"):
        first.X_train[0, 0] = 1.0
    assert cache.get(DatasetSpec(source="sklearn:iris", seed=1)) is not first
    assert cache.get(DatasetSpec(source="sklearn:iris", test_size=0.3)) is not first
    assert cache.misses == 3 and len(cache) == 3


def test_cache_reloads_a_changed_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "data.csv", ["x", "y"], [[i, i % 2] for i in range(20)])
    cache = DatasetCache()
    spec = csv_spec()
    first = cache.get(spec, tmp_path)
    assert cache.get(spec, tmp_path) is first
    write_csv(path, ["x", "y"], [[i, i % 2] for i in range(40)])
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = cache.get(spec, tmp_path)
    assert second is not first
    assert second.X_train.shape[0] + second.X_test.shape[0] == 40
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    write_csv(other_dir / "data.csv", ["x", "y"], [[i, i % 2] for i in range(10)])
    assert cache.get(spec, other_dir).X_train.shape[0] == 8


def test_cache_evicts_least_recently_used() -> None:
    cache = DatasetCache(max_entries=2)
    iris, wine, digits = (DatasetSpec(source=f"sklearn:{n}") for n in ("iris", "wine", "digits"))
    first = cache.get(iris)
    cache.get(wine)
    cache.get(iris)  # iris is now the most recent
    cache.get(digits)  # evicts wine
    assert len(cache) == 2
    assert cache.get(iris) is first
    misses = cache.misses
    cache.get(wine)
    assert cache.misses == misses + 1


def test_cache_missing_csv_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="file not found"):
        DatasetCache().get(csv_spec("gone.csv"), tmp_path)

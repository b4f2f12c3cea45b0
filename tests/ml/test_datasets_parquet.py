"""parquet: datasets: the same table as CSV and as Parquet loads the same, bounds and types are refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.ml.tables_data import shop_rows, write_shop_csv, write_shop_parquet
from tweakline.errors import DatasetError
from tweakline.ml import tables
from tweakline.ml.datasets import ObjectLoader, check_dataset, load_dataset, split_dataset, use_object_store
from tweakline.ml.sources.parquet_file import parquet_problems
from tweakline.proto.tweakfile import DatasetSpec


def spec(source: str, target: str = "y") -> DatasetSpec:
    return DatasetSpec(source=source, target=target)


def test_a_parquet_table_loads_like_the_same_csv_with_its_text_column(tmp_path: Path) -> None:
    rows = shop_rows()
    write_shop_csv(tmp_path / "shop.csv", rows)
    write_shop_parquet(tmp_path / "shop.parquet", rows)
    from_csv = load_dataset(spec("csv:shop.csv"), tmp_path)
    from_parquet = load_dataset(spec("parquet:shop.parquet"), tmp_path)

    assert from_parquet.feature_names == ["size", "colour"] and from_parquet.categorical == (1,)
    assert from_parquet.task == "classification" and from_parquet.y.dtype == np.int64
    assert from_parquet.X.dtype == object and from_parquet.X[7, 1] is None and from_parquet.X[0, 1] == rows[0]["colour"]
    assert from_csv.categorical == from_parquet.categorical
    assert from_csv.X.tolist() == from_parquet.X.tolist()
    assert from_csv.y.tolist() == from_parquet.y.tolist()
    # the same rows, so the same append-stable holdout whichever format they come in
    a, b = split_dataset(from_csv, spec("csv:shop.csv")), split_dataset(from_parquet, spec("parquet:shop.parquet"))
    assert a.test_keys.tolist() == b.test_keys.tolist() and 0 < len(a.test_keys) < len(rows)
    assert b.categorical == (1,) and b.text_features == ["colour"]


def test_an_all_numeric_parquet_table_is_a_float_matrix(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1, 2, None, 4] * 5, "b": [0.5, 1.5, 2.5, True] * 5, "y": [0, 1] * 10}), tmp_path / "n.parquet")
    data = load_dataset(spec("parquet:n.parquet"), tmp_path)
    assert data.X.dtype == np.float64 and data.categorical == () and np.isnan(data.X[2, 0])


def test_unsupported_types_bounds_and_bad_values_are_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime

    when = [datetime.datetime(2026, 1, 1)] * 20
    pq.write_table(pa.table({"when": when, "x": list(range(20)), "y": [0, 1] * 10}), tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match=r"feature column 'when' has the Parquet type timestamp\[us\]; expected numbers"):
        load_dataset(spec("parquet:t.parquet"), tmp_path)
    problems = check_dataset(spec("parquet:t.parquet"), tmp_path)  # from the footer, before any data is read
    assert [p.path for p in problems] == ["spec.dataset.source"] and "'when'" in problems[0].message

    write_shop_parquet(tmp_path / "shop.parquet", shop_rows())
    problems = check_dataset(spec("parquet:shop.parquet", target="label"), tmp_path)
    assert [p.path for p in problems] == ["spec.dataset.target"] and "available columns: size, colour, y" in problems[0].message

    ids = [f"customer-{i}" for i in range(30)]
    pq.write_table(pa.table({"id": ids, "y": [0, 1] * 15}), tmp_path / "ids.parquet")
    monkeypatch.setattr(tables, "MAX_CATEGORIES", 25)
    with pytest.raises(
        DatasetError, match=r"text feature column 'id' has more than 25 distinct values \('customer-25' at row 26"
    ):
        load_dataset(spec("parquet:ids.parquet"), tmp_path)
    monkeypatch.setattr(tables, "MAX_ROWS", 10)
    with pytest.raises(DatasetError, match="more than 10 data rows"):
        load_dataset(spec("parquet:ids.parquet"), tmp_path)
    monkeypatch.setattr(tables, "MAX_COLUMNS", 1)
    with pytest.raises(DatasetError, match="has 2 columns, more than the 1"):
        load_dataset(spec("parquet:ids.parquet"), tmp_path)
    monkeypatch.undo()

    pq.write_table(pa.table({"x": [1.0, float("inf")] * 6, "y": [0, 1] * 6}), tmp_path / "inf.parquet")
    with pytest.raises(DatasetError, match="feature column 'x' has an infinite value at row 2"):
        load_dataset(spec("parquet:inf.parquet"), tmp_path)
    (tmp_path / "fake.parquet").write_bytes(b"x,y\n1,0\n")
    with pytest.raises(DatasetError, match="not a readable Parquet file"):
        load_dataset(spec("parquet:fake.parquet"), tmp_path)


def test_the_webhook_check_of_parquet_bytes(tmp_path: Path) -> None:
    data = write_shop_parquet(tmp_path / "shop.parquet", shop_rows()).read_bytes()
    assert parquet_problems(spec("parquet:shop.parquet"), data, "data/shop.parquet") == []
    few = write_shop_parquet(tmp_path / "few.parquet", shop_rows(6)).read_bytes()
    assert "has 6 data row(s); expected at least" in parquet_problems(spec("parquet:few.parquet"), few, "few.parquet")[0].message
    assert "not a Parquet file" in parquet_problems(spec("parquet:x.parquet"), b"a,b\n", "x.parquet")[0].message


def test_an_uploaded_parquet_file_is_loaded_by_its_hash(tmp_path: Path) -> None:
    import hashlib

    data = write_shop_parquet(tmp_path / "shop.parquet", shop_rows()).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    saved = (ObjectLoader.fetcher, ObjectLoader.cache)
    try:
        use_object_store(lambda sha: data if sha == digest else b"", tmp_path / "cache")
        loaded = load_dataset(spec(f"object:parquet:{digest}"))
        assert loaded.categorical == (1,) and loaded.n_samples == 240
    finally:
        ObjectLoader.fetcher, ObjectLoader.cache = saved

"""``parquet:<path>``: Apache Parquet tables (read with pyarrow, the ``parquet`` extra).

Numeric columns (integers, floats, decimals, booleans) are numeric features, nulls missing
(NaN); string columns (plain, large, view or dictionary-encoded) are text features, one-hot
encoded by the pipeline (:mod:`tweakline.ml.tables`, :mod:`tweakline.ml.encoding`). Any other
type (timestamps, binary, lists, structs) is refused naming the column and its type. The target
is numeric or text as in a CSV file. The file's size, and its rows and columns (from the footer,
before any data is read) are bounded like every table.

pyarrow is imported only when a Parquet file is read, so a platform without the extra still
runs every other source and says which extra to install.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from tweakline.errors import DatasetError, Problem
from tweakline.ml.sources.base import Dataset, DatasetLoader, Task, location_of, register_source, too_few_rows
from tweakline.ml.sources.csv_file import CsvLoader, missing_target, target_column
from tweakline.ml.tables import check_shape, check_size, feature_matrix, text_column
from tweakline.proto.tweakfile import DatasetSpec

PARQUET_MAGIC = b"PAR1"


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError(
            "parquet: datasets need pyarrow, which is not installed here (pip install 'tweakline[parquet]')"
        ) from None
    return pa, pq


def _kind(pa: Any, type_: Any) -> str | None:
    """``number``, ``text`` or None (a type tweakline does not read) for an Arrow type."""
    types = pa.types
    if types.is_dictionary(type_):
        type_ = type_.value_type
    if types.is_integer(type_) or types.is_floating(type_) or types.is_decimal(type_) or types.is_boolean(type_):
        return "number"
    if types.is_string(type_) or types.is_large_string(type_) or getattr(types, "is_string_view", lambda _: False)(type_):
        return "text"
    return None


def _open(source: Any, where: str) -> Any:
    """A ``ParquetFile`` whose footer is within the bounds (rows, columns)."""
    pa, pq = _pyarrow()
    try:
        parquet = pq.ParquetFile(source)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(f"{where}: not a readable Parquet file: {' '.join(str(exc).split())[:200]}") from None
    meta = parquet.metadata
    check_shape(meta.num_rows, meta.num_columns, where)
    return parquet


def _columns(parquet: Any, target: str | None, where: str) -> tuple[list[str], list[str]]:
    """All column names (unique, target present) and the feature names, each of a readable type."""
    pa, _ = _pyarrow()
    schema = parquet.schema_arrow
    names = list(schema.names)
    duplicates = sorted({c for c in names if names.count(c) > 1})
    if duplicates:
        raise DatasetError(f"{where}: duplicate column names: {', '.join(duplicates)}")
    if target not in names:
        raise DatasetError(f"{where}: {missing_target(target, names, Path(where))}")
    for field in schema:
        if _kind(pa, field.type) is None:
            role = "target" if field.name == target else "feature column"
            raise DatasetError(
                f"{where}: {role} '{field.name}' has the Parquet type {field.type}; expected numbers "
                "(integer, float, decimal, boolean) or text (string)"
            )
    features = [n for n in names if n != target]
    if not features:
        raise DatasetError(f"{where}: has no feature columns besides the target '{target}'")
    return names, features


def read_parquet(source: Any, target: str | None, where: str, name: str, task: Task | None = None) -> Dataset:
    """The dataset in a Parquet file (a path, or a ``pyarrow.BufferReader`` over its bytes).

    Raises:
        DatasetError: Unreadable, out of bounds, missing target, an unsupported column type, or a
            value no model can use (naming the column, the row and the value).
    """
    pa, _ = _pyarrow()
    parquet = _open(source, where)
    names, features = _columns(parquet, target, where)
    try:
        table = parquet.read(columns=names)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(f"{where}: cannot read the Parquet data: {' '.join(str(exc).split())[:200]}") from None
    n = table.num_rows
    if n == 0:
        raise DatasetError(f"{where}: has no data rows")
    check_shape(n, None, where)
    rows = range(1, n + 1)
    columns = [_feature(pa, table.column(f), f, rows, where) for f in features]
    X, categorical = feature_matrix(columns)
    y, kind = target_column(_target_cells(pa, table.column(target)), str(target), list(rows), where, task, unit="row")
    return Dataset(X=X, y=y, feature_names=features, task=kind, name=name, categorical=categorical)


def _feature(pa: Any, column: Any, name: str, rows: range, where: str) -> np.ndarray:
    if _kind(pa, column.type) == "text":
        return text_column(column.cast(pa.string()).to_pylist(), name, rows, where, unit="row")
    values = np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        raise DatasetError(f"{where}: feature column '{name}' has an infinite value at row {rows[infinite[0]]}")
    if np.isnan(values).all():
        raise DatasetError(f"{where}: feature column '{name}' has no values (every cell is null or NaN)")
    return values


def _target_cells(pa: Any, column: Any) -> list[str]:
    """The target as CSV-like cells (so both formats share one set of target rules); null is empty."""
    if _kind(pa, column.type) == "text":
        return ["" if v is None else v for v in column.cast(pa.string()).to_pylist()]
    if pa.types.is_boolean(column.type):
        column = column.cast(pa.int64())
    return ["" if v is None else (repr(float(v)) if isinstance(v, float) else str(v)) for v in column.to_pylist()]


@register_source
class ParquetLoader(DatasetLoader):
    """``parquet:<path>``: a Parquet file; the path is relative to the tweak file."""

    scheme = "parquet"
    form = "parquet:<path>"
    reads_host_files = True

    def source_problem(self, source: str) -> str | None:
        return None if location_of(source) else "parquet: needs a path, e.g. parquet:data/train.parquet"

    path = staticmethod(CsvLoader.path)

    def fingerprint(self, spec: DatasetSpec, base_dir: Path | None) -> Hashable:
        return CsvLoader.fingerprint(self, spec, base_dir)  # type: ignore[arg-type]

    def check(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> list[Problem]:
        path = self.path(spec, base_dir)
        if not path.is_file():
            what = "is a directory, expected a file" if path.is_dir() else "file not found"
            if path.exists() and not path.is_dir():
                what = "is not a regular file (a FIFO, device or socket)"
            return [Problem("spec.dataset.source", f"{what}: {path}")]
        return footer_problems(spec, path, str(path))

    def load(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> Dataset:
        path = self.path(spec, base_dir)
        where = f"{spec.source} ({path})"
        try:
            check_size(path.stat().st_size, where)
        except FileNotFoundError:
            raise DatasetError(f"{spec.source}: file not found: {path}") from None
        except OSError as exc:
            raise DatasetError(f"{where}: cannot read the file: {exc.strerror}") from None
        return read_parquet(str(path), spec.target, where, path.name, task)


def footer_problems(spec: DatasetSpec, source: Any, shown: str) -> list[Problem]:
    """Problems found from a Parquet file's footer alone (bounds, target, column types): no data is read."""
    try:
        _columns(_open(source, shown), spec.target, shown)
    except DatasetError as exc:
        field = "spec.dataset.target" if f"'{spec.target}' not found" in str(exc) else "spec.dataset.source"
        return [Problem(field, str(exc))]
    return []


def parquet_problems(dataset: DatasetSpec, data: bytes, shown: str, *, cv: int = 5) -> list[Problem]:
    """Problems of a Parquet dataset's bytes (the webhook's check of a file in the repository): read
    as the runners will, and enough rows for ``cv`` folds and the test split."""
    if not data.startswith(PARQUET_MAGIC):
        return [Problem("spec.dataset.source", f"{shown} is not a Parquet file (it does not start with PAR1)")]
    try:
        pa, _ = _pyarrow()
        check_size(len(data), shown)
        table = read_parquet(pa.BufferReader(data), dataset.target, shown, Path(shown).name)
    except DatasetError as exc:
        field = "spec.dataset.target" if f"'{dataset.target}' not found" in str(exc) else "spec.dataset.source"
        return [Problem(field, str(exc))]
    return too_few_rows(dataset, table.n_samples, shown, cv)


def object_parquet(path: Path, spec: DatasetSpec, task: Task | None, name: str) -> Dataset:
    """An uploaded (``object:parquet:``) file, already fetched to ``path``."""
    check_size(path.stat().st_size, spec.source)
    return read_parquet(str(path), spec.target, spec.source, name, task)

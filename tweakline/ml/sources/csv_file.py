"""``csv:<path>``: CSV files, and the table rules every tabular source shares.

CSV files: UTF-8 (a BOM is ignored), comma-separated, a header row naming the columns. Every
column except the target is a feature: numeric, or text (category labels, one-hot encoded by the
training pipeline, see :mod:`tweakline.ml.tables` and :mod:`tweakline.ml.encoding`); empty cells and
``NA``/``NaN``/``null`` in feature columns are missing (NaN in a numeric column: use an imputer step
in the pipeline; ``None`` in a text column: a category of its own). Every row needs a target.
Tables are bounded in size, rows and columns (:mod:`tweakline.ml.tables`).

The task of a csv dataset is the one the caller passes (the estimator's, see
:func:`tweakline.ml.estimators.task_of`). When none is passed it is inferred from the target
column: non-numeric labels are classification; numbers that are all integers with at most
:data:`MAX_INFERRED_CLASSES` distinct values are classification; anything else is regression.
The target rules (:func:`target_column`) are shared with the other table formats.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from tweakline.errors import DatasetError, Problem
from tweakline.ml import tables
from tweakline.ml.sources.base import Dataset, DatasetLoader, Task, location_of, register_source
from tweakline.ml.tables import check_shape, check_size, feature_matrix, text_column
from tweakline.proto.tweakfile import DatasetSpec

MAX_INFERRED_CLASSES = 20
"""An integer csv target with at most this many distinct values is inferred to be classification."""

_MISSING = frozenset({"", "na", "nan", "null", "none", "n/a"})
_SHOW = 40  # characters of a cell shown in an error message


def _show(cell: str) -> str:
    return cell if len(cell) <= _SHOW else cell[: _SHOW - 1] + "…"


@register_source
class CsvLoader(DatasetLoader):
    """``csv:<path>``: a comma-separated file with a header row; the path is relative to the tweak file."""

    scheme = "csv"
    form = "csv:<path>"
    reads_host_files = True

    def source_problem(self, source: str) -> str | None:
        return None if location_of(source) else "csv: needs a path, e.g. csv:data/train.csv"

    @staticmethod
    def path(spec: DatasetSpec, base_dir: Path | None) -> Path:
        """The absolute path of the file (relative paths are taken from ``base_dir``, else the cwd)."""
        path = Path(location_of(spec.source))
        if not path.is_absolute():
            path = (base_dir if base_dir is not None else Path.cwd()) / path
        return path.absolute()

    def fingerprint(self, spec: DatasetSpec, base_dir: Path | None) -> Hashable:
        path = self.path(spec, base_dir)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise DatasetError(f"{spec.source}: file not found: {path}") from None
        except OSError as exc:
            raise DatasetError(f"{spec.source}: cannot read {path}: {exc.strerror}") from None
        return (str(path), stat.st_mtime_ns, stat.st_size)

    def check(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> list[Problem]:
        path = self.path(spec, base_dir)
        if not path.is_file():
            if path.is_dir():
                what = "is a directory, expected a file"
            else:  # a FIFO or device would block or never end: only regular files are read
                what = "is not a regular file (a FIFO, device or socket)" if path.exists() else "file not found"
            return [Problem("spec.dataset.source", f"{what}: {path}")]
        try:
            with path.open(newline="", encoding="utf-8-sig") as handle:
                header = next(csv.reader(handle), None)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            return [Problem("spec.dataset.source", f"cannot read {path}: {exc}")]
        if not header:
            return [Problem("spec.dataset.source", f"{path} is empty; expected a header row naming the columns")]
        columns = [c.strip() for c in header]
        if spec.target not in columns:
            return [Problem("spec.dataset.target", missing_target(spec.target, columns, path))]
        return []

    def load(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> Dataset:
        path = self.path(spec, base_dir)
        where = f"{spec.source} ({path})"
        try:
            check_size(path.stat().st_size, where)
            with path.open(newline="", encoding="utf-8-sig") as handle:
                header, rows, lines = _read_rows(handle, where)
        except FileNotFoundError:
            raise DatasetError(f"{spec.source}: file not found: {path}") from None
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except csv.Error as exc:
            raise DatasetError(f"{where}: not a valid CSV file: {exc}") from None
        except OSError as exc:
            raise DatasetError(f"{where}: cannot read the file: {exc.strerror}") from None

        if spec.target not in header:
            raise DatasetError(f"{where}: {missing_target(spec.target, header, path)}")
        if not rows:
            raise DatasetError(f"{where}: has a header but no data rows")
        t = header.index(spec.target)
        features = [i for i in range(len(header)) if i != t]
        if not features:
            raise DatasetError(f"{where}: has no feature columns besides the target '{spec.target}'")

        columns = list(zip(*rows))
        X, categorical = feature_matrix([_feature_column(columns[i], header[i], lines, where) for i in features])
        y, kind = target_column(columns[t], spec.target, lines, where, task)
        return Dataset(X=X, y=y, feature_names=[header[i] for i in features], task=kind, name=path.name, categorical=categorical)


def table_from_text(text: str, target: str, where: str, task: Task | None = None) -> Dataset:
    """Parse CSV ``text`` exactly as :meth:`CsvLoader.load` parses a file (for checks of a file's
    first part before anything runs); raises :class:`DatasetError` naming the line and column."""
    try:
        header, rows, lines = _read_rows(io.StringIO(text, newline=""), where)
    except csv.Error as exc:
        raise DatasetError(f"{where}: not a valid CSV file: {exc}") from None
    if target not in header:
        raise DatasetError(f"{where}: {missing_target(target, header, Path(where))}")
    if not rows:
        raise DatasetError(f"{where}: has a header but no data rows")
    t = header.index(target)
    features = [i for i in range(len(header)) if i != t]
    if not features:
        raise DatasetError(f"{where}: has no feature columns besides the target '{target}'")
    columns = list(zip(*rows))
    X, categorical = feature_matrix([_feature_column(columns[i], header[i], lines, where) for i in features])
    for j, i in enumerate(features):
        if j not in categorical and np.isnan(X[:, j].astype(np.float64)).all():
            raise DatasetError(f"{where}: feature column '{header[i]}' has no values (every cell is empty or NaN)")
    y, kind = target_column(columns[t], target, lines, where, task)
    return Dataset(
        X=X, y=y, feature_names=[header[i] for i in features], task=kind, name=Path(where).name, categorical=categorical
    )


def missing_target(target: str | None, columns: list[str], path: Path) -> str:
    """The message for a target column that is not in ``columns`` (those are listed, the first 50)."""
    shown = ", ".join(_show(c) for c in columns[:50]) + (f", … ({len(columns)} in all)" if len(columns) > 50 else "")
    return f"target column '{target}' not found in {path}; available columns: {shown}"


def _read_rows(handle: Any, where: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, data rows and the line number each row ends on; blank lines are skipped."""
    reader = csv.reader(handle)
    raw = next(reader, None)
    if not raw:
        raise DatasetError(f"{where}: is empty; expected a header row naming the columns")
    header = [c.strip() for c in raw]
    for i, name in enumerate(header):
        if not name:
            raise DatasetError(f"{where}: column {i + 1} of the header has no name")
    check_shape(None, len(header), where)
    duplicates = sorted({c for c in header if header.count(c) > 1})
    if duplicates:
        raise DatasetError(f"{where}: duplicate column names in the header: {', '.join(duplicates)}")
    rows: list[list[str]] = []
    lines: list[int] = []
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DatasetError(
                f"{where}: line {reader.line_num} has {len(row)} fields, expected {len(header)} (one per header column)"
            )
        rows.append([cell.strip() for cell in row])
        lines.append(reader.line_num)
        if len(rows) > tables.MAX_ROWS:
            check_shape(len(rows), None, where)
    return header, rows, lines


def _feature_column(cells: tuple[str, ...], name: str, lines: list[int], where: str) -> np.ndarray:
    """A numeric column (float64, NaN where missing) or a text one (object, see :func:`text_column`)."""
    try:
        values = np.array(cells, dtype=np.float64)  # fast path: clean numbers
    except ValueError:
        values = np.empty(len(cells), dtype=np.float64)
        words: list[int] = []
        for i, cell in enumerate(cells):
            if cell.lower() in _MISSING:
                values[i] = np.nan
                continue
            try:
                values[i] = float(cell)
            except ValueError:
                values[i] = np.nan
                words.append(i)
        numbers = int(np.count_nonzero(~np.isnan(values)))
        if words and numbers >= len(words):
            # Mostly numbers with a few words is a typo, not a category: say where it is.
            first = words[0]
            raise DatasetError(
                f"{where}: feature column '{name}' is not numeric: line {lines[first]} has '{_show(cells[first])}' "
                f"but {numbers} of its cells are numbers (a text column, one-hot encoded, must be mostly words; "
                "fix the cell, or leave it empty for a missing value)"
            ) from None
        if words:
            return text_column([None if c.lower() in _MISSING else c for c in cells], name, lines, where)
    infinite = np.flatnonzero(np.isinf(values))
    if infinite.size:
        raise DatasetError(f"{where}: feature column '{name}' has an infinite value at line {lines[infinite[0]]}")
    return values


def target_column(
    cells: tuple[str, ...] | list[str], name: str, lines: list[int], where: str, task: Task | None, unit: str = "line"
) -> tuple[np.ndarray, Task]:
    """The target cells as labels or numbers, and the task they serve (``task`` if given, else inferred);
    :class:`DatasetError` naming the {unit} of an empty, non-finite or unusable value."""
    for i, cell in enumerate(cells):
        if cell.lower() in _MISSING:
            raise DatasetError(f"{where}: target '{name}' is empty at {unit} {lines[i]}; every row needs a target")
    numbers: list[float] = []
    for i, cell in enumerate(cells):
        try:
            value = float(cell)
        except ValueError:
            if task == "regression":
                raise DatasetError(
                    f"{where}: target '{name}' is not numeric ({unit} {lines[i]} has '{_show(cell)}'), "
                    "so it cannot be used for regression"
                ) from None
            labels = np.array(cells, dtype=str)
            return _checked_labels(labels, name, where), "classification"
        if not math.isfinite(value):
            raise DatasetError(f"{where}: target '{name}' is not finite at {unit} {lines[i]} ('{_show(cell)}')")
        numbers.append(value)
    y = np.array(numbers, dtype=np.float64)
    integral = bool(np.all(y == np.round(y)))
    if task is None:
        task = "classification" if integral and len(np.unique(y)) <= MAX_INFERRED_CLASSES else "regression"
    if task == "regression":
        return y, "regression"
    if not integral:
        bad = int(np.flatnonzero(y != np.round(y))[0])
        raise DatasetError(
            f"{where}: target '{name}' has non-integer values ({unit} {lines[bad]} has '{_show(cells[bad])}'); "
            "a classifier needs class labels"
        )
    return _checked_labels(y.astype(np.int64), name, where), "classification"


def _checked_labels(labels: np.ndarray, name: str, where: str) -> np.ndarray:
    classes = np.unique(labels)
    if classes.size < 2:
        raise DatasetError(
            f"{where}: target '{name}' has a single class ({classes[0].item()!r}); a classifier needs at least two"
        )
    return labels

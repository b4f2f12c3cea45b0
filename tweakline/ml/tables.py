"""Bounds and column typing shared by the table loaders (``csv:``, ``parquet:`` and their uploads).

A feature column is **numeric** (a float column; missing cells are NaN) or **text** (a column of
category labels, kept as Python strings in an object column; missing cells are ``None``). Which
one is decided once, from the data, when the table is loaded: a column is text when its values
are not numbers (a CSV column whose non-missing cells are mostly words, a Parquet column of a
string type). The training pipeline one-hot encodes the text columns
(:mod:`tweakline.ml.encoding`), so the same rule holds at training, evaluation and serving time.

Every table is bounded before and while it is read; a bound passed is a :class:`DatasetError`
naming the column (and the value) and the bound.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tweakline.errors import DatasetError

MAX_TABLE_BYTES = 1 << 30
"""Largest table file a loader reads (1 GiB)."""

MAX_ROWS = 10_000_000
"""Most data rows a table may have."""

MAX_COLUMNS = 10_000
"""Most columns (features and the target) a table may have."""

MAX_CATEGORIES = 1_000
"""Most distinct values a text feature column may have (each becomes one one-hot column)."""

MAX_TEXT_CHARS = 256
"""Longest text value in a text feature column."""

_SHOW = 40  # characters of a cell shown in an error message


def show(cell: str) -> str:
    """A cell as an error message shows it (cut to a few dozen characters)."""
    return cell if len(cell) <= _SHOW else cell[: _SHOW - 1] + "…"


def check_size(size: int, where: str) -> None:
    """Refuse a table file larger than :data:`MAX_TABLE_BYTES`."""
    if size > MAX_TABLE_BYTES:
        raise DatasetError(f"{where}: the file is {size} bytes, larger than the {MAX_TABLE_BYTES} bytes a dataset may be")


def check_shape(rows: int | None, columns: int | None, where: str) -> None:
    """Refuse a table with more than :data:`MAX_ROWS` rows or :data:`MAX_COLUMNS` columns."""
    if columns is not None and columns > MAX_COLUMNS:
        raise DatasetError(f"{where}: has {columns} columns, more than the {MAX_COLUMNS} a dataset may have")
    if rows is not None and rows > MAX_ROWS:
        raise DatasetError(f"{where}: has more than {MAX_ROWS} data rows (the most a dataset may have)")


def text_column(values: Sequence[str | None], name: str, rows: Sequence[int], where: str, unit: str = "line") -> np.ndarray:
    """A text feature column as an object array of ``str`` (``None`` where missing), within the bounds.

    Args:
        values: The column's cells, ``None`` where missing.
        name: The column's name (for messages).
        rows: The line or row number of each cell (for messages).
        where: How to name the table in messages.
        unit: ``line`` (CSV) or ``row`` (Parquet).
    """
    out = np.empty(len(values), dtype=object)
    seen: set[str] = set()
    for i, value in enumerate(values):
        if value is not None and len(value) > MAX_TEXT_CHARS:
            raise DatasetError(
                f"{where}: text feature column '{name}' has a value of {len(value)} characters at {unit} {rows[i]} "
                f"('{show(value)}'); at most {MAX_TEXT_CHARS} are allowed in a category"
            )
        if value is not None and value not in seen:
            seen.add(value)
            if len(seen) > MAX_CATEGORIES:
                raise DatasetError(
                    f"{where}: text feature column '{name}' has more than {MAX_CATEGORIES} distinct values "
                    f"('{show(value)}' at {unit} {rows[i]} is one too many); each becomes a one-hot column, "
                    "so drop an identifier-like column or group its values before tuning"
                )
        out[i] = value
    if not seen:
        raise DatasetError(f"{where}: feature column '{name}' has no values (every cell is empty)")
    return out


def feature_matrix(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Feature columns side by side, and the positions of the text ones.

    All numeric: a float64 matrix, exactly as before text columns existed (so a numeric table's
    row hashes, hence its holdout, never change). With a text column: an object matrix holding
    floats and strings (``None`` for a missing label).
    """
    text = tuple(j for j, column in enumerate(columns) if column.dtype == object)
    if not text:
        return np.column_stack(columns), ()
    out = np.empty((len(columns[0]), len(columns)), dtype=object)
    for j, column in enumerate(columns):
        out[:, j] = column
    return out, text

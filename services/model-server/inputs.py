"""Validation of ``POST /predict`` bodies against the training features, with errors naming the field."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_ROWS = 10_000
MAX_ABS_VALUE = 1e100  # beyond it a scaler's squares overflow float64; no real feature is that large
MAX_TEXT_CHARS = 256  # a text feature's label, as in training (tweakline.ml.tables.MAX_TEXT_CHARS)


class InputError(ValueError):
    """A request body that cannot be predicted on; ``field`` says where (``rows[2].alcohol``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def rows_to_matrix(body: Any, features: tuple[str, ...], text: frozenset[str] = frozenset()) -> np.ndarray:
    """``{"rows": [{feature: value, ...}, ...]}`` as a matrix in training-feature order.

    A feature is a number, except the ``text`` features (the model one-hot encodes them): a
    string label, or null when missing; a label unseen in training is accepted (it encodes as no
    known category). With no text feature the matrix is float64, else an object matrix.
    """
    if not isinstance(body, dict) or "rows" not in body:
        raise InputError("rows", 'expected a JSON object {"rows": [{"<feature>": <number>, ...}, ...]}')
    unknown_keys = sorted(set(body) - {"rows"})
    if unknown_keys:
        raise InputError(unknown_keys[0], "unknown field; the body has only 'rows'")
    rows = body["rows"]
    if not isinstance(rows, list) or not rows:
        raise InputError("rows", f"expected a non-empty list of objects, got {type(rows).__name__}")
    if len(rows) > MAX_ROWS:
        raise InputError("rows", f"at most {MAX_ROWS} rows per request, got {len(rows)}")
    expected = set(features)
    out = np.empty((len(rows), len(features)), dtype=object if text else np.float64)
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise InputError(where, f"expected an object mapping feature names to numbers, got {type(row).__name__}")
        missing = [f for f in features if f not in row]
        if missing:
            raise InputError(f"{where}.{missing[0]}", f"missing feature (expected all of: {', '.join(features)})")
        extra = sorted(k for k in row if k not in expected)
        if extra:
            raise InputError(f"{where}.{extra[0]}", f"unknown feature; expected only: {', '.join(features)}")
        for j, name in enumerate(features):
            value = row[name]
            if name in text:
                out[i, j] = _label(value, f"{where}.{name}")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"{where}.{name}", f"expected a number, got {value!r}")
            if not math.isfinite(value):
                raise InputError(f"{where}.{name}", f"expected a finite number, got {value!r}")
            if abs(value) > MAX_ABS_VALUE:
                raise InputError(f"{where}.{name}", f"expected a number within ±{MAX_ABS_VALUE:g}, got {float(value):g}")
            out[i, j] = value
    return out


def _label(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(field, f"expected a text label (a string, or null when missing), got {value!r}")
    if len(value) > MAX_TEXT_CHARS:
        raise InputError(field, f"expected a label of at most {MAX_TEXT_CHARS} characters, got {len(value)}")
    return value


def jsonable(values: np.ndarray) -> list[Any]:
    """Predictions as plain JSON values (numpy scalars become int/float/str)."""
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(values).tolist()]

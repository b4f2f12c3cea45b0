"""The stable holdout: which rows are test rows depends on each row alone, never on the others.

A row is held out when a salted hash of its content (its feature values and its target)
falls below ``test_size``. Appending rows, dropping rows or re-ordering the file therefore
never moves an existing row between training and test, so a model trained on an earlier
version of the dataset never trained on a row the current test split holds (for the same rule:
:class:`HoldoutRule`). Identical rows share one fate, so a duplicate cannot leak a test row
into training either.

The split this replaces (``train_test_split``, shuffled by position) re-cut the whole dataset
whenever it grew, so rows the production model trained on landed in the new test split and
flattered it in the comparison.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

METHOD = "row-sha256"
"""Name of the assignment rule, recorded with every evaluation and release."""

_SCALE = float(2**64)


@dataclass(frozen=True)
class HoldoutRule:
    """What decides the holdout: the method, the fraction held out and the salt (the dataset seed)."""

    test_size: float
    seed: int
    method: str = METHOD


def row_keys(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One 64-bit content hash per row (features as float64 bytes, then the target's text).

    A table with text features (an object ``X``) hashes each cell on its own, tagged by its kind,
    so a label can never collide with a number; an all-numeric table keeps the float64 hashing.
    """
    X = np.asarray(X)
    if X.dtype == object:
        return _mixed_row_keys(X, y)
    features = np.ascontiguousarray(np.asarray(X, dtype=np.float64))
    keys = np.empty(features.shape[0], dtype=np.uint64)
    for i in range(features.shape[0]):
        h = hashlib.sha256(features[i].tobytes())
        h.update(b"\x00" + str(y[i].item() if hasattr(y[i], "item") else y[i]).encode())
        keys[i] = int.from_bytes(h.digest()[:8], "big")
    return keys


def _mixed_row_keys(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    keys = np.empty(X.shape[0], dtype=np.uint64)
    for i in range(X.shape[0]):
        h = hashlib.sha256()
        for cell in X[i]:
            if isinstance(cell, str):
                text = cell.encode()
                h.update(b"s" + len(text).to_bytes(4, "big") + text)
            elif cell is None:
                h.update(b"n")
            else:
                h.update(b"f" + np.float64(cell).tobytes())
        h.update(b"\x00" + str(y[i].item() if hasattr(y[i], "item") else y[i]).encode())
        keys[i] = int.from_bytes(h.digest()[:8], "big")
    return keys


def held_out(keys: np.ndarray, rule: HoldoutRule) -> np.ndarray:
    """Boolean mask of the rows ``rule`` holds out, given their :func:`row_keys`."""
    if rule.method != METHOD:
        raise ValueError(f"unknown holdout method {rule.method!r}, expected {METHOD!r}")
    salt = hashlib.sha256(f"tweakline-holdout:{rule.seed}".encode()).digest()
    out = np.empty(keys.shape[0], dtype=bool)
    for i, key in enumerate(keys):
        digest = hashlib.sha256(salt + int(key).to_bytes(8, "big")).digest()
        out[i] = int.from_bytes(digest[:8], "big") / _SCALE < rule.test_size
    return out


def digest(keys: np.ndarray) -> str:
    """Hex SHA-256 of a set of rows (their sorted keys): names a test or training set in the evidence."""
    return hashlib.sha256(np.sort(np.asarray(keys, dtype=np.uint64)).astype(">u8").tobytes()).hexdigest()


def unseen_by(test_keys: np.ndarray, current: HoldoutRule, reference: HoldoutRule | None) -> np.ndarray:
    """Mask of the current test rows a model evaluated under ``reference`` cannot have trained on.

    The same rule held out the same rows from that model's training whatever its dataset version
    was, so every test row qualifies; under another rule only the rows that rule also holds out.
    ``reference`` None (the model's rule was never recorded): every row, and the caller says so.
    """
    if reference is None or reference == current:
        return np.ones(test_keys.shape[0], dtype=bool)
    return held_out(test_keys, reference)

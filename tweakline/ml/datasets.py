"""Datasets: loading through the source plug-ins, the deterministic train/test split, and a process-wide cache.

A dataset source is ``<scheme>:<location>`` (``sklearn:iris``, ``csv:data/train.csv``); each scheme
is a plug-in in :mod:`tweakline.ml.sources` that owns its rules and loads it (adding a scheme
never touches this module or the tweak file).

The held-out test split is cut once by :func:`split_dataset`: a row is a test row when a hash of
its content salted by the spec's ``seed`` falls below ``test_size`` (:mod:`tweakline.ml.holdout`),
so the assignment of a row never changes when the dataset grows or is re-ordered. Tuning only
ever sees ``X_train`` / ``y_train``; the evaluator re-creates the identical split with the same
function.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tweakline.errors import DatasetError, Problem
from tweakline.ml.holdout import HoldoutRule, held_out, row_keys
from tweakline.ml.sources import LOADERS, Dataset, DatasetLoader, Task, loader_for, location_of, source_problems
from tweakline.ml.sources.bundled import SklearnLoader, sklearn_task
from tweakline.ml.sources.csv_file import MAX_INFERRED_CLASSES, CsvLoader, table_from_text
from tweakline.ml.sources.https_url import HttpsLoader
from tweakline.ml.sources.uploaded import BlobCache, BlobFetcher, ObjectLoader, needs_prefetch, prefetch, use_object_store
from tweakline.proto.tweakfile import DatasetSpec

# What callers and plug-ins import from here (the sources live in tweakline.ml.sources).
__all__ = [
    "LOADERS",
    "MAX_INFERRED_CLASSES",
    "BlobCache",
    "BlobFetcher",
    "CsvLoader",
    "Dataset",
    "DatasetCache",
    "DatasetError",
    "DatasetLoader",
    "HttpsLoader",
    "ObjectLoader",
    "SklearnLoader",
    "Split",
    "Task",
    "check_dataset",
    "load_dataset",
    "loader_for",
    "location_of",
    "needs_prefetch",
    "prefetch",
    "sklearn_task",
    "source_problems",
    "split_dataset",
    "table_from_text",
    "use_object_store",
]


@dataclass
class Split:
    """The training part (used for tuning) and the held-out test part (used only by the evaluator)."""

    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    task: Task
    feature_names: list[str]
    # content keys of the rows (tweakline.ml.holdout.row_keys) and the rule that split them
    train_keys: np.ndarray | None = None
    test_keys: np.ndarray | None = None
    rule: HoldoutRule | None = None
    # positions of the text feature columns (one-hot encoded by the pipeline, tweakline.ml.encoding)
    categorical: tuple[int, ...] = ()

    @property
    def text_features(self) -> list[str]:
        """Names of the text feature columns."""
        return [self.feature_names[j] for j in self.categorical]


def load_dataset(spec: DatasetSpec, base_dir: Path | None = None, *, task: Task | None = None) -> Dataset:
    """Load the dataset ``spec`` names.

    Args:
        spec: The tweak file's ``spec.dataset``.
        base_dir: The tweak file's folder; relative csv paths are taken from it (else the cwd).
        task: The estimator's task, if known. It wins over inference for csv targets, and a
            bundled dataset of the other task is refused.

    Raises:
        DatasetError: The data cannot be read or does not have the declared shape.
    """
    return loader_for(spec.source).load(spec, base_dir, task)


def check_dataset(spec: DatasetSpec, base_dir: Path | None = None, *, task: Task | None = None) -> list[Problem]:
    """Problems found cheaply before anything runs: the source's own rules (:func:`source_problems`),
    then what its loader checks cheaply (missing file, missing target column, task mismatch)."""
    problems = source_problems(spec.source, spec.target)
    if problems:
        return problems
    return loader_for(spec.source).check(spec, base_dir, task)


def split_dataset(dataset: Dataset, spec: DatasetSpec) -> Split:
    """The deterministic, append-stable train/test split: about ``spec.test_size`` of the rows held out.

    Each row's side is decided by a hash of its own content salted by ``spec.seed``
    (:func:`tweakline.ml.holdout.held_out`), not by its position, so rows added later never move
    an earlier row into the test split. The evaluator calls this with the same spec and gets the
    same split, so the test rows are never seen during tuning.
    """
    rule = HoldoutRule(test_size=spec.test_size, seed=spec.seed)
    keys = row_keys(dataset.X, dataset.y)
    test = held_out(keys, rule)
    n_test = int(test.sum())
    if n_test == 0 or n_test == dataset.n_samples:
        raise DatasetError(
            f"{dataset.name}: test_size={spec.test_size} of {dataset.n_samples} rows holds out {n_test} rows; "
            "expected at least one test row and one training row (use more rows or another test_size)"
        )
    train = ~test
    if dataset.task == "classification" and np.unique(dataset.y[train]).size < 2:
        raise DatasetError(
            f"{dataset.name}: the training rows left by test_size={spec.test_size} hold a single class; "
            "a classifier needs at least two (use more rows or another test_size)"
        )
    return Split(
        dataset.X[train],
        dataset.X[test],
        dataset.y[train],
        dataset.y[test],
        task=dataset.task,
        feature_names=list(dataset.feature_names),
        train_keys=keys[train],
        test_keys=keys[test],
        rule=rule,
        categorical=tuple(dataset.categorical),
    )


class DatasetCache:
    """Loads and splits each dataset once per process; later calls return the same :class:`Split`.

    The key is the data's identity (the bundled dataset's name, or a csv file's absolute path,
    mtime and size, so an edited file is reloaded), the target, ``test_size``, ``seed`` and the
    task. The cached arrays are read-only so that one trial cannot alter another's data. At most
    ``max_entries`` splits are kept (least recently used first out). Safe to share between threads.
    """

    def __init__(self, max_entries: int = 8) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, Split] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, spec: DatasetSpec, base_dir: Path | None = None, *, task: Task | None = None) -> Hashable:
        """The cache key of ``spec`` (raises :class:`DatasetError` if a csv file is missing)."""
        identity = loader_for(spec.source).fingerprint(spec, base_dir)
        return (identity, spec.target, spec.test_size, spec.seed, task)

    def get(self, spec: DatasetSpec, base_dir: Path | None = None, *, task: Task | None = None) -> Split:
        """The split of ``spec``'s dataset, loaded and split on first use."""
        with self._lock:
            key = self.key(spec, base_dir, task=task)
            split = self._entries.get(key)
            if split is not None:
                self.hits += 1
                self._entries.move_to_end(key)
                return split
            self.misses += 1
            split = split_dataset(load_dataset(spec, base_dir, task=task), spec)
            for array in (split.X_train, split.X_test, split.y_train, split.y_test, split.train_keys, split.test_keys):
                array.setflags(write=False)
            self._entries[key] = split
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return split

    def clear(self) -> None:
        """Forget every cached split."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

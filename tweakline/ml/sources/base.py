"""The dataset-source plug-in interface and its registry: one :class:`DatasetLoader` per URI scheme.

A dataset source is ``<scheme>:<location>`` (``sklearn:iris``, ``csv:data/train.csv``). The tweak
file keeps it a plain string (:class:`tweakline.proto.tweakfile.DatasetSpec`); the loader of its
scheme owns every rule about it: the syntax of the location (:meth:`DatasetLoader.source_problem`,
checked before anything runs and again before loading), whether a target column is needed
(:attr:`DatasetLoader.needs_target`), what can be checked cheaply (:meth:`DatasetLoader.check`),
and how it loads (:meth:`DatasetLoader.load`). Adding a scheme is one module with one subclass
decorated with :func:`register_source`, imported by :mod:`tweakline.ml.sources`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

import numpy as np

from tweakline.errors import DatasetError, Problem
from tweakline.proto.tweakfile import DatasetSpec

Task = Literal["classification", "regression"]


@dataclass
class Dataset:
    """A whole dataset in memory: features as a 2-D array, targets, and what they mean.

    ``X`` is float64 when every feature is numeric; with text features (``categorical``: their
    column positions) it is an object array of floats and strings (``None`` for a missing label).
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    task: Task
    name: str
    categorical: tuple[int, ...] = ()

    @property
    def n_samples(self) -> int:
        """Number of rows."""
        return int(self.X.shape[0])


class DatasetLoader(ABC):
    """Loads one URI scheme. Subclasses set :attr:`scheme` and :attr:`form` and implement :meth:`load`."""

    scheme: ClassVar[str]
    # How a source of this scheme is written (listed when a source names no registered scheme).
    form: ClassVar[str]
    # Whether a source of this scheme is a table, which needs spec.dataset.target (its target column).
    needs_target: ClassVar[bool] = True
    # True for schemes that open files on the machine that loads them (a platform refuses those
    # from the bus: a submitter must never make a runner read the runner's own disk).
    reads_host_files: ClassVar[bool] = False

    def source_problem(self, source: str) -> str | None:
        """What is wrong with ``source`` as a source of this scheme (its syntax only: no file or
        network is touched), stating the rule and the value; ``None`` when it is well formed."""
        return None

    @abstractmethod
    def load(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> Dataset:
        """Load the dataset ``spec.source`` names; raise :class:`DatasetError` on any problem."""

    def fingerprint(self, spec: DatasetSpec, base_dir: Path | None) -> Hashable:
        """What identifies this version of the data, for the cache (e.g. a file's path, mtime and size)."""
        return (spec.source,)

    def check(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> list[Problem]:
        """Cheap problems found without loading everything (paths under ``spec.dataset``)."""
        return []


LOADERS: dict[str, DatasetLoader] = {}
"""Scheme -> loader, in registration order (the order sources are listed in messages)."""

_L = TypeVar("_L", bound=type[DatasetLoader])


def register_source(cls: _L) -> _L:
    """Register a :class:`DatasetLoader` subclass under its :attr:`~DatasetLoader.scheme` (a class decorator)."""
    LOADERS[cls.scheme] = cls()
    return cls


def location_of(source: str) -> str:
    """The part of a source after ``<scheme>:``."""
    return source.partition(":")[2]


def _listed(items: list[str], last: str = "or") -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def unknown_source(source: str) -> str:
    """The message for a source whose scheme is not registered: the value, then every registered form."""
    return f"unknown dataset source '{source}', expected {_listed([loader.form for loader in LOADERS.values()])}"


def source_problems(source: str, target: str | None) -> list[Problem]:
    """Problems of ``spec.dataset``'s source and target found without reading anything.

    The scheme must be registered, the loader of the scheme judges the rest of the source, and a
    table source needs a target column (checked only once the source is well formed).
    """
    loader = LOADERS.get(source.partition(":")[0])
    if loader is None:
        return [Problem("spec.dataset.source", unknown_source(source))]
    why = loader.source_problem(source)
    if why is not None:
        return [Problem("spec.dataset.source", why)]
    if loader.needs_target and not target:
        tables = _listed([f"{scheme}:" for scheme, other in LOADERS.items() if other.needs_target], "and")
        return [Problem("spec.dataset.target", f"required for {tables} sources (the name of the target column)")]
    return []


def loader_for(source: str) -> DatasetLoader:
    """The loader of ``source``'s scheme, once the source is well formed; :class:`DatasetError` otherwise."""
    loader = LOADERS.get(source.partition(":")[0])
    if loader is None:
        raise DatasetError(unknown_source(source))
    why = loader.source_problem(source)
    if why is not None:
        raise DatasetError(why)
    return loader


def too_few_rows(dataset: DatasetSpec, rows: int, shown: str, cv: int) -> list[Problem]:
    """A problem if a table of ``rows`` data rows cannot give ``cv`` folds and the test split."""
    needed = max(math.ceil(cv / (1 - dataset.test_size)), math.ceil(2 / dataset.test_size), cv + 2)
    if rows >= needed:
        return []
    return [
        Problem(
            "spec.dataset.source",
            f"{shown} has {rows} data row(s); expected at least {needed} "
            f"for {cv}-fold cross-validation and a test split of {dataset.test_size}",
        )
    ]

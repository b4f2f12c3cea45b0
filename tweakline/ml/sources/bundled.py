"""``sklearn:<name>``: the small datasets bundled with scikit-learn (iris, digits, wine,
breast_cancer: classification; diabetes: regression). Their task is known, so a bundled dataset of
the other task than the estimator's is refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tweakline.errors import DatasetError, Problem
from tweakline.ml.sources.base import Dataset, DatasetLoader, Task, location_of, register_source
from tweakline.proto.tweakfile import DatasetSpec

# name -> (the loader's name in sklearn.datasets, task). Named, not imported: scikit-learn (2 CPU-s
# and ~60 MB) is imported only by the process that loads one, not by every service that validates.
_SKLEARN: dict[str, tuple[str, Task]] = {
    "iris": ("load_iris", "classification"),
    "digits": ("load_digits", "classification"),
    "wine": ("load_wine", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "diabetes": ("load_diabetes", "regression"),
}


def sklearn_task(name: str) -> Task | None:
    """The task of the bundled scikit-learn dataset ``name``, or None if there is no such dataset."""
    entry = _SKLEARN.get(name)
    return entry[1] if entry else None


@register_source
class SklearnLoader(DatasetLoader):
    """``sklearn:<name>``: the small datasets bundled with scikit-learn (no download)."""

    scheme = "sklearn"
    form = "sklearn:<name>"
    needs_target = False

    def source_problem(self, source: str) -> str | None:
        name = location_of(source)
        if name not in _SKLEARN:
            return f"unknown scikit-learn dataset '{name}', expected one of {', '.join(_SKLEARN)}"
        return None

    def load(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> Dataset:
        name = location_of(spec.source)
        entry = _SKLEARN.get(name)
        if entry is None:
            raise DatasetError(f"unknown scikit-learn dataset '{name}', expected one of {', '.join(_SKLEARN)}")
        loader, known_task = entry
        if task is not None and task != known_task:
            raise DatasetError(f"'{spec.source}' is a {known_task} dataset, it cannot be used for {task}")
        from sklearn import datasets as sk_datasets

        bunch = getattr(sk_datasets, loader)()
        X = np.asarray(bunch.data, dtype=np.float64)
        y = np.asarray(bunch.target, dtype=np.int64 if known_task == "classification" else np.float64)
        names = getattr(bunch, "feature_names", None)
        names = [str(n) for n in names] if names is not None else [f"x{i}" for i in range(X.shape[1])]
        return Dataset(X=X, y=y, feature_names=names, task=known_task, name=name)

    def check(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> list[Problem]:
        known = sklearn_task(location_of(spec.source))
        if known is not None and task is not None and known != task:
            return [Problem("spec.dataset.source", f"'{spec.source}' is a {known} dataset but the estimator is a {_noun(task)}")]
        return []


def _noun(task: Task) -> str:
    return "classifier" if task == "classification" else "regressor"

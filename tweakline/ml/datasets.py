"""Datasets: loaders keyed by URI scheme, the deterministic train/test split, and a process-wide cache.

A dataset source is ``<scheme>:<location>`` (``sklearn:iris``, ``csv:data/train.csv``). Each scheme
is one :class:`DatasetLoader` subclass registered in :data:`LOADERS`; adding a scheme is one new
class and its registration, in a module of its own as :mod:`tweakline.ml.datasets_parquet` does
(plus accepting the scheme in :class:`tweakline.proto.tweakfile.DatasetSpec`).

The held-out test split is cut once by :func:`split_dataset`: a row is a test row when a hash of
its content salted by the spec's ``seed`` falls below ``test_size`` (:mod:`tweakline.ml.holdout`),
so the assignment of a row never changes when the dataset grows or is re-ordered. Tuning only
ever sees ``X_train`` / ``y_train``; the evaluator re-creates the identical split with the same
function.

Task of a dataset:

* ``sklearn:`` datasets have a known task: iris, digits, wine and breast_cancer are
  classification, diabetes is regression.
* ``csv:`` datasets take the task the caller passes (the estimator's, see
  :func:`tweakline.ml.estimators.task_of`). When none is passed it is inferred from the
  target column: non-numeric labels are classification; numbers that are all integers with at
  most :data:`MAX_INFERRED_CLASSES` distinct values are classification; anything else is
  regression.

CSV files: UTF-8 (a BOM is ignored), comma-separated, a header row naming the columns. Every
column except the target is a feature: numeric, or text (category labels, one-hot encoded by the
training pipeline, see :mod:`tweakline.ml.tables` and :mod:`tweakline.ml.encoding`); empty cells and
``NA``/``NaN``/``null`` in feature columns are missing (NaN in a numeric column: use an imputer step
in the pipeline; ``None`` in a text column: a category of its own). Every row needs a target.
Tables are bounded in size, rows and columns (:mod:`tweakline.ml.tables`). Parquet files are the
``parquet:`` scheme (:mod:`tweakline.ml.datasets_parquet`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from tweakline.errors import DatasetError, Problem
from tweakline.ml import tables
from tweakline.ml.holdout import HoldoutRule, held_out, row_keys
from tweakline.ml.tables import check_shape, check_size, feature_matrix, text_column
from tweakline.proto.tweakfile import DatasetSpec

Task = Literal["classification", "regression"]

MAX_INFERRED_CLASSES = 20
"""An integer csv target with at most this many distinct values is inferred to be classification."""

_MISSING = frozenset({"", "na", "nan", "null", "none", "n/a"})
_SHOW = 40  # characters of a cell shown in an error message


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


class DatasetLoader(ABC):
    """Loads one URI scheme. Subclasses set :attr:`scheme` and implement :meth:`load`."""

    scheme: ClassVar[str]
    # True for schemes that open files on the machine that loads them (a platform refuses those
    # from the bus: a submitter must never make a runner read the runner's own disk).
    reads_host_files: ClassVar[bool] = False

    @abstractmethod
    def load(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> Dataset:
        """Load the dataset ``spec.source`` names; raise :class:`DatasetError` on any problem."""

    def fingerprint(self, spec: DatasetSpec, base_dir: Path | None) -> Hashable:
        """What identifies this version of the data, for the cache (e.g. a file's path, mtime and size)."""
        return (spec.source,)

    def check(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> list[Problem]:
        """Cheap problems found without loading everything (paths under ``spec.dataset``)."""
        return []


def location_of(source: str) -> str:
    """The part of a source after ``<scheme>:``."""
    return source.partition(":")[2]


# --------------------------------------------------------------------------------------- sklearn


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


class SklearnLoader(DatasetLoader):
    """``sklearn:<name>``: the small datasets bundled with scikit-learn (no download)."""

    scheme = "sklearn"

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


# ------------------------------------------------------------------------------------------- csv


def _show(cell: str) -> str:
    return cell if len(cell) <= _SHOW else cell[: _SHOW - 1] + "…"


class CsvLoader(DatasetLoader):
    """``csv:<path>``: a comma-separated file with a header row; the path is relative to the tweak file."""

    scheme = "csv"
    reads_host_files = True

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
            return [Problem("spec.dataset.target", _missing_target(spec.target, columns, path))]
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
            raise DatasetError(f"{where}: {_missing_target(spec.target, header, path)}")
        if not rows:
            raise DatasetError(f"{where}: has a header but no data rows")
        t = header.index(spec.target)
        features = [i for i in range(len(header)) if i != t]
        if not features:
            raise DatasetError(f"{where}: has no feature columns besides the target '{spec.target}'")

        columns = list(zip(*rows))
        X, categorical = feature_matrix([_feature_column(columns[i], header[i], lines, where) for i in features])
        y, kind = _target_column(columns[t], spec.target, lines, where, task)
        return Dataset(X=X, y=y, feature_names=[header[i] for i in features], task=kind, name=path.name, categorical=categorical)


def table_from_text(text: str, target: str, where: str, task: Task | None = None) -> Dataset:
    """Parse CSV ``text`` exactly as :meth:`CsvLoader.load` parses a file (for checks of a file's
    first part before anything runs); raises :class:`DatasetError` naming the line and column."""
    try:
        header, rows, lines = _read_rows(io.StringIO(text, newline=""), where)
    except csv.Error as exc:
        raise DatasetError(f"{where}: not a valid CSV file: {exc}") from None
    if target not in header:
        raise DatasetError(f"{where}: {_missing_target(target, header, Path(where))}")
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
    y, kind = _target_column(columns[t], target, lines, where, task)
    return Dataset(
        X=X, y=y, feature_names=[header[i] for i in features], task=kind, name=Path(where).name, categorical=categorical
    )


def _missing_target(target: str | None, columns: list[str], path: Path) -> str:
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


def _target_column(
    cells: tuple[str, ...] | list[str], name: str, lines: list[int], where: str, task: Task | None, unit: str = "line"
) -> tuple[np.ndarray, Task]:
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


# -------------------------------------------------------------------------------------- registry


# ------------------------------------------------------------------ uploaded (object:) and https:


BlobFetcher = Callable[[str], bytes]
"""Returns the bytes of the uploaded file with this SHA-256 (blocking; called from a worker thread)."""


class BlobCache:
    """Downloaded dataset files on local disk, named by their SHA-256 and verified before use.

    Runners keep these between experiments, so an uploaded dataset is fetched once per machine.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fetches = 0

    def path(self, digest: str) -> Path:
        """Where the file with this hash is kept."""
        return self.directory / digest[:2] / digest

    def get(self, digest: str, fetch: Callable[[], bytes], what: str) -> Path:
        """The local path of ``digest``, calling ``fetch`` (and checking the hash) on a miss."""
        path = self.path(digest)
        if path.is_file() and _sha256_file(path) == digest:
            return path
        self.fetches += 1
        data = fetch()
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise DatasetError(f"{what}: content has sha256 {actual[:12]}..., expected {digest[:12]}...; refusing it")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.part")
        partial.write_bytes(data)
        partial.replace(path)  # atomic: a concurrent reader never sees half a file
        return path


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_csv_file(spec: DatasetSpec, path: Path, task: Task | None, name: str) -> Dataset:
    dataset = CsvLoader().load(spec.model_copy(update={"source": f"csv:{path}"}), None, task)
    dataset.name = name
    return dataset


def _load_uploaded(spec: DatasetSpec, path: Path, task: Task | None, name: str) -> Dataset:
    """An uploaded file in the format its source names (``object:csv:`` or ``object:parquet:``)."""
    if spec.source.startswith("object:parquet:"):
        from tweakline.ml.datasets_parquet import object_parquet

        return object_parquet(path, spec, task, name)
    return _load_csv_file(spec, path, task, name)


class ObjectLoader(DatasetLoader):
    """``object:csv:<sha256>`` (or ``object:parquet:<sha256>``): a file uploaded by ``tweakline submit`` (or the webhook) to the
    datasets object store, fetched once into the local :class:`BlobCache` and read from there.

    The process configures where the bytes come from with :func:`use_object_store` (the runner and
    evaluator do at start-up, with their NATS connection).
    """

    scheme = "object"
    fetcher: BlobFetcher | None = None
    cache: BlobCache = BlobCache(Path(tempfile.gettempdir()) / "tweakline-datasets")

    @staticmethod
    def digest(spec: DatasetSpec) -> str:
        """The sha256 the source names."""
        return spec.source.rsplit(":", 1)[1]

    def fingerprint(self, spec: DatasetSpec, base_dir: Path | None) -> Hashable:
        return ("sha256", self.digest(spec))

    def load(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> Dataset:
        digest = self.digest(spec)
        fetcher = type(self).fetcher
        if fetcher is None:
            raise DatasetError(f"{spec.source}: this process has no connection to the datasets object store")
        path = type(self).cache.get(digest, lambda: fetcher(digest), spec.source)
        return _load_uploaded(spec, path, task, f"sha256:{digest[:12]}")


def prefetch(spec: DatasetSpec) -> None:
    """Bring an uploaded (``object:``) dataset into the local cache; other sources need nothing.

    The runner calls it before handing a trial to its training process, which has no NATS
    connection and reads the same cache directory.
    """
    if not spec.source.startswith(f"{ObjectLoader.scheme}:"):
        return
    digest = ObjectLoader.digest(spec)
    fetcher = ObjectLoader.fetcher
    if fetcher is None:
        raise DatasetError(f"{spec.source}: this process has no connection to the datasets object store")
    ObjectLoader.cache.get(digest, lambda: fetcher(digest), spec.source)


def use_object_store(fetcher: BlobFetcher | None, cache_dir: Path | None = None) -> None:
    """Make ``object:`` sources loadable in this process: where bytes come from and where they are kept."""
    ObjectLoader.fetcher = fetcher
    if cache_dir is not None:
        ObjectLoader.cache = BlobCache(cache_dir)


MAX_DOWNLOAD_BYTES = 1 << 30
"""Largest dataset an https: source may be (1 GiB)."""


class HttpsLoader(DatasetLoader):
    """``https://<host>/<path>.csv``: downloaded once per process (and once per machine when the URL
    ends with ``#sha256=<hex>``, which is also checked)."""

    scheme = "https"

    @staticmethod
    def pinned(source: str) -> str | None:
        """The sha256 the URL's fragment pins, if any."""
        fragment = source.partition("#")[2]
        return fragment[7:].lower() if fragment.startswith("sha256=") else None

    def load(self, spec: DatasetSpec, base_dir: Path | None, task: Task | None) -> Dataset:
        url = spec.source.partition("#")[0]
        name = url.rsplit("/", 1)[-1]
        pinned = self.pinned(spec.source)
        if pinned is not None:
            path = ObjectLoader.cache.get(pinned, lambda: _download(url), spec.source)
            return _load_csv_file(spec, path, task, name)
        data = _download(url)
        digest = hashlib.sha256(data).hexdigest()
        path = ObjectLoader.cache.get(digest, lambda: data, spec.source)
        return _load_csv_file(spec, path, task, name)


def _download(url: str) -> bytes:
    import httpx  # only runners that read https: sources need it

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=60.0) as response:
            if response.status_code != 200:
                raise DatasetError(f"{url}: HTTP {response.status_code} {response.reason_phrase}")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise DatasetError(f"{url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise DatasetError(f"{url}: download failed: {exc}") from None


LOADERS: dict[str, DatasetLoader] = {
    SklearnLoader.scheme: SklearnLoader(),
    CsvLoader.scheme: CsvLoader(),
    ObjectLoader.scheme: ObjectLoader(),
    HttpsLoader.scheme: HttpsLoader(),
}
"""Scheme -> loader. A new scheme is one :class:`DatasetLoader` subclass registered here (a line
below, or by its own module, as :mod:`tweakline.ml.datasets_parquet` registers ``parquet:``)."""


def loader_for(source: str) -> DatasetLoader:
    """The loader of ``source``'s scheme; :class:`DatasetError` if there is none."""
    scheme = source.partition(":")[0]
    loader = LOADERS.get(scheme)
    if loader is None:
        raise DatasetError(f"unknown dataset source '{source}', expected one of the schemes {', '.join(LOADERS)}")
    return loader


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
    """Problems found cheaply before anything runs (missing file, missing target column, task mismatch)."""
    try:
        loader = loader_for(spec.source)
    except DatasetError as exc:
        return [Problem("spec.dataset.source", str(exc))]
    return loader.check(spec, base_dir, task)


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


_shared: DatasetCache | None = None
_shared_lock = threading.Lock()


# Plug-ins in modules of their own register themselves in LOADERS when imported (they import this
# module, so they come last; a plain module import also works when the plug-in is imported first).
import tweakline.ml.datasets_parquet  # noqa: E402, F401

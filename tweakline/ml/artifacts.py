"""Model artifacts: skops only, integrity-checked, loaded with an explicit list of trusted types.

Nothing here uses pickle. :func:`dump_model` gives the skops bytes and their SHA-256; the hash
travels with the artifact's reference on the bus (:class:`tweakline.proto.messages.ArtifactRef`).
:func:`load_model` refuses bytes whose hash differs (tampered or truncated) and any type skops
does not trust by itself unless it is named in :data:`TRUSTED_TYPES` or by the caller.

Why these types are trusted: they are scikit-learn's own fitted structures (tree arrays,
neighbour indexes, distance metrics, MLP optimiser state, calibration wrappers), found in models
a tweak file can build. skops flags them because their arrays are not bounds-checked on
``predict`` (a crafted file could crash the process); they never run code on load. A file is
only loaded after its hash matched the one our own evaluator recorded, so it is a file we wrote.
Never pass ``trusted=True`` (skops removed it after a CVE) and never trust the whole output of
``get_untrusted_types`` for a file from elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.abc
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from tweakline.errors import ArtifactError

TRUSTED_TYPES: frozenset[str] = frozenset(
    {
        # Decision trees, random forests, extra trees, gradient boosting, AdaBoost, bagging.
        "sklearn.tree._tree.Tree",
        # HistGradientBoostingClassifier / Regressor.
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        # k-nearest neighbours (KD and ball trees with the common Minkowski-family metrics).
        "sklearn.neighbors._kd_tree.KDTree",
        "sklearn.neighbors._ball_tree.BallTree",
        "sklearn.metrics._dist_metrics.EuclideanDistance64",
        "sklearn.metrics._dist_metrics.ManhattanDistance64",
        "sklearn.metrics._dist_metrics.MinkowskiDistance64",
        "sklearn.metrics._dist_metrics.ChebyshevDistance64",
        # MLPClassifier / MLPRegressor with the adam or sgd solver.
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        # CalibratedClassifierCV (the replacement for SVC(probability=True)).
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        # A fitted ColumnTransformer (the one-hot encoding of text features, tweakline.ml.encoding)
        # records its inputs' dtypes; a dtype is data, it runs nothing when loaded.
        "numpy.dtype",
    }
)
"""Types beyond skops' defaults that :func:`load_model` accepts without being told."""


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 lower-case hex digits."""
    return hashlib.sha256(data).hexdigest()


def _allowed(trusted: Iterable[str] | None) -> frozenset[str]:
    if isinstance(trusted, bool) or isinstance(trusted, str):
        raise ArtifactError(f"trusted must be a list of type names, got {trusted!r}")
    return TRUSTED_TYPES | frozenset(trusted or ())


class _WithoutTorch(importlib.abc.MetaPathFinder):
    """Makes ``import torch`` fail while skops is first imported (see :func:`_skops`)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"torch is not needed to list scikit-learn's types: {name}")
        return None


_skops_lock = threading.Lock()


@contextlib.contextmanager
def _estimators_listed() -> Iterator[None]:
    """While skops is first imported, ``sklearn.utils.all_estimators()`` answers from a list.

    skops takes only each estimator's module and name from it (for its default trusted types), so
    classes of those names stand in for the real ones, whose modules are then not imported
    (:mod:`tweakline.ml.sklearn_estimators`). Nothing changes when the installed scikit-learn is
    not the listed version.
    """
    import sklearn
    import sklearn.utils

    from tweakline.ml.sklearn_estimators import ESTIMATORS, SKLEARN_VERSION

    if sklearn.__version__ != SKLEARN_VERSION:
        yield
        return
    real = sklearn.utils.all_estimators
    listed = [(name, type(name, (), {"__module__": module})) for module, name in ESTIMATORS]

    def all_estimators(type_filter: Any = None) -> list[tuple[str, type]]:
        return list(listed) if type_filter is None else real(type_filter)

    sklearn.utils.all_estimators = all_estimators
    try:
        yield
    finally:
        sklearn.utils.all_estimators = real


def _skops() -> Any:
    """skops.io, imported when a model is first saved or loaded, without torch nor all of scikit-learn.

    Importing skops lists scikit-learn's estimators, which imports every scikit-learn module
    (answered from a list instead: :func:`_estimators_listed`), including its array-API adapter
    for torch, which imports torch when it is installed: seconds of CPU and ~190 MB in every
    process, although no torch type is ever in a skops artifact. Processes that never handle a
    model (the scheduler, the runners) do not pay for skops at all.
    """
    with _skops_lock:
        if "skops.io" not in sys.modules:
            finder = _WithoutTorch()
            if "torch" not in sys.modules:
                sys.meta_path.insert(0, finder)
            try:
                with _estimators_listed():
                    import skops.io
            finally:
                if finder in sys.meta_path:
                    sys.meta_path.remove(finder)
        import skops.io

        return skops.io


def _untrusted(data: bytes) -> list[str]:
    sio = _skops()
    try:
        return list(sio.get_untrusted_types(data=data))
    except Exception as exc:
        raise ArtifactError(f"not a readable skops artifact: {type(exc).__name__}: {exc}") from None


def _refused(untrusted: list[str], allowed: frozenset[str]) -> list[str]:
    return sorted(t for t in untrusted if t not in allowed)


def dump_model(estimator: Any, trusted: Iterable[str] | None = None) -> tuple[bytes, str]:
    """The skops bytes of ``estimator`` and their SHA-256 hex digest.

    Refuses (:class:`ArtifactError`) a model that :func:`load_model` would not load with the same
    ``trusted`` list, so an unloadable artifact is caught when it is written, not when deployed.
    """
    sio = _skops()
    try:
        data = sio.dumps(estimator)
    except Exception as exc:
        raise ArtifactError(f"cannot save {type(estimator).__name__} with skops: {type(exc).__name__}: {exc}") from None
    refused = _refused(_untrusted(data), _allowed(trusted))
    if refused:
        raise ArtifactError(
            f"{type(estimator).__name__} contains types that are not trusted for loading: {', '.join(refused)}; "
            "add them to the trusted types only after checking they are safe"
        )
    return data, sha256_hex(data)


def load_model(data: bytes, expected_sha256: str, trusted: Iterable[str] | None = None) -> Any:
    """The estimator in ``data``, after checking its hash and the types it contains.

    Args:
        data: skops bytes, as written by :func:`dump_model`.
        expected_sha256: The digest recorded when the artifact was written.
        trusted: Type names to trust besides :data:`TRUSTED_TYPES` (a list, never True).

    Raises:
        ArtifactError: The hash differs, the bytes are not a skops file, or they contain a type
            that is not trusted.
    """
    actual = sha256_hex(data)
    if not hmac.compare_digest(actual, expected_sha256.strip().lower()):
        raise ArtifactError(
            f"artifact hash mismatch: expected sha256 {expected_sha256}, got {actual}; "
            "the bytes changed after they were written (tampered or truncated), refusing to load"
        )
    allowed = _allowed(trusted)
    untrusted = _untrusted(data)
    refused = _refused(untrusted, allowed)
    if refused:
        raise ArtifactError(f"artifact contains untrusted types: {', '.join(refused)}; refusing to load")
    sio = _skops()
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return sio.loads(data, trusted=[t for t in untrusted if t in allowed])
    except UntrustedTypesFoundException as exc:
        raise ArtifactError(f"artifact contains untrusted types: {exc}") from None
    except Exception as exc:
        raise ArtifactError(f"cannot load the artifact: {type(exc).__name__}: {exc}") from None


# ------------------------------------------------------------------------- trainer model bundles

TRAINER_SUFFIX = ".trainer.tar.gz"
"""Artifact names of models saved by a trainer end with this (skops models end with ``.skops``)."""
MAX_TRAINER_ARTIFACT_BYTES = 256 * 2**20
MAX_CODE_BYTES = 20 * 2**20
_SKIPPED_DIRS = frozenset({".git", ".venv", "__pycache__", ".tweakline", "node_modules", ".mypy_cache", ".pytest_cache"})


def _add_tree(tar: Any, root: Any, arcname: str, limit: int) -> int:
    """Add ``root``'s files under ``arcname`` (sorted, fixed metadata: same tree, same bytes); returns bytes added."""
    import tarfile
    from pathlib import Path

    total = 0
    base = Path(root)
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base)
        if any(part in _SKIPPED_DIRS for part in rel.parts) or path.is_symlink() or not path.is_file():
            continue
        total += path.stat().st_size
        if total > limit:
            raise ArtifactError(f"{base} holds more than {limit // 2**20} MiB; refusing to pack it")
        info = tarfile.TarInfo(f"{arcname}/{rel.as_posix()}")
        info.size = path.stat().st_size
        info.mode = 0o644
        with path.open("rb") as handle:
            tar.addfile(info, handle)
    return total


def pack_trainer_model(model_dir: Any, code_dir: Any, predict: str) -> tuple[bytes, str]:
    """A trainer's saved model, the code of its ``predict`` entry point and a manifest, as one tar.gz; and its sha256.

    The model server serves it by calling ``predict(model_dir, X)`` from the same code.
    """
    import gzip
    import io
    import json
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_tree(tar, model_dir, "model", MAX_TRAINER_ARTIFACT_BYTES)
        _add_tree(tar, code_dir, "code", MAX_CODE_BYTES)
        manifest = json.dumps({"kind": "trainer", "predict": predict}).encode()
        info = tarfile.TarInfo("tweakline-model.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    data = gzip.compress(raw.getvalue(), mtime=0)  # no timestamp: the same model gives the same hash
    return data, sha256_hex(data)


class TrainerModel:
    """A trainer's model unpacked on disk, served through its ``predict(model_dir, X)`` entry point.

    The entry point is imported in this process: whoever runs the model server runs the trainer's
    code (docs/trainers.md, trust model).
    """

    def __init__(self, root: Any, predict: str):
        from pathlib import Path

        self.root = Path(root)
        self.model_dir = self.root / "model"
        self.entry = predict
        self._predict: Any = None

    def _load(self) -> Any:
        if self._predict is None:
            from tweakline.ml.trainers.kinds import load_entry

            self._predict = load_entry(self.entry, self.root / "code")
        return self._predict

    def predict(self, X: Any) -> Any:
        """The entry point's predictions for ``X``."""
        import numpy as np

        return np.asarray(self._load()(self.model_dir, np.asarray(X)))


def load_trainer_model(data: bytes, expected_sha256: str, cache_dir: Any) -> TrainerModel:
    """Unpack a trainer model bundle (after checking its hash) into ``cache_dir/<sha256>`` and return it.

    Raises :class:`ArtifactError` on a hash mismatch, a bundle that is not ours or a member that
    would land outside its folder.
    """
    import io
    import json
    import tarfile
    from pathlib import Path

    actual = sha256_hex(data)
    if not hmac.compare_digest(actual, expected_sha256.strip().lower()):
        raise ArtifactError(
            f"artifact hash mismatch: expected sha256 {expected_sha256}, got {actual}; "
            "the bytes changed after they were written (tampered or truncated), refusing to load"
        )
    root = Path(cache_dir) / actual
    if not (root / "tweakline-model.json").is_file():
        tmp = root.with_name(root.name + ".partial")
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..' and links out
        except (tarfile.TarError, OSError) as exc:
            raise ArtifactError(f"not a trainer model bundle: {exc}") from None
        tmp.replace(root) if not root.exists() else None
    try:
        manifest = json.loads((root / "tweakline-model.json").read_text())
        predict = str(manifest["predict"])
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"trainer model bundle without a valid manifest: {exc}") from None
    return TrainerModel(root, predict)


def is_trainer_artifact(name: str) -> bool:
    """Whether the artifact called ``name`` is a trainer's model bundle (not a skops file)."""
    return name.endswith(TRAINER_SUFFIX)

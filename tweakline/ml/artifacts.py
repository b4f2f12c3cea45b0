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

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

import skops.io as sio
from skops.io.exceptions import UntrustedTypesFoundException

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


def _untrusted(data: bytes) -> list[str]:
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
    try:
        return sio.loads(data, trusted=[t for t in untrusted if t in allowed])
    except UntrustedTypesFoundException as exc:
        raise ArtifactError(f"artifact contains untrusted types: {exc}") from None
    except Exception as exc:
        raise ArtifactError(f"cannot load the artifact: {type(exc).__name__}: {exc}") from None

"""The model being served, and the reference that is swapped when a new revision goes live.

A request takes the reference once and uses that model to the end, so a swap never disturbs
a request in flight; the new model is loaded (hash checked, skops-loaded) completely before
the reference moves. Assigning one attribute is atomic in Python: no lock is needed.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tweakline.errors import ArtifactError
from tweakline.ml.artifacts import is_trainer_artifact, load_model, load_trainer_model
from tweakline.ml.encoding import text_columns
from tweakline.proto.messages import ArtifactRef, ReleaseRevision
from tweakline.runtime.objects import get_artifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A fitted model and what it is: release, revision, features, artifact."""

    release: str
    revision: int
    experiment_id: str
    estimator: str
    features: tuple[str, ...]
    artifact: ArtifactRef
    model: Any = field(repr=False)
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # the inputs the model one-hot encodes itself (text labels, not numbers): read from the model
    text_features: frozenset[str] = frozenset()

    def version(self) -> dict[str, Any]:
        """The ``/version`` body."""
        return {
            "release": self.release,
            "revision": self.revision,
            "experiment_id": self.experiment_id,
            "estimator": self.estimator,
            "artifact": self.artifact.name,
            "sha256": self.artifact.sha256,
            "features": list(self.features),
            "text_features": [f for f in self.features if f in self.text_features],
            "loaded_at": self.loaded_at.isoformat(),
        }


class ModelSlot:
    """Holds the model now served; :meth:`swap` replaces it in one step."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        self.last_error: str | None = None

    def swap(self, new: LoadedModel) -> LoadedModel | None:
        """Serve ``new`` from now on; return the model it replaced."""
        old, self.current = self.current, new
        self.last_error = None
        return old


# Where trainer model bundles are unpacked, by their sha256 (set by the server at start).
TRAINER_CACHE = Path(tempfile.gettempdir()) / "tweakline-trainer-models"


async def load_revision(js: Any, release: str, revision: ReleaseRevision, artifact: ArtifactRef | None = None) -> LoadedModel:
    """Download, hash-check and load a revision's model (off the event loop); :class:`ArtifactError` if refused.

    A skops model is loaded with its trusted types; a trainer's bundle (``*.trainer.tar.gz``) is
    unpacked by its hash and served through its declared ``predict`` entry point.
    """
    ref = artifact or revision.artifact
    data = await get_artifact(js, ref)
    if is_trainer_artifact(ref.name):
        model = await asyncio.to_thread(_load_trainer, data, ref.sha256)
    else:
        model = await asyncio.to_thread(load_model, data, ref.sha256)
    if not revision.features:
        raise ArtifactError(
            f"release {release} revision {revision.revision} records no training feature names; "
            "inputs cannot be validated, refusing to serve it"
        )
    features = tuple(revision.features)
    text = text_columns(model)
    if any(j >= len(features) for j in text):
        raise ArtifactError(
            f"release {release} revision {revision.revision} encodes text input {max(text) + 1} "
            f"but records {len(features)} features; refusing to serve it"
        )
    return LoadedModel(
        release=release,
        revision=revision.revision,
        experiment_id=revision.experiment_id,
        estimator=revision.estimator,
        features=features,
        artifact=ref,
        model=model,
        text_features=frozenset(features[j] for j in text),
    )


def _load_trainer(data: bytes, sha256: str) -> Any:
    """Unpack and import a trainer model, and try it once so a broken entry point is refused before the swap."""
    model = load_trainer_model(data, sha256, TRAINER_CACHE)
    try:
        model._load()
    except Exception as exc:  # the user's code: whatever it raises, the old model keeps serving
        raise ArtifactError(f"the trainer's predict entry point {model.entry} cannot be imported: {exc}") from None
    return model

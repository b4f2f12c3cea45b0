"""Preparing an experiment for a running platform: datasets uploaded by content, and where it came from.

A tweak file that names a local table (``csv:data/train.csv``, ``parquet:data/train.parquet``)
cannot be read by a runner in a pod, so before submitting, the file's bytes go to the datasets
object store under their SHA-256 and the tweak file is rewritten to ``object:csv:<sha256>``
(``object:parquet:<sha256>``). The same bytes are never
sent twice, and runners fetch and cache them by hash. ``tweakline submit`` reads the files from
disk; the webhook reads them from the repository at the pushed commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext

from tweakline.errors import BusError, DatasetError
from tweakline.proto.messages import Source
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.objects import put_dataset


@dataclass(frozen=True)
class Upload:
    """One dataset file made available to the platform."""

    location: str
    sha256: str
    size: int
    uploaded: bool  # False when the store already had these bytes
    kind: str = "csv"  # the file's format: csv or parquet

    @property
    def source(self) -> str:
        """The rewritten dataset source."""
        return f"object:{self.kind}:{self.sha256}"


def with_dataset_source(tweak: TweakFile, source: str) -> TweakFile:
    """``tweak`` with ``spec.dataset.source`` replaced."""
    dataset = tweak.spec.dataset.model_copy(update={"source": source})
    return tweak.model_copy(update={"spec": tweak.spec.model_copy(update={"dataset": dataset})})


async def upload_datasets(
    tweak: TweakFile, js: JetStreamContext, read: Callable[[str], Awaitable[bytes]]
) -> tuple[TweakFile, list[Upload]]:
    """Upload the tweak file's ``csv:`` or ``parquet:`` dataset by content and point the tweak file at it.

    ``read`` returns the bytes of the location (a path on disk, or in the repository).
    Other sources (``sklearn:``, ``https://``, ``object:``) are left as they are.
    """
    source = tweak.spec.dataset.source
    kind, _, location = source.partition(":")
    if kind not in ("csv", "parquet"):
        return tweak, []
    data = await read(location)
    try:
        digest, uploaded = await put_dataset(js, data)
    except Exception as exc:  # nats-py raises several error types; the user needs the reason
        raise BusError(f"could not upload the dataset {location} to the object store: {exc}") from exc
    upload = Upload(location=location, sha256=digest, size=len(data), uploaded=uploaded, kind=kind)
    return with_dataset_source(tweak, upload.source), [upload]


def disk_reader(base_dir: Path) -> Callable[[str], Awaitable[bytes]]:
    """A ``read`` for :func:`upload_datasets` taking paths relative to ``base_dir``."""

    async def read(location: str) -> bytes:
        path = Path(location).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DatasetError(f"{location}: cannot read {path}: {exc.strerror}") from None

    return read


def source_from_ci(path: str, env: Mapping[str, str]) -> Source:
    """Where a submission comes from, from the CI's own environment variables.

    Bitbucket Pipelines (``BITBUCKET_*``) and Jenkins (``GIT_COMMIT``, ``BRANCH_NAME``,
    ``CHANGE_ID``) are recognised; anywhere else it is a plain command-line submission.
    """
    if env.get("BITBUCKET_COMMIT"):
        pr = env.get("BITBUCKET_PR_ID")
        return Source(
            repository=env.get("BITBUCKET_REPO_FULL_NAME"),
            branch=env.get("BITBUCKET_BRANCH") or env.get("BITBUCKET_TAG"),
            commit=env["BITBUCKET_COMMIT"],
            author=env.get("BITBUCKET_STEP_TRIGGERER_UUID"),
            pull_request=int(pr) if pr and pr.isdigit() else None,
            path=path,
            trigger="pipeline",
        )
    if env.get("JENKINS_URL") and env.get("GIT_COMMIT"):
        change = env.get("CHANGE_ID")
        return Source(
            repository=env.get("GIT_URL"),
            branch=env.get("BRANCH_NAME") or env.get("GIT_BRANCH"),
            commit=env["GIT_COMMIT"],
            author=env.get("CHANGE_AUTHOR") or env.get("GIT_AUTHOR_NAME"),
            pull_request=int(change) if change and change.isdigit() else None,
            path=path,
            trigger="pipeline",
        )
    return Source(path=path, trigger="cli")


def with_local_code(tweak: TweakFile, base_dir: Path) -> TweakFile:
    """``tweak`` with ``model.trainer.code`` as an absolute folder: ``tweakline run`` trains the working tree.

    Runners and the evaluator of the local stack share this disk, so they read the code where it is.
    """
    trainer = tweak.spec.model.trainer
    if trainer is None or trainer.code.startswith("object:") or Path(trainer.code).is_absolute():
        return tweak
    code = str((base_dir / trainer.code).resolve())
    model = tweak.spec.model.model_copy(update={"trainer": trainer.model_copy(update={"code": code})})
    return tweak.model_copy(update={"spec": tweak.spec.model_copy(update={"model": model})})


async def upload_code(tweak: TweakFile, js: JetStreamContext, base_dir: Path) -> tuple[TweakFile, Upload | None]:
    """Ship a trainer's code folder as a content-addressed bundle and point the tweak file at it.

    ``model.trainer.code`` (relative to the tweak file) is packed (size-limited, ``.git`` and
    caches left out), stored by its sha256 like an uploaded dataset, and rewritten to
    ``object:code:<sha256>``; runners and the evaluator fetch it by that hash.
    """
    from tweakline.ml.trainers.bundles import pack_code

    trainer = tweak.spec.model.trainer
    if trainer is None or trainer.code.startswith("object:"):
        return tweak, None
    folder = (base_dir / trainer.code).resolve()
    data, digest = pack_code(folder)
    try:
        stored, uploaded = await put_dataset(js, data)
    except Exception as exc:  # nats-py raises several error types; the user needs the reason
        raise BusError(f"could not upload the code bundle of {folder} to the object store: {exc}") from exc
    code = f"object:code:{stored}"
    model = tweak.spec.model.model_copy(update={"trainer": trainer.model_copy(update={"code": code})})
    shipped = tweak.model_copy(update={"spec": tweak.spec.model_copy(update={"model": model})})
    return shipped, Upload(location=str(folder), sha256=digest, size=len(data), uploaded=uploaded)

"""Manual and automatic control of a release: roll back through its target, and record why."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext

from tweakline.deployer.registry import target_for
from tweakline.deployer.releases import ReleaseError, read_history, record_rollback, rollback_target
from tweakline.errors import ArtifactError
from tweakline.proto.messages import ReleaseHistory, ReleaseRevision
from tweakline.proto.subjects import Bucket
from tweakline.proto.tweakfile import DeploySpec
from tweakline.runtime.objects import get_artifact
from tweakline.runtime.records import RecordStore
from tweakline.runtime.settings import Settings


@dataclass
class RollbackResult:
    """What a rollback did."""

    history: ReleaseHistory
    revision: ReleaseRevision
    previous: int | None


async def releases(js: JetStreamContext) -> RecordStore[ReleaseHistory]:
    """The release-history records."""
    return await RecordStore.open(js, Bucket.RELEASES.value, ReleaseHistory)


async def rollback(
    js: JetStreamContext,
    settings: Settings,
    release: str,
    *,
    to: int | None,
    reason: str,
    by: str,
    automatic: bool = False,
    expect_current: int | None = None,
) -> RollbackResult:
    """Put revision ``to`` (default: the previously live one) back on the release's target, then record it.

    The revision's model is fetched and hash-checked first (:func:`check_revision`), then the
    target is driven, so a tampered model or a failed Helm rollback leaves the history unchanged.
    """
    store = await releases(js)
    history = await read_history(store, release)
    revision = rollback_target(history, to, expect_current)
    await check_revision(js, release, revision)
    target = target_for(history.target, settings)
    spec = revision.deploy or DeploySpec(release=release, target=history.target)
    await target.rollback(spec, history, revision)
    history, revision, previous = await record_rollback(
        store,
        release,
        to=revision.revision,
        reason=reason,
        by=by,
        automatic=automatic,
        expect_current=history.current,
    )
    return RollbackResult(history, revision, previous)


async def check_revision(js: JetStreamContext, release: str, revision: ReleaseRevision) -> None:
    """:class:`ReleaseError` with the reason unless ``revision``'s model is stored and matches its SHA-256.

    A history entry is only a pointer: what goes live is what the store holds, so it is checked
    before anything points at it again (the model servers would refuse it and serve nothing).
    """
    try:
        await get_artifact(js, revision.artifact)
    except ArtifactError as exc:
        raise ReleaseError(f"release {release}: revision {revision.revision} cannot go live: {exc}") from None

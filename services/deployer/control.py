"""Manual and automatic control of a release: roll back through its target, and record why."""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext

from tweakline.deployer.registry import target_for
from tweakline.deployer.releases import read_history, record_rollback, rollback_target
from tweakline.proto.messages import ReleaseHistory, ReleaseRevision
from tweakline.proto.subjects import Bucket
from tweakline.proto.tweakfile import DeploySpec
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

    The target is driven first, so a failed Helm rollback leaves the history unchanged.
    """
    store = await releases(js)
    history = await read_history(store, release)
    revision = rollback_target(history, to, expect_current)
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

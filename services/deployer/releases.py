"""Release history: append revisions and move the live pointer, with compare-and-set in KV.

Every change of the live revision appends a :class:`ReleaseEvent` with its reason, so the
history is the audit trail of the release: promoted, verified, rolled back (by whom, and why).
"""

from __future__ import annotations

from tweakline.errors import TweaklineError
from tweakline.proto.messages import (
    EvaluationCompleted,
    ReleaseAction,
    ReleaseEvent,
    ReleaseHistory,
    ReleaseRevision,
    Source,
)
from tweakline.runtime.records import RecordStore


class ReleaseError(TweaklineError):
    """A release operation that cannot be done (unknown release or revision, nothing to roll back to)."""


def next_revision(history: ReleaseHistory) -> int:
    """The number the next revision of a release gets (1 for the first)."""
    return max((r.revision for r in history.revisions), default=0) + 1


def revision_from(evaluation: EvaluationCompleted, number: int, estimator: str) -> ReleaseRevision:
    """The release revision recorded for a promoted evaluation."""
    assert evaluation.artifact is not None
    return ReleaseRevision(
        revision=number,
        experiment_id=evaluation.experiment_id,
        artifact=evaluation.artifact,
        metrics=evaluation.candidate_metrics,
        params=evaluation.best_params,
        estimator=estimator,
        source=evaluation.source or Source(),
        reason="; ".join(evaluation.reasons),
        features=evaluation.features,
        comparison=evaluation.comparison,
        holdout=evaluation.holdout,
        deploy=evaluation.deploy,
    )


async def record_promotion(
    store: RecordStore[ReleaseHistory], release: str, target: str, evaluation: EvaluationCompleted, estimator: str
) -> tuple[ReleaseHistory, ReleaseRevision]:
    """Append the evaluation's model as the new live revision (once, whatever the redeliveries)."""
    made: list[ReleaseRevision] = []

    def change(current: ReleaseHistory | None) -> ReleaseHistory:
        history = current or ReleaseHistory(release=release, target=target)
        made.clear()
        existing = next((r for r in history.revisions if r.experiment_id == evaluation.experiment_id), None)
        if existing is not None:
            made.append(existing)
            return history
        revision = revision_from(evaluation, next_revision(history), estimator)
        made.append(revision)
        event = ReleaseEvent(
            action=ReleaseAction.PROMOTED,
            revision=revision.revision,
            previous=history.current,
            reason=f"experiment {evaluation.experiment_id} passed the gate: " + "; ".join(evaluation.reasons),
        )
        return history.model_copy(
            update={
                "revisions": [*history.revisions, revision],
                "current": revision.revision,
                "events": [*history.events, event],
            }
        )

    history = await store.mutate(release, change)
    return history, made[0]


def previous_live(history: ReleaseHistory) -> int | None:
    """The revision that was live before the current one (what a plain rollback restores)."""
    current = history.current
    for event in reversed(history.events):
        if event.revision == current and event.action is not ReleaseAction.VERIFIED:
            if event.previous is not None and history.revision(event.previous) is not None:
                return event.previous
            break
    older = [r.revision for r in history.revisions if current is None or r.revision < current]
    return max(older, default=None)


async def read_history(store: RecordStore[ReleaseHistory], release: str) -> ReleaseHistory:
    """The history of ``release``; :class:`ReleaseError` naming the known releases if there is none."""
    found = await store.get(release)
    if found is None:
        known = sorted(await store.keys())
        raise ReleaseError(f"no release named {release!r}; known releases: {', '.join(known) if known else 'none yet'}")
    return found[0]


def rollback_target(history: ReleaseHistory, to: int | None, expect_current: int | None = None) -> ReleaseRevision:
    """The revision a rollback of ``history`` makes live; :class:`ReleaseError` when there is none."""
    release = history.release
    if expect_current is not None and history.current != expect_current:
        raise ReleaseError(f"release {release}: revision {history.current} is live now, not {expect_current}; not rolling back")
    target = to if to is not None else previous_live(history)
    if target is None:
        raise ReleaseError(
            f"release {release} has no earlier revision to roll back to (live: {history.current}); use --to REV to choose one"
        )
    revision = history.revision(target)
    if revision is None:
        known = ", ".join(str(r.revision) for r in history.revisions)
        raise ReleaseError(f"release {release} has no revision {target}; revisions: {known}")
    if target == history.current:
        raise ReleaseError(f"release {release}: revision {target} is already live")
    return revision


async def record_rollback(
    store: RecordStore[ReleaseHistory],
    release: str,
    *,
    to: int | None,
    reason: str,
    by: str,
    automatic: bool = False,
    expect_current: int | None = None,
) -> tuple[ReleaseHistory, ReleaseRevision, int | None]:
    """Make revision ``to`` (default: the one live before the current) live again, with the reason.

    ``expect_current``: only roll back if that revision is still the live one (an automatic
    rollback must not undo a newer promotion that happened meanwhile). Returns the new history,
    the revision now live and the one that was live before.
    """
    await read_history(store, release)  # a clear error for an unknown release
    result: list[tuple[ReleaseRevision, int | None]] = []

    def change(current: ReleaseHistory | None) -> ReleaseHistory:
        assert current is not None
        result.clear()
        revision = rollback_target(current, to, expect_current)
        target = revision.revision
        result.append((revision, current.current))
        event = ReleaseEvent(
            action=ReleaseAction.AUTO_ROLLED_BACK if automatic else ReleaseAction.ROLLED_BACK,
            revision=target,
            previous=current.current,
            reason=reason,
            by=by,
        )
        return current.model_copy(update={"current": target, "events": [*current.events, event]})

    history = await store.mutate(release, change)
    revision, previous = result[0]
    return history, revision, previous


async def record_event(store: RecordStore[ReleaseHistory], release: str, event: ReleaseEvent) -> ReleaseHistory:
    """Append an event that does not move the live revision (e.g. a passed post-deploy check)."""

    def change(current: ReleaseHistory | None) -> ReleaseHistory:
        assert current is not None
        return current.model_copy(update={"events": [*current.events, event]})

    return await store.mutate(release, change)


async def set_target_revision(store: RecordStore[ReleaseHistory], release: str, revision: int, target_revision: int) -> None:
    """Remember the target's own revision (Helm's) of ``revision``, for rollbacks to it."""

    def change(current: ReleaseHistory | None) -> ReleaseHistory:
        assert current is not None
        revisions = [
            r.model_copy(update={"target_revision": target_revision}) if r.revision == revision else r for r in current.revisions
        ]
        return current.model_copy(update={"revisions": revisions})

    await store.mutate(release, change)

"""Release history: append revisions and move the live pointer, with compare-and-set in KV."""

from __future__ import annotations

from tweakline.proto.messages import EvaluationCompleted, ReleaseHistory, ReleaseRevision, Source
from tweakline.records import RecordStore


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
        return history.model_copy(update={"revisions": [*history.revisions, revision], "current": revision.revision})

    history = await store.mutate(release, change)
    return history, made[0]

"""What the console's pages show, from events and release records."""

from __future__ import annotations

from tests.deployer.test_history_rollback import evaluation
from tweakline.console.views import event_row, release_view, rollback_choice
from tweakline.proto.messages import (
    ArtifactRef,
    ExperimentCancelled,
    ExperimentStatus,
    ReleaseAction,
    ReleaseEvent,
    ReleaseHistory,
    ReleaseRevision,
    TrialCompleted,
    TrialStatus,
)


def history(current: int | None, events: list[ReleaseEvent], revisions=(1, 2, 3)) -> ReleaseHistory:
    art = ArtifactRef(bucket="tweakline-artifacts", name="m", sha256="0" * 64, size=1)
    return ReleaseHistory(
        release="iris",
        current=current,
        revisions=[
            ReleaseRevision(revision=n, experiment_id=f"e{n}", artifact=art, metrics={"accuracy": 0.9}) for n in revisions
        ],
        events=events,
    )


def test_a_trial_event_is_a_bounded_json_row() -> None:
    kind, row = event_row(
        TrialCompleted(
            experiment_id="e",
            trial_id="e.4",
            number=4,
            status=TrialStatus.OK,
            params={"C": 0.5, "kernel": "x" * 1000, "bad": float("nan")},
            score=float("inf"),
        )
    )
    assert kind == "trial" and row["number"] == 4 and row["status"] == "ok"
    assert row["score"] is None and row["params"]["bad"] is None  # JSON has no NaN/inf
    assert row["params"]["C"] == 0.5 and len(row["params"]["kernel"]) == 203
    kind, row = event_row(ExperimentCancelled(experiment_id="e", status=ExperimentStatus.SUPERSEDED, requested_by="scheduler"))
    assert kind == "cancelled" and row == {"status": "superseded", "reason": "", "by": "scheduler"}


def test_a_release_view_lists_revisions_newest_first_with_their_evidence() -> None:
    h = history(3, [ReleaseEvent(action=ReleaseAction.PROMOTED, revision=3, previous=2)])
    h.revisions[2].comparison = evaluation("e3", "iris", 0.9, "c").comparison
    view = release_view(h)
    assert [r["revision"] for r in view["revisions"]] == [3, 2, 1]
    assert view["revisions"][0]["live"] and not view["revisions"][1]["live"]
    assert view["revisions"][0]["evidence"] == "accuracy +0.1000 vs prod, McNemar mid-p 0.001"
    assert view["revisions"][1]["evidence"] == "nothing in production: thresholds only"


def test_the_rollback_choice_is_the_deployers_default_or_says_why_not() -> None:
    promoted = [
        ReleaseEvent(action=ReleaseAction.PROMOTED, revision=1),
        ReleaseEvent(action=ReleaseAction.PROMOTED, revision=3, previous=1),
    ]
    assert rollback_choice(history(3, promoted), None) == (1, "")  # the one live before, not the newest older
    assert rollback_choice(history(3, []), None) == (2, "")
    assert rollback_choice(history(3, promoted), 2) == (2, "")
    assert rollback_choice(history(3, promoted), 3) == (None, "revision 3 is already live")
    assert rollback_choice(history(3, promoted), 9) == (None, "release iris has no revision 9")
    assert rollback_choice(history(None, []), None)[0] is None
    assert rollback_choice(history(1, [], revisions=(1,)), None) == (None, "release iris has no earlier revision to go back to")

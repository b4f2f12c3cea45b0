"""Which running experiments a new submission supersedes (the policy; the stack test shows the effect)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.factories import make_tweak
from tweakline.proto.messages import ExperimentState, ExperimentStatus, Source
from tweakline.scheduler.cancel import older_siblings, supersedes

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def state(exp_id: str, *, name: str = "churn", minutes: int = 0, status=ExperimentStatus.RUNNING, **source) -> ExperimentState:
    src = {"repository": "team/models", "branch": "main", "trigger": "webhook"} | source
    return ExperimentState(
        experiment_id=exp_id,
        tweak=make_tweak(name),
        source=Source(**src),
        status=status,
        started_at=T0 + timedelta(minutes=minutes),
    )


@pytest.mark.parametrize(
    ("policy", "trigger", "expected"),
    [
        ("pushes", "webhook", True),
        ("pushes", "pipeline", True),
        ("pushes", "cli", False),
        ("always", "cli", True),
        ("never", "webhook", False),
    ],
)
def test_the_policy_decides_which_submissions_supersede(policy: str, trigger: str, expected: bool) -> None:
    assert supersedes(policy, Source(branch="main", trigger=trigger)) is expected


def test_only_older_running_experiments_of_the_same_repository_name_and_branch() -> None:
    newer = state("new", minutes=10)
    running = [
        state("old", minutes=1),
        state("other-branch", minutes=1, branch="dev"),
        state("other-repo", minutes=1, repository="team/other"),
        state("other-name", name="fraud", minutes=1),
        state("finished", minutes=1, status=ExperimentStatus.COMPLETED),
        state("later", minutes=20),
        newer,
    ]
    assert older_siblings(newer, running) == ["old"]


def test_submission_time_orders_them_when_intake_took_them_out_of_order() -> None:
    # The newer push was taken in first (same batch): the older one, recorded later, does not supersede it.
    newer = state("new", minutes=1)
    newer.submitted_at = T0 + timedelta(minutes=5)
    older = state("old", minutes=2)
    older.submitted_at = T0 + timedelta(minutes=4)
    assert older_siblings(older, [newer, older]) == []
    assert older_siblings(newer, [newer, older]) == ["old"]


def test_a_submission_without_a_branch_supersedes_nothing() -> None:
    newer = state("new", minutes=10, branch=None)
    assert older_siblings(newer, [state("old", minutes=1, branch=None)]) == []

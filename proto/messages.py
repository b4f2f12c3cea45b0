"""Every message on the bus and every record kept in a bucket.

Messages are JSON (pydantic); nothing on the bus is ever pickled. Ids make every handler
idempotent: ``experiment_id`` is unique per submission, ``trial_id`` is
``<experiment_id>.<number>``, and :func:`msg_id` gives the ``Nats-Msg-Id`` used for de-duplication.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from tweakline.proto.subjects import Subject
from tweakline.proto.tweakfile import DeploySpec, ExperimentSpec, TweakFile


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Base of bus messages: unknown fields are tolerated so that older services read newer messages."""

    model_config = ConfigDict(extra="ignore")


class Source(Message):
    """Where an experiment came from (the commit that asked for it)."""

    repository: str | None = Field(default=None, description="workspace/repo_slug")
    branch: str | None = None
    commit: str | None = None
    author: str | None = None
    pull_request: int | None = None
    path: str | None = Field(default=None, description="Path of the tweak file in the repository or on disk.")
    trigger: str = Field(default="cli", description="cli, webhook or pipeline.")


class ExperimentSubmitted(Message):
    """CLI / webhook -> scheduler: run this tweak file."""

    experiment_id: str
    tweak: TweakFile
    source: Source = Field(default_factory=Source)
    submitted_at: datetime = Field(default_factory=utcnow)
    traceparent: str | None = Field(
        default=None, description="W3C traceparent of the experiment's root span (one experiment is one trace)."
    )


class TrialStatus(StrEnum):
    """Outcome of one trial."""

    OK = "ok"
    FAILED = "failed"
    PRUNED = "pruned"


class TrialRequested(Message):
    """Scheduler -> runners (work queue): train and score these parameters."""

    experiment_id: str
    trial_id: str
    number: int
    params: dict[str, Any]
    spec: ExperimentSpec
    requested_at: datetime = Field(default_factory=utcnow)


class TrialProgress(Message):
    """Runner -> scheduler: an intermediate score (per fold or per rung)."""

    experiment_id: str
    trial_id: str
    number: int
    step: int
    value: float


class TrialControlAction(StrEnum):
    """What the scheduler asks of a running trial."""

    PRUNE = "prune"


class TrialControl(Message):
    """Scheduler -> runners: stop a running trial."""

    experiment_id: str
    trial_id: str
    action: TrialControlAction = TrialControlAction.PRUNE


class TrialCompleted(Message):
    """Runner -> scheduler: the result of one trial."""

    experiment_id: str
    trial_id: str
    number: int
    status: TrialStatus
    params: dict[str, Any]
    score: float | None = Field(default=None, description="Mean CV value of the objective metric.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Mean CV value of every metric computed.")
    fold_scores: list[float] = Field(default_factory=list)
    duration_s: float = 0.0
    cpu_s: float = 0.0
    runner: str = ""
    attempt: int = 1
    error: str | None = None
    finished_at: datetime = Field(default_factory=utcnow)


class TrialRecord(Message):
    """One trial as kept in experiment state and shown on the leaderboard."""

    number: int
    params: dict[str, Any]
    status: TrialStatus
    score: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    duration_s: float = 0.0
    cpu_s: float = 0.0
    runner: str = ""
    error: str | None = None

    @classmethod
    def from_result(cls, result: TrialCompleted) -> TrialRecord:
        """The record kept for a trial's result."""
        return cls(
            number=result.number,
            params=result.params,
            status=result.status,
            score=result.score,
            metrics=result.metrics,
            duration_s=result.duration_s,
            cpu_s=result.cpu_s,
            runner=result.runner,
            error=result.error,
        )


class ExperimentStatus(StrEnum):
    """Lifecycle of an experiment in the scheduler."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class ExperimentState(Message):
    """Scheduler state of one experiment, kept in the experiments KV bucket (compare-and-set)."""

    experiment_id: str
    tweak: TweakFile
    source: Source = Field(default_factory=Source)
    status: ExperimentStatus = ExperimentStatus.RUNNING
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    issued: dict[int, dict[str, Any]] = Field(default_factory=dict, description="Trial number -> params sent.")
    results: dict[int, TrialRecord] = Field(default_factory=dict, description="Trial number -> recorded result.")
    message: str | None = None
    traceparent: str | None = Field(
        default=None, description="The experiment's span: what trials dispatched later (or after a restart) hang under."
    )


class ExperimentCompleted(Message):
    """Scheduler -> evaluator: the finished search."""

    experiment_id: str
    tweak: TweakFile
    source: Source = Field(default_factory=Source)
    status: ExperimentStatus
    trials: list[TrialRecord]
    best: TrialRecord | None = None
    started_at: datetime
    finished_at: datetime = Field(default_factory=utcnow)
    message: str | None = None


class Decision(StrEnum):
    """The evaluator's verdict."""

    PROMOTE = "promote"
    REJECT = "reject"
    ERROR = "error"


class ArtifactRef(Message):
    """A model stored in the object store, with the hash checked when it is loaded."""

    bucket: str
    name: str
    sha256: str
    size: int


class GateCheck(Message):
    """One rule of the gate and whether it held."""

    rule: str
    passed: bool
    detail: str


class EvaluationCompleted(Message):
    """Evaluator -> deployer, CLI: the decision and its evidence."""

    experiment_id: str
    decision: Decision
    reasons: list[str] = Field(default_factory=list)
    checks: list[GateCheck] = Field(default_factory=list)
    metric: str = ""
    best_params: dict[str, Any] = Field(default_factory=dict)
    best_cv_score: float | None = None
    candidate_metrics: dict[str, float] = Field(default_factory=dict, description="Refitted best model, test split.")
    default_metrics: dict[str, float] = Field(default_factory=dict, description="Default-params estimator, test split.")
    production_metrics: dict[str, float] | None = Field(default=None, description="Model in production, same split.")
    production_revision: int | None = None
    artifact: ArtifactRef | None = None
    release: str | None = None
    target: str | None = None
    deploy: DeploySpec | None = Field(default=None, description="Where the model goes if promoted.")
    estimator: str = ""
    source: Source = Field(default_factory=Source)
    trials_total: int = 0
    trials_ok: int = 0
    evaluated_at: datetime = Field(default_factory=utcnow)


class DeploymentStatus(StrEnum):
    """Outcome of a deployment."""

    DEPLOYED = "deployed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class DeploymentCompleted(Message):
    """Deployer -> CLI: what happened to the release."""

    experiment_id: str
    release: str
    target: str
    status: DeploymentStatus
    revision: int | None = None
    message: str = ""
    deployed_at: datetime = Field(default_factory=utcnow)


class ReleaseRevision(Message):
    """One revision in a release's history."""

    revision: int
    experiment_id: str
    artifact: ArtifactRef
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    estimator: str = ""
    source: Source = Field(default_factory=Source)
    created_at: datetime = Field(default_factory=utcnow)
    reason: str = ""


class ReleaseHistory(Message):
    """A release: its revisions and which one is live (kept in the releases KV bucket)."""

    release: str
    target: str = "local"
    current: int | None = None
    revisions: list[ReleaseRevision] = Field(default_factory=list)

    def revision(self, number: int) -> ReleaseRevision | None:
        """The revision with this number, if recorded."""
        return next((r for r in self.revisions if r.revision == number), None)

    @property
    def live(self) -> ReleaseRevision | None:
        """The revision now in production, if any."""
        return None if self.current is None else self.revision(self.current)


class DeadLetter(Message):
    """A message a service refused, kept with the reason."""

    service: str
    subject: str
    reason: str
    payload: str = Field(description="The first bytes of the payload, decoded leniently.")
    headers: dict[str, str] = Field(default_factory=dict)
    at: datetime = Field(default_factory=utcnow)


def trial_id(experiment_id: str, number: int) -> str:
    """The id of trial ``number`` of an experiment."""
    return f"{experiment_id}.{number}"


def msg_id(kind: str, *parts: Any) -> str:
    """A ``Nats-Msg-Id`` for de-duplication: the same event always gets the same id."""
    return ":".join([kind, *map(str, parts)])


MESSAGES: tuple[type[Message], ...] = (
    ExperimentSubmitted,
    TrialRequested,
    TrialProgress,
    TrialControl,
    TrialCompleted,
    ExperimentCompleted,
    EvaluationCompleted,
    DeploymentCompleted,
    DeadLetter,
)

# The payload carried by each subject family: the AsyncAPI document and subscribers read it.
PAYLOADS: dict[Subject, type[Message]] = {
    Subject.EXPERIMENT_SUBMITTED: ExperimentSubmitted,
    Subject.TRIAL_REQUESTED: TrialRequested,
    Subject.TRIAL_PROGRESS: TrialProgress,
    Subject.TRIAL_CONTROL: TrialControl,
    Subject.TRIAL_COMPLETED: TrialCompleted,
    Subject.EXPERIMENT_COMPLETED: ExperimentCompleted,
    Subject.EVALUATION_COMPLETED: EvaluationCompleted,
    Subject.DEPLOYMENT_COMPLETED: DeploymentCompleted,
    Subject.DEAD_LETTER: DeadLetter,
}

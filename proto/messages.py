"""Every message on the bus and every record kept in a bucket.

Messages are JSON (pydantic); nothing on the bus is ever pickled. Ids make every handler
idempotent: ``experiment_id`` is unique per submission, ``trial_id`` is
``<experiment_id>.<number>``, and :func:`msg_id` gives the ``Nats-Msg-Id`` used for de-duplication.

Compatibility between releases (services are upgraded one at a time, so old and new ones share
the bus and the buckets):

* Envelopes (every :class:`Message`) ignore fields they do not know: a newer sender may add one.
* The tweak file stays strict where a person wrote it (unknown keys are errors, see
  :mod:`tweakline.proto.tweakfile`). So an embedded tweak file or spec section (:data:`SetOnly`:
  ``TweakFile``, ``ExperimentSpec``, ``GateSpec``, ``DeploySpec``) travels with **only the fields
  that were set** (``exclude_unset``), never with its defaults: a field with a default added in a
  newer release is then absent unless the user wrote it, and an older receiver fills in its own
  defaults instead of refusing a key it does not know. A newer field a user did write is still
  refused by an older receiver, which is right: it cannot honour it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StringConstraints,
    WrapSerializer,
    model_validator,
)

from tweakline.proto.ids import ExperimentId, Name, TrialId
from tweakline.proto.subjects import Subject
from tweakline.proto.tweakfile import DeploySpec, ExperimentSpec, GateSpec, ResourcesSpec, TweakFile


def _only_set(value: Any, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
    # Only what the writer set travels (see the module docstring); the receiver's defaults apply.
    if isinstance(value, BaseModel):
        return value.model_dump(mode=info.mode, exclude_unset=True, by_alias=bool(info.by_alias))
    return handler(value)


# An embedded tweak-file model: serialized with the fields that were set only.
SetOnly = WrapSerializer(_only_set)


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

    experiment_id: ExperimentId
    tweak: Annotated[TweakFile, SetOnly]
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


# The most trials one request may carry (a bound on what a runner accepts from the bus).
MAX_TRIAL_BATCH = 64


class BatchedTrial(Message):
    """One more trial carried by a :class:`TrialRequested` (a batch of fast trials)."""

    trial_id: TrialId
    number: int
    params: dict[str, Any]


class TrialRequested(Message):
    """Scheduler -> runners (work queue): train and score these parameters.

    Fast trials travel in batches: ``batch`` holds further trials of the same experiment, run in
    order after this one by the same runner, each recorded, pruned and reported on its own (one
    ``TrialCompleted`` per trial); the request is acknowledged once all of them are reported.
    A runner from before batches ignores ``batch``: upgrade runners before schedulers, or run the
    schedulers with ``TWEAKLINE_TRIAL_BATCH_MAX=1`` until they are (docs/reliability.md).
    """

    experiment_id: ExperimentId
    trial_id: TrialId
    number: int
    params: dict[str, Any]
    spec: Annotated[ExperimentSpec, SetOnly]
    requested_at: datetime = Field(default_factory=utcnow)
    resources: ResourcesSpec | None = Field(
        default=None, description="spec.resources, on the envelope so pools can route without reading the spec."
    )
    batch: list[BatchedTrial] = Field(
        default_factory=list,
        max_length=MAX_TRIAL_BATCH - 1,
        description="Further trials to run after this one, in order (fast trials share one request).",
    )

    @model_validator(mode="after")
    def _one_experiment(self) -> TrialRequested:
        numbers = {self.number}
        for t in self.batch:
            if t.trial_id != f"{self.experiment_id}.{t.number}" or t.number in numbers:
                raise ValueError(f"batch: trial {t.trial_id!r} is not a distinct trial of experiment {self.experiment_id!r}")
            numbers.add(t.number)
        return self

    def trials(self) -> list[TrialRequested]:
        """Every trial of this request, first this one, each as a request of its own (no batch)."""
        if not self.batch:
            return [self]
        first = self.model_copy(update={"batch": []})
        return [first] + [
            self.model_copy(update={"trial_id": t.trial_id, "number": t.number, "params": t.params, "batch": []})
            for t in self.batch
        ]


class TrialProgress(Message):
    """Runner -> scheduler: an intermediate score (per fold or per rung)."""

    experiment_id: ExperimentId
    trial_id: TrialId
    number: int
    step: int = Field(description="0-based index of the CV fold (or, with search.resource, the rung) just finished.")
    value: float = Field(description="The objective on that fold (or the rung's CV score).")
    awaits_verdict: bool = Field(
        default=False, description="The runner waits (briefly) for a TrialControl about this step before going on."
    )


class TrialControlAction(StrEnum):
    """What the scheduler asks of a running trial."""

    PRUNE = "prune"
    CONTINUE = "continue"
    CANCEL = "cancel"  # the experiment was cancelled or superseded: stop now, report nothing more


class TrialControl(Message):
    """Scheduler -> runners: prune (stop) a running trial, or let it go on past ``step``."""

    experiment_id: ExperimentId
    trial_id: TrialId
    action: TrialControlAction = TrialControlAction.PRUNE
    step: int | None = Field(default=None, description="The reported step this verdict answers.")
    reason: str = ""


class TrialRecord(Message):
    """One trial's result as kept in experiment state and shown on the leaderboard.

    The fields every shape of a trial's result shares, spelled once: :class:`TrialCompleted`
    (on the bus) is this record plus the trial's identity and delivery, and the ML library's
    ``TrialOutcome`` is what training measured, before it has a number or a runner.
    """

    number: int
    params: dict[str, Any]
    status: TrialStatus
    score: float | None = Field(default=None, description="Mean CV value of the objective metric.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Mean CV value of every metric computed.")
    duration_s: float = 0.0
    cpu_s: float = 0.0
    runner: str = ""
    error: str | None = None
    fold_scores: list[float] = Field(default_factory=list, description="Objective per completed fold (for pruners).")
    rung_scores: list[float] = Field(
        default_factory=list, description="With search.resource: CV score per completed rung (for pruners)."
    )

    @classmethod
    def from_result(cls, result: TrialCompleted) -> TrialRecord:
        """The record kept for a trial's result (its record fields, without identity and delivery).

        Not validated again: a result's fields were validated when it was received.
        """
        return cls.model_construct(**{name: getattr(result, name) for name in TrialRecord.model_fields})


class TrialCompleted(TrialRecord):
    """Runner -> scheduler: the result of one trial (its record, plus which trial and which delivery).

    A batched request's results travel together: ``batch`` holds the records of its further
    trials, in the order they ran; :meth:`results` gives each as a result of its own. A runner
    sends a batch of results only in answer to a batched request, so only to a scheduler that
    reads them (docs/reliability.md, upgrade order).
    """

    experiment_id: ExperimentId
    trial_id: TrialId
    attempt: int = 1
    finished_at: datetime = Field(default_factory=utcnow)
    batch: list[TrialRecord] = Field(
        default_factory=list,
        max_length=MAX_TRIAL_BATCH - 1,
        description="Results of the further trials of a batched request (same experiment, runner and delivery).",
    )

    @model_validator(mode="after")
    def _one_experiment(self) -> TrialCompleted:
        numbers = {self.number}
        for record in self.batch:
            if record.number in numbers:
                raise ValueError(f"batch: trial {record.number} of experiment {self.experiment_id!r} appears twice")
            numbers.add(record.number)
        return self

    def results(self) -> list[TrialCompleted]:
        """Every trial's result in this message, first this one, each as a result of its own (no batch)."""
        if not self.batch:
            return [self]
        first = self.model_copy(update={"batch": []})
        shared = {"experiment_id": self.experiment_id, "attempt": self.attempt, "finished_at": self.finished_at}
        return [first] + [
            TrialCompleted.model_construct(**dict(record), **shared, trial_id=f"{self.experiment_id}.{record.number}", batch=[])
            for record in self.batch
        ]


class ExperimentStatus(StrEnum):
    """Lifecycle of an experiment in the scheduler."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # stopped on request: no evaluation, no deployment
    SUPERSEDED = "superseded"  # cancelled by a newer submission of the same lineage and branch


class CancelExperiment(Message):
    """Operator or submitter -> scheduler: stop an experiment (``tweakline cancel ID``)."""

    experiment_id: str
    reason: str = Field(default="", description="Why, in the requester's words (kept in the experiment's state).")
    requested_by: str = Field(default="", description="Who asked: the certificate identity and, when known, the user.")
    requested_at: datetime = Field(default_factory=utcnow)


class ExperimentCancelled(Message):
    """Scheduler -> followers: the experiment ended without a decision (cancelled or superseded)."""

    experiment_id: str
    status: ExperimentStatus = Field(description="cancelled or superseded.")
    reason: str = ""
    requested_by: str = ""
    superseded_by: str | None = Field(default=None, description="The newer experiment that replaced this one.")
    stopped_trials: list[int] = Field(default_factory=list, description="Trials running or queued when it stopped.")
    trials_done: int = Field(default=0, description="Trials with a recorded result.")
    cancelled_at: datetime = Field(default_factory=utcnow)


class WarmStartReport(Message):
    """What warm start took from the experiment's lineage, and what it refused and why."""

    lineage: str
    available: int = Field(default=0, description="Earlier trials found for the lineage.")
    reused: int = Field(default=0, description="Trials seeded into this search.")
    incompatible: int = 0
    reasons: dict[str, int] = Field(default_factory=dict, description="Why trials were refused -> how many.")
    rerun: int = Field(default=0, description="Best earlier configurations tried again as this search's first trials.")


class LineageTrial(Message):
    """One earlier trial kept for warm start, with what its score depends on besides its params."""

    experiment_id: ExperimentId
    commit: str | None = None
    context: dict[str, str] = Field(
        description="Fingerprints of the dataset, model and objective: scores compare only when all three agree."
    )
    record: TrialRecord


class LineageHistory(Message):
    """The trials of one lineage (repository + experiment name), kept in the lineage KV bucket."""

    lineage: str
    trials: list[LineageTrial] = Field(default_factory=list)
    experiments: list[str] = Field(default_factory=list, description="Experiments already added (idempotence).")


class SealedResults(Message):
    """A reference, in an experiment's state, to results kept in their own entry (:class:`ResultsSegment`)."""

    key: str = Field(description="The segment's key in the experiments bucket (results_key).")
    trials: int = Field(ge=1, description="How many results it holds.")
    best_score: float | None = Field(
        default=None, description="The best score among them by the objective's direction (None: none succeeded)."
    )


class ResultsSegment(Message):
    """Results moved out of an experiment's state once it grew: written once, never changed.

    Kept in the experiments bucket under :func:`results_key`; the state lists its segments in
    ``sealed``, oldest first, and holds the results recorded since the last one.
    """

    experiment_id: ExperimentId
    issued: dict[int, dict[str, Any]] = Field(default_factory=dict, description="Trial number -> params sent.")
    results: dict[int, TrialRecord] = Field(default_factory=dict, description="Trial number -> recorded result.")


class ExperimentState(Message):
    """Scheduler state of one experiment, kept in the experiments KV bucket (compare-and-set).

    As stored under the experiment's id, it holds the results recorded since the last segment
    was sealed, and ``sealed`` names the segments holding the earlier ones (with their issued
    parameters): a save costs what changed, not the whole experiment, and no experiment outgrows
    the bus's message limit. :meth:`with_segments` joins them into the whole state (``sealed``
    empty, every result in ``results``), which is what a reader gets from
    ``tweakline.runtime.records.ExperimentStore``. :attr:`trials_recorded` and :meth:`best_score`
    answer from either form without reading a segment.
    """

    experiment_id: ExperimentId
    tweak: Annotated[TweakFile, SetOnly]
    source: Source = Field(default_factory=Source)
    status: ExperimentStatus = ExperimentStatus.RUNNING
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    issued: dict[int, dict[str, Any]] = Field(default_factory=dict, description="Trial number -> params sent.")
    results: dict[int, TrialRecord] = Field(
        default_factory=dict, description="Trial number -> recorded result (those not in a sealed segment)."
    )
    sealed: list[SealedResults] = Field(
        default_factory=list, description="Segments holding the earlier results, oldest first (see ResultsSegment)."
    )
    message: str | None = None
    superseded_by: str | None = Field(default=None, description="With status superseded: the newer experiment.")
    submitted_at: datetime | None = Field(default=None, description="When it was submitted (orders submissions for supersede).")
    warm_trials: list[TrialRecord] = Field(default_factory=list, description="Earlier trials seeded into the study.")
    warm_start: WarmStartReport | None = None
    traceparent: str | None = Field(
        default=None, description="The experiment's span: what trials dispatched later (or after a restart) hang under."
    )

    @property
    def trials_recorded(self) -> int:
        """How many results the experiment has, the sealed ones included."""
        return len(self.results) + sum(segment.trials for segment in self.sealed)

    def best_score(self) -> float | None:
        """The best successful score, the sealed results' included, by the objective's direction."""
        scores = [r.score for r in self.results.values() if r.status is TrialStatus.OK and r.score is not None]
        scores += [segment.best_score for segment in self.sealed if segment.best_score is not None]
        if not scores:
            return None
        return max(scores) if self.tweak.spec.objective.maximize else min(scores)

    def with_segments(self, segments: list[ResultsSegment]) -> ExperimentState:
        """The whole state: ``segments`` (those ``sealed`` names, in its order) joined in, ``sealed`` empty.

        The results keep the order they were recorded in (the segments' first, then this state's).
        """
        results: dict[int, TrialRecord] = {}
        issued: dict[int, dict[str, Any]] = {}
        for segment in segments:
            results.update(segment.results)
            issued.update(segment.issued)
        results.update(self.results)
        issued.update(self.issued)
        return self.model_copy(update={"results": results, "issued": dict(sorted(issued.items())), "sealed": []})


def results_key(experiment_id: str, index: int, token: str) -> str:
    """Key of an experiment's ``index``-th results segment in the experiments bucket.

    ``token`` is new for every segment written: a scheduler that lost the experiment to another
    one (and does not know yet) can never overwrite a segment the other one's state names.
    An experiment id has no ``.``, so a key with one is never an experiment's state.
    """
    return f"{experiment_id}.results.{index}-{token}"


def is_state_key(key: str) -> bool:
    """Whether a key of the experiments bucket is an experiment's state (not a results segment)."""
    return "." not in key


# The share of the bus's message limit (TWEAKLINE_MAX_PAYLOAD_BYTES, 1 MiB by default) that an
# ExperimentCompleted's trial records may take: it is one message, and an experiment may run
# 100,000 trials. The whole leaderboard stays in the experiment's state.
COMPLETED_TRIALS_SHARE = 0.25


class ExperimentCompleted(Message):
    """Scheduler -> evaluator: the finished search.

    ``trials`` is the leaderboard, best first: every trial, or only its first ones (and the
    Pareto front's) when all of them would take more than :data:`COMPLETED_TRIALS_SHARE` of the
    message limit; :attr:`total` and :attr:`ok` count them all.
    """

    experiment_id: ExperimentId
    tweak: Annotated[TweakFile, SetOnly]
    source: Source = Field(default_factory=Source)
    status: ExperimentStatus
    trials: list[TrialRecord] = Field(
        description="The leaderboard, best first: all of it, or its first trials when all would not fit."
    )
    trials_total: int | None = Field(
        default=None,
        ge=0,
        description="How many trials ran (None from a scheduler older than this field: every trial is listed).",
    )
    trials_ok: int | None = Field(default=None, ge=0, description="How many of them succeeded (None: count the listed ones).")
    best: TrialRecord | None = None
    started_at: datetime
    finished_at: datetime = Field(default_factory=utcnow)
    message: str | None = None
    warm_start: WarmStartReport | None = None
    pareto_front: list[int] = Field(
        default_factory=list, description="With secondary objectives: numbers of the non-dominated trials."
    )
    feasible: int | None = Field(default=None, description="With gate thresholds: trials whose CV metrics met every threshold.")

    @property
    def total(self) -> int:
        """How many trials the experiment ran (``trials`` may list only the leaderboard's first ones)."""
        return len(self.trials) if self.trials_total is None else self.trials_total

    @property
    def ok(self) -> int:
        """How many of them succeeded."""
        return sum(t.status is TrialStatus.OK for t in self.trials) if self.trials_ok is None else self.trials_ok


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


class Holdout(Message):
    """Which rows the evaluation held out, and by what rule (see ``tweakline.ml.holdout``)."""

    method: str = Field(description="Assignment rule: row-sha256 (a row is a test row by a hash of its content).")
    test_size: float
    seed: int = Field(description="Salt of the hash (the dataset seed).")
    test_rows: int
    test_digest: str = Field(description="SHA-256 of the test rows' sorted content keys.")
    train_rows: int
    train_digest: str = Field(description="SHA-256 of the training rows' sorted content keys.")


class Comparison(Message):
    """The paired comparison of the candidate with the model in production, on the same test rows."""

    metric: str
    candidate: float = Field(description="Candidate's value of the metric on the test split.")
    production: float = Field(description="Production model's value on the same rows.")
    difference: float = Field(description="Gain of the candidate (positive is better, whatever the direction).")
    required_gain: float = Field(description="gate.beat_production_by.")
    test: str = Field(description="mcnemar-midp (accuracy) or paired-bootstrap (other metrics).")
    alpha: float
    n: int = Field(description="Test rows both models were scored on.")
    p_value: float | None = Field(default=None, description="McNemar one-sided mid-p (candidate better).")
    exact_p_value: float | None = Field(default=None, description="McNemar one-sided exact binomial p.")
    discordant: dict[str, int] | None = Field(default=None, description="Rows only one model gets right.")
    ci_low: float | None = Field(default=None, description="Bootstrap interval of the gain, low end.")
    ci_high: float | None = None
    confidence: float | None = Field(default=None, description="Two-sided level of [ci_low, ci_high].")
    resamples: int | None = None
    significant: bool
    supported: bool = Field(description="Gain >= required_gain and significant: the rule held.")
    rule: str
    excluded: int = Field(
        default=0,
        description="Test rows left out because the reference model may have trained on them (its holdout rule differs).",
    )
    reference_holdout: str = Field(
        default="", description="How the reference model's training rows are known (its recorded holdout rule, or not)."
    )


class EvaluationCompleted(Message):
    """Evaluator -> deployer, CLI: the decision and its evidence."""

    experiment_id: ExperimentId
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
    comparison: Comparison | None = Field(default=None, description="Paired test against production, if any.")
    default_comparison: Comparison | None = Field(
        default=None, description="Paired test of the tuned model against the default-params estimator, same rows."
    )
    holdout: Holdout | None = Field(default=None, description="The test rows held out and the rule that chose them.")
    features: list[str] = Field(default_factory=list, description="Training feature names, in order.")
    probe: ArtifactRef | None = Field(default=None, description="Probe rows for the post-deploy check (JSON).")
    gate: Annotated[GateSpec, SetOnly] | None = Field(
        default=None, description="The gate applied (the post-deploy check reuses it)."
    )
    artifact: ArtifactRef | None = None
    release: Name | None = None
    target: str | None = None
    deploy: Annotated[DeploySpec, SetOnly] | None = Field(default=None, description="Where the model goes if promoted.")
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
    SKIPPED = "skipped"  # production unchanged by design: a pull request or an undeclared branch


class DeploymentCompleted(Message):
    """Deployer -> CLI: what happened to the release."""

    experiment_id: ExperimentId
    release: Name
    target: str
    status: DeploymentStatus
    revision: int | None = None
    message: str = ""
    deployed_at: datetime = Field(default_factory=utcnow)


class ReleaseRevision(Message):
    """One revision in a release's history."""

    revision: int
    experiment_id: ExperimentId
    artifact: ArtifactRef
    metrics: dict[str, float] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    estimator: str = ""
    source: Source = Field(default_factory=Source)
    created_at: datetime = Field(default_factory=utcnow)
    reason: str = ""
    features: list[str] = Field(default_factory=list, description="Training feature names the server validates.")
    comparison: Comparison | None = Field(default=None, description="The gate's evidence against production.")
    holdout: Holdout | None = Field(
        default=None, description="The holdout of its evaluation: later comparisons skip rows it trained on."
    )
    deploy: Annotated[DeploySpec, SetOnly] | None = Field(
        default=None, description="Where it was deployed (helm: chart, namespace)."
    )
    target_revision: int | None = Field(default=None, description="The target's own revision (Helm's), if any.")


class ReleaseAction(StrEnum):
    """What changed the live revision of a release."""

    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"  # by hand: tweakline rollback
    AUTO_ROLLED_BACK = "auto_rolled_back"  # failed deployment or post-deploy check
    VERIFIED = "verified"  # the post-deploy check passed (live revision unchanged)


class ReleaseEvent(Message):
    """One step in a release's life, with its reason: the audit trail ``tweakline history`` shows."""

    action: ReleaseAction
    revision: int | None = Field(description="The live revision after this step.")
    previous: int | None = Field(default=None, description="The live revision before this step.")
    reason: str = ""
    by: str = Field(default="deployer", description="Who did it: deployer, or the CLI user.")
    at: datetime = Field(default_factory=utcnow)


class ReleaseHistory(Message):
    """A release: its revisions and which one is live (kept in the releases KV bucket)."""

    release: Name
    target: str = "local"
    current: int | None = None
    revisions: list[ReleaseRevision] = Field(default_factory=list)
    events: list[ReleaseEvent] = Field(default_factory=list)

    def revision(self, number: int) -> ReleaseRevision | None:
        """The revision with this number, if recorded."""
        return next((r for r in self.revisions if r.revision == number), None)

    @property
    def live(self) -> ReleaseRevision | None:
        """The revision now in production, if any."""
        return None if self.current is None else self.revision(self.current)


class RollbackRequested(Message):
    """Operator (the console) -> deployer: make an earlier revision of a release live again."""

    release: Name
    to: int | None = Field(default=None, description="The revision to make live (default: the one live before).")
    expect_current: int | None = Field(
        default=None, description="Refuse unless this revision is still live (the one the operator saw when confirming)."
    )
    reason: str = Field(default="", max_length=500, description="Why, in the operator's words (kept in the history).")
    requested_by: str = Field(default="", max_length=200, description="Who asked: the certificate identity and the user.")
    request_id: str = Field(description="Unique per request: the answer carries it, and de-duplication keys on it.")
    requested_at: datetime = Field(default_factory=utcnow)


class RollbackCompleted(Message):
    """Deployer -> requester: what a :class:`RollbackRequested` did (the history has the step too)."""

    release: str
    request_id: str
    ok: bool
    revision: int | None = Field(default=None, description="The live revision after the request.")
    previous: int | None = Field(default=None, description="The live revision before it.")
    message: str = ""


# Bounds of a model server's summary (outside input to the deployer: refused beyond them).
STATS_MAX_REVISIONS = 4
STATS_MAX_LABELS = 64
STATS_MAX_SAMPLE = 256
STATS_MAX_BUCKETS = 32
# Upper bounds (ms) of the latency buckets a model server counts /predict answers in; the last
# bucket of ``latency_counts`` counts the slower ones.
LATENCY_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)


class RevisionFigures(Message):
    """A model server's live figures of one revision since it went live there (cumulative counts)."""

    revision: int = Field(ge=0)
    requests: int = Field(default=0, ge=0, description="/predict requests the model answered or failed (not 4xx input errors).")
    errors: int = Field(default=0, ge=0, description="Of them, the model failed (5xx, or the model refused the rows).")
    latency_buckets_ms: list[float] = Field(
        default_factory=lambda: list(LATENCY_BUCKETS_MS), max_length=STATS_MAX_BUCKETS, description="Bucket upper bounds."
    )
    latency_counts: list[Annotated[int, Field(ge=0)]] = Field(
        default_factory=list, max_length=STATS_MAX_BUCKETS + 1, description="Requests per bucket, then the slower ones."
    )
    max_latency_ms: float = Field(default=0.0, ge=0)
    labels: dict[Annotated[str, StringConstraints(max_length=64)], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict, max_length=STATS_MAX_LABELS, description="Predicted values and how often (the first ones seen)."
    )
    sample: list[float] = Field(
        default_factory=list, max_length=STATS_MAX_SAMPLE, description="A uniform sample of numeric predictions."
    )
    predictions: int = Field(default=0, ge=0, description="Rows predicted.")
    since: datetime = Field(default_factory=utcnow, description="When this server started serving the revision.")


# HTTP header the deployer's post-deploy check sets on its /predict requests: the model server
# answers them as any other but leaves them out of the live figures (ModelStats), which are the
# traffic's. The check's batches of probe rows would otherwise count as slow live requests.
PROBE_HEADER = "X-Tweakline-Probe"


class ModelStats(Message):
    """Model server -> deployer: a periodic summary of the live figures of the revisions it served.

    Requests carrying :data:`PROBE_HEADER` (the deployer's own checks) are not counted.
    """

    release: Name
    instance: str = Field(max_length=200, description="Which server (replica) measured them.")
    revision: int | None = Field(default=None, description="The revision it serves now.")
    revisions: list[RevisionFigures] = Field(default_factory=list, max_length=STATS_MAX_REVISIONS)
    at: datetime = Field(default_factory=utcnow)


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
    Subject.EXPERIMENT_CANCEL: CancelExperiment,
    Subject.EXPERIMENT_CANCELLED: ExperimentCancelled,
    Subject.EVALUATION_COMPLETED: EvaluationCompleted,
    Subject.DEPLOYMENT_COMPLETED: DeploymentCompleted,
    Subject.RELEASE_ROLLBACK: RollbackRequested,
    Subject.RELEASE_ROLLED_BACK: RollbackCompleted,
    Subject.DEAD_LETTER: DeadLetter,
    Subject.MODEL_STATS: ModelStats,
}

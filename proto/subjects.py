"""Subject, stream, consumer and bucket names: the one place they are spelled.

Every event subject ends with the experiment id as its last token, so one experiment's
whole story can be followed with the filter ``tweakline.*.*.<experiment_id>`` and
permissions can be granted per subject family (``tweakline.trials.requested.>``).
"""

from __future__ import annotations

import re
from enum import StrEnum

from tweakline.proto.ids import NAME_PATTERN, InvalidIdentifierError, check_experiment_id

PREFIX = "tweakline"


class Subject(StrEnum):
    """Subject families on the bus; append the experiment id with :func:`subject_for`."""

    EXPERIMENT_SUBMITTED = f"{PREFIX}.experiments.submitted"
    EXPERIMENT_COMPLETED = f"{PREFIX}.experiments.completed"
    # An operator's or submitter's command to stop an experiment (stored: audited, never lost).
    EXPERIMENT_CANCEL = f"{PREFIX}.experiments.cancel"
    # The scheduler's answer: the experiment ended cancelled or superseded (no evaluation follows).
    EXPERIMENT_CANCELLED = f"{PREFIX}.experiments.cancelled"
    TRIAL_REQUESTED = f"{PREFIX}.trials.requested"
    TRIAL_PROGRESS = f"{PREFIX}.trials.progress"
    TRIAL_CONTROL = f"{PREFIX}.trials.control"
    TRIAL_COMPLETED = f"{PREFIX}.trials.completed"
    EVALUATION_COMPLETED = f"{PREFIX}.evaluations.completed"
    DEPLOYMENT_COMPLETED = f"{PREFIX}.deployments.completed"
    # An operator's request to make an earlier revision live (the console's rollback; stored:
    # audited, never lost) and the deployer's answer; these end with the release name.
    RELEASE_ROLLBACK = f"{PREFIX}.releases.rollback"
    RELEASE_ROLLED_BACK = f"{PREFIX}.releases.rolledback"
    DEAD_LETTER = f"{PREFIX}.deadletter"
    # A model server's periodic summary of its live figures per revision (core NATS, not stored:
    # a lost summary is replaced by the next); ends with the release name.
    MODEL_STATS = f"{PREFIX}.models.stats"


def subject_for(family: Subject, experiment_id: str) -> str:
    """The concrete subject of one experiment's message in ``family``.

    Raises :class:`~tweakline.proto.ids.InvalidIdentifierError` (a ``ValueError``) for an id that
    is not one safe token: a bad id never reaches the server, whose reply to an over-long or
    malformed subject is to close the connection.
    """
    return f"{family.value}.{check_experiment_id(experiment_id)}"


def release_subject(family: Subject, release: str) -> str:
    """The concrete subject of one release's message in ``family`` (the release name is one safe token)."""
    if not isinstance(release, str) or not re.fullmatch(NAME_PATTERN, release):
        raise InvalidIdentifierError(
            f"release name {release!r:.60} is not valid: expected a Kubernetes-style name (lower-case letters, digits and '-')"
        )
    return f"{family.value}.{release}"


DEFAULT_POOL = "default"


def check_pool(pool: str) -> str:
    """``pool`` if it is a valid runner-pool name (one safe subject token), else an error naming it."""
    if not isinstance(pool, str) or not re.fullmatch(NAME_PATTERN, pool):
        raise InvalidIdentifierError(
            f"runner pool {pool!r:.60} is not valid: expected a Kubernetes-style name (lower-case letters, digits and '-')"
        )
    return pool


def trial_subject(pool: str, experiment_id: str) -> str:
    """The subject of one experiment's trial request for runner pool ``pool``.

    ``tweakline.trials.requested.<pool>.<experiment_id>``: the pool is a token of its own so each
    pool's durable consumer filters on it (:func:`pool_filter`); the experiment id stays last.
    """
    return f"{Subject.TRIAL_REQUESTED.value}.{check_pool(pool)}.{check_experiment_id(experiment_id)}"


def pool_filter(pool: str) -> str:
    """The filter subject of runner pool ``pool``'s durable consumer on :attr:`Stream.TRIALS`."""
    return f"{Subject.TRIAL_REQUESTED.value}.{check_pool(pool)}.>"


def pool_consumer(pool: str) -> str:
    """The durable consumer of runner pool ``pool`` on :attr:`Stream.TRIALS`.

    The ``default`` pool keeps the name every runner shared before pools existed
    (:attr:`Consumer.TRIAL_RUNNERS`), so a platform with one pool keeps its objects (the chart's
    scaler names it); any other pool's is ``trial-runners-<pool>``.
    """
    check_pool(pool)
    return Consumer.TRIAL_RUNNERS.value if pool == DEFAULT_POOL else f"{Consumer.TRIAL_RUNNERS.value}-{pool}"


def all_of(family: Subject) -> str:
    """The wildcard matching every experiment's messages in ``family``."""
    return f"{family.value}.>"


def experiment_events(experiment_id: str) -> str:
    """Filter matching every stored event of one experiment (submitted ... deployed)."""
    return f"{PREFIX}.*.*.{check_experiment_id(experiment_id)}"


class Stream(StrEnum):
    """JetStream streams."""

    # Limits retention: the replayable audit log of every lifecycle event.
    EVENTS = "TWEAKLINE_EVENTS"
    # Work-queue retention: trials waiting for a runner; acked trials are removed.
    TRIALS = "TWEAKLINE_TRIALS"
    # Limits retention: messages a service could not accept, with the reason.
    DEAD_LETTERS = "TWEAKLINE_DEADLETTERS"


STREAM_SUBJECTS: dict[Stream, list[str]] = {
    Stream.EVENTS: [
        all_of(Subject.EXPERIMENT_SUBMITTED),
        all_of(Subject.EXPERIMENT_COMPLETED),
        all_of(Subject.EXPERIMENT_CANCEL),
        all_of(Subject.EXPERIMENT_CANCELLED),
        all_of(Subject.TRIAL_COMPLETED),
        all_of(Subject.EVALUATION_COMPLETED),
        all_of(Subject.DEPLOYMENT_COMPLETED),
        all_of(Subject.RELEASE_ROLLBACK),
        all_of(Subject.RELEASE_ROLLED_BACK),
    ],
    Stream.TRIALS: [all_of(Subject.TRIAL_REQUESTED)],
    Stream.DEAD_LETTERS: [all_of(Subject.DEAD_LETTER)],
}


class Consumer(StrEnum):
    """Durable consumer names, one per (service, role)."""

    SCHEDULER_INTAKE = "scheduler-intake"
    SCHEDULER_CONTROL = "scheduler-control"  # cancel commands
    TRIAL_RUNNERS = "trial-runners"
    EVALUATOR = "evaluator"
    DEPLOYER = "deployer"
    DEPLOYER_CONTROL = "deployer-control"  # rollback requests
    # The webhook reports decisions back to the commit (build status, PR comment).
    WEBHOOK_EVALUATIONS = "webhook-evaluations"
    WEBHOOK_DEPLOYMENTS = "webhook-deployments"


# (stream, filter subject) of each durable consumer.
CONSUMER_FILTERS: dict[Consumer, tuple[Stream, str]] = {
    Consumer.SCHEDULER_INTAKE: (Stream.EVENTS, all_of(Subject.EXPERIMENT_SUBMITTED)),
    Consumer.SCHEDULER_CONTROL: (Stream.EVENTS, all_of(Subject.EXPERIMENT_CANCEL)),
    # The default runner pool's; other pools' consumers are named by pool_consumer() and filtered by
    # pool_filter(), made for the pools a platform has (ensure_topology).
    Consumer.TRIAL_RUNNERS: (Stream.TRIALS, f"{Subject.TRIAL_REQUESTED.value}.{DEFAULT_POOL}.>"),
    Consumer.EVALUATOR: (Stream.EVENTS, all_of(Subject.EXPERIMENT_COMPLETED)),
    Consumer.DEPLOYER: (Stream.EVENTS, all_of(Subject.EVALUATION_COMPLETED)),
    Consumer.DEPLOYER_CONTROL: (Stream.EVENTS, all_of(Subject.RELEASE_ROLLBACK)),
    Consumer.WEBHOOK_EVALUATIONS: (Stream.EVENTS, all_of(Subject.EVALUATION_COMPLETED)),
    Consumer.WEBHOOK_DEPLOYMENTS: (Stream.EVENTS, all_of(Subject.DEPLOYMENT_COMPLETED)),
}


class Bucket(StrEnum):
    """Key-value buckets and object stores."""

    EXPERIMENTS = "tweakline-experiments"  # KV: experiment state, so a restarted scheduler resumes
    RELEASES = "tweakline-releases"  # KV: release history per release name
    LINEAGE = "tweakline-lineage"  # KV: earlier trials per lineage (repository + experiment), for warm start
    ARTIFACTS = "tweakline-artifacts"  # object store: models (skops) and reports
    DATASETS = "tweakline-datasets"  # object store: uploaded dataset files, named by their sha256
    WEBHOOK_DELIVERIES = "tweakline-webhook-deliveries"  # KV with TTL: webhook request ids already handled
    SCHEDULER_LEASES = "tweakline-scheduler-leases"  # KV with TTL: which scheduler owns each running experiment


def lease_key(experiment_id: str) -> str:
    """Key of an experiment's ownership lease in :attr:`Bucket.SCHEDULER_LEASES`."""
    return f"experiment.{experiment_id}"


def member_key(scheduler_id: str) -> str:
    """Key of a live scheduler's membership in :attr:`Bucket.SCHEDULER_LEASES` (to share work evenly)."""
    return f"member.{scheduler_id}"


# A lease (and a membership) not renewed within this time expires on the server: its owner is
# presumed dead and another scheduler may take the experiment over. Owners renew every third of it.
SCHEDULER_LEASE_TTL_S = 6.0


def dataset_object_name(sha256: str) -> str:
    """Name of an uploaded dataset in :attr:`Bucket.DATASETS`: content-addressed by its SHA-256."""
    return f"sha256/{sha256}"


# How long a webhook delivery id is remembered (replays within it are ignored).
WEBHOOK_REPLAY_TTL_S = 7 * 86_400.0


# Dedup window of the streams: a re-published message with the same Nats-Msg-Id inside it
# is stored once.
DUPLICATE_WINDOW_S = 120.0

"""Who may publish and subscribe to what: the one source of the NATS authorisation map.

Each service connects with a client certificate whose subject is ``CN=<identity>``; the NATS
server (``verify_and_map``) maps it to a user with exactly these permissions. The local stack
and the Helm chart both render their server configuration from :func:`permission_map`.

JetStream is driven through request subjects (``$JS.API.*``), KV through ``$KV.<bucket>.*``
and the object store through ``$O.<bucket>.*``; the helpers below grant them per stream,
consumer and bucket, so that, for instance, a runner can read its work queue but can neither
publish a deployment nor touch the release history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tweakline.proto.subjects import CONSUMER_FILTERS, Bucket, Consumer, Stream, Subject, all_of


class Identity(StrEnum):
    """Certificate identities (the ``CN``), one per service or client role."""

    SCHEDULER = "scheduler"
    TRIAL_RUNNER = "trial-runner"
    EVALUATOR = "evaluator"
    DEPLOYER = "deployer"
    MODEL_SERVER = "model-server"
    SUBMITTER = "submitter"  # CI pipelines: upload datasets, submit and follow experiments
    WEBHOOK = "webhook"  # the Bitbucket intake: submits experiments and reports decisions back
    ADMIN = "admin"  # the local CLI and the chart's setup job: creates streams and buckets
    NATS_SERVER = "nats-server"  # server certificate only, never a bus user


SERVICE_IDENTITIES = (Identity.SCHEDULER, Identity.TRIAL_RUNNER, Identity.EVALUATOR, Identity.DEPLOYER)
CLIENT_IDENTITIES = tuple(i for i in Identity if i is not Identity.NATS_SERVER)


@dataclass
class Permissions:
    """Allowed publish and subscribe subjects of one identity."""

    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)

    def add(self, other: Permissions) -> Permissions:
        """Merge ``other`` into this set (keeping order, without repeats)."""
        for subject in other.publish:
            if subject not in self.publish:
                self.publish.append(subject)
        for subject in other.subscribe:
            if subject not in self.subscribe:
                self.subscribe.append(subject)
        return self


def _base() -> Permissions:
    # Replies (JetStream acks, API responses) arrive on the connection's own inbox.
    return Permissions(publish=["$JS.API.INFO"], subscribe=["_INBOX.>"])


def publishes(*subjects: str) -> Permissions:
    """Publish to application subjects (stored ones get their PubAck on the inbox)."""
    return Permissions(publish=list(subjects))


def listens(*subjects: str) -> Permissions:
    """Plain (core NATS) subscriptions."""
    return Permissions(subscribe=list(subjects))


def consumes(consumer: Consumer) -> Permissions:
    """Create/bind and pull from one durable consumer, and ack its messages."""
    stream, _filter = CONSUMER_FILTERS[consumer]
    return Permissions(
        publish=[
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}",
            f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>",
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
            f"$JS.ACK.{stream}.{consumer}.>",
        ]
    )


def follows(stream: str) -> Permissions:
    """Read a stream through ephemeral ordered consumers (to follow or replay events)."""
    return Permissions(
        publish=[
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
        ],
        subscribe=[],
    )


def key_value(bucket: Bucket, *, write: bool) -> Permissions:
    """Read (and optionally write) one KV bucket."""
    stream = f"KV_{bucket}"
    perms = follows(stream).add(Permissions(publish=[f"$JS.API.STREAM.INFO.{stream}"]))
    if write:
        perms.add(Permissions(publish=[f"$KV.{bucket}.>"]))
    return perms


def object_store(bucket: Bucket, *, write: bool) -> Permissions:
    """Read (and optionally write) one object store."""
    stream = f"OBJ_{bucket}"
    # Reading an object subscribes to its chunks, and nats-py first looks the stream up by subject.
    perms = follows(stream).add(Permissions(publish=[f"$JS.API.STREAM.INFO.{stream}", "$JS.API.STREAM.NAMES"]))
    if write:
        perms.add(Permissions(publish=[f"$O.{bucket}.>", f"$JS.API.STREAM.PURGE.{stream}"]))
    return perms


def dead_letters() -> Permissions:
    """Every service may report what it refused."""
    return publishes(all_of(Subject.DEAD_LETTER))


def permission_map() -> dict[Identity, Permissions]:
    """Publish/subscribe permissions per identity: least privilege for every service."""
    return {
        Identity.SCHEDULER: _base()
        .add(consumes(Consumer.SCHEDULER_INTAKE))
        .add(
            publishes(
                all_of(Subject.TRIAL_REQUESTED),
                all_of(Subject.TRIAL_CONTROL),
                all_of(Subject.EXPERIMENT_COMPLETED),
            )
        )
        .add(listens(all_of(Subject.TRIAL_PROGRESS)))
        .add(key_value(Bucket.EXPERIMENTS, write=True))
        .add(key_value(Bucket.LINEAGE, write=True))
        .add(key_value(Bucket.SCHEDULER_LEASES, write=True))
        .add(follows(Stream.EVENTS))
        .add(dead_letters()),
        Identity.TRIAL_RUNNER: _base()
        .add(consumes(Consumer.TRIAL_RUNNERS))
        .add(publishes(all_of(Subject.TRIAL_COMPLETED), all_of(Subject.TRIAL_PROGRESS)))
        .add(listens(all_of(Subject.TRIAL_CONTROL)))
        .add(object_store(Bucket.ARTIFACTS, write=False))
        .add(object_store(Bucket.DATASETS, write=False))
        .add(dead_letters()),
        Identity.EVALUATOR: _base()
        .add(consumes(Consumer.EVALUATOR))
        .add(publishes(all_of(Subject.EVALUATION_COMPLETED)))
        .add(key_value(Bucket.RELEASES, write=False))
        .add(object_store(Bucket.ARTIFACTS, write=True))
        .add(object_store(Bucket.DATASETS, write=False))
        .add(dead_letters()),
        Identity.DEPLOYER: _base()
        .add(consumes(Consumer.DEPLOYER))
        .add(publishes(all_of(Subject.DEPLOYMENT_COMPLETED)))
        .add(key_value(Bucket.RELEASES, write=True))
        .add(object_store(Bucket.ARTIFACTS, write=False))
        .add(dead_letters()),
        Identity.MODEL_SERVER: _base()
        .add(key_value(Bucket.RELEASES, write=False))
        .add(object_store(Bucket.ARTIFACTS, write=False)),
        Identity.SUBMITTER: _base()
        .add(publishes(all_of(Subject.EXPERIMENT_SUBMITTED)))
        .add(follows(Stream.EVENTS))
        .add(listens(all_of(Subject.TRIAL_PROGRESS)))
        .add(key_value(Bucket.EXPERIMENTS, write=False))
        .add(key_value(Bucket.RELEASES, write=False))
        .add(object_store(Bucket.ARTIFACTS, write=True))
        .add(object_store(Bucket.DATASETS, write=True)),
        Identity.WEBHOOK: _base()
        .add(publishes(all_of(Subject.EXPERIMENT_SUBMITTED)))
        .add(consumes(Consumer.WEBHOOK_EVALUATIONS))
        .add(consumes(Consumer.WEBHOOK_DEPLOYMENTS))
        .add(follows(Stream.EVENTS))
        .add(key_value(Bucket.WEBHOOK_DELIVERIES, write=True))
        .add(object_store(Bucket.DATASETS, write=True))
        .add(dead_letters()),
        # The operator's identity: creates the topology, reads everything, manual rollbacks.
        Identity.ADMIN: Permissions(publish=[">"], subscribe=[">"]),
    }


def nats_user(identity: str) -> str:
    """The NATS user ``verify_and_map`` maps a certificate to: its subject, ``CN=<identity>``.

    Must equal ``tweakline.runtime.natsserver.user_for`` (the local stack's server); a test checks it.
    """
    return f"CN={identity}"


def nats_authorization(perms: dict[Identity, Permissions] | None = None) -> dict[str, Any]:
    """The NATS ``authorization`` block as a JSON document (NATS config syntax accepts JSON)."""
    perms = perms if perms is not None else permission_map()
    return {
        "authorization": {
            "users": [
                {
                    "user": nats_user(identity.value),
                    "permissions": {
                        "publish": {"allow": list(p.publish)},
                        "subscribe": {"allow": list(p.subscribe)},
                    },
                }
                for identity, p in perms.items()
            ]
        }
    }

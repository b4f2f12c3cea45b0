"""The deployer's answer to a rollback request (the console's), on a real nats-server.

A request rolls back once and answers with the outcome on ``releases.rolledback``; a
redelivered request is answered again without rolling back a second time; a request whose
``expect_current`` no longer holds is refused with the reason and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from tests.deployer.test_history_rollback import promote_three
from tweakline.deployer.handlers import Deployer
from tweakline.proto.messages import ReleaseAction, RollbackCompleted, RollbackRequested
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, release_subject
from tweakline.runtime.bus import connect
from tweakline.runtime.service import ServiceContext, make_broker


@dataclass
class Delivered:
    """A delivered request as the handler sees it (it only acks)."""

    acked: bool = False

    async def ack(self) -> None:
        self.acked = True


@pytest.fixture
async def deployer(nats) -> AsyncIterator[Deployer]:
    settings = nats.settings(Identity.DEPLOYER)
    broker = make_broker(settings, "deployer")
    await broker.connect()
    deployer = Deployer(ServiceContext(settings, broker, "deployer"))
    await deployer.start()
    try:
        yield deployer
    finally:
        await broker.stop()


async def answers(nats, release: str) -> list[RollbackCompleted]:
    """Every answer stored for ``release`` (read as admin)."""
    nc = await connect(nats.settings(Identity.ADMIN), "test-answers")
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(release_subject(Subject.RELEASE_ROLLED_BACK, release), stream=Stream.EVENTS.value)
        found = []
        try:
            for msg in await sub.fetch(10, timeout=2):
                found.append(RollbackCompleted.model_validate_json(msg.data))
        except TimeoutError:
            pass
        await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def test_a_request_rolls_back_once_and_a_redelivery_is_answered_again(nats, deployer: Deployer) -> None:
    release = "requested-" + uuid.uuid4().hex[:6]
    await promote_three(nats, release)
    request = RollbackRequested(
        release=release, to=1, expect_current=3, reason="regressed", requested_by="console (ops)", request_id=uuid.uuid4().hex
    )
    for _ in range(2):  # the second is a redelivery of the same request
        delivered = Delivered()
        await deployer.on_rollback_requested(request, delivered)  # type: ignore[arg-type]
        assert delivered.acked
    history = (await deployer.store.get(release))[0]
    rolled = [e for e in history.events if e.action is ReleaseAction.ROLLED_BACK]
    assert history.current == 1 and len(rolled) == 1
    assert rolled[0].by == "console (ops)" and rolled[0].reason == f"regressed (request {request.request_id})"
    (answer,) = await answers(nats, release)  # the same answer twice is stored once (its message id)
    assert answer.ok and (answer.revision, answer.previous) == (1, 3) and answer.request_id == request.request_id


async def test_a_stale_request_is_refused_with_the_reason_and_changes_nothing(nats, deployer: Deployer) -> None:
    release = "stale-" + uuid.uuid4().hex[:6]
    await promote_three(nats, release)
    request = RollbackRequested(release=release, to=1, expect_current=2, request_id=uuid.uuid4().hex)
    await deployer.on_rollback_requested(request, Delivered())  # type: ignore[arg-type]
    assert (await deployer.store.get(release))[0].current == 3
    (answer,) = await answers(nats, release)
    assert not answer.ok and answer.message == f"release {release}: revision 3 is live now, not 2; not rolling back"
    unknown = RollbackRequested(release=release, to=9, request_id=uuid.uuid4().hex)
    await deployer.on_rollback_requested(unknown, Delivered())  # type: ignore[arg-type]
    assert [a.message for a in await answers(nats, release)][-1].endswith("has no revision 9; revisions: 1, 2, 3")

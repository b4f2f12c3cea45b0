"""The runner's work-queue subscriber: the request and its message reach the handler without a worker-thread hop.

FastStream 0.7 resolves a ``msg: NatsMessage`` parameter in a worker thread (anyio's
``to_thread.run_sync``): a thread hop per trial request on the dispatch-to-result path. The
runner's subscriber takes only its payload and reads the message from FastStream's context.
(In memory with TestNatsBroker: only the subscriber's wiring is under test here.)
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import pytest
from faststream.nats import NatsMessage, TestNatsBroker
from faststream.nats.message import NatsMessage as StreamNatsMessage

from tests.factories import make_spec
from tweakline.proto.messages import TrialRequested
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import DEFAULT_POOL, Stream, trial_subject
from tweakline.trial_runner.app import create_app
from tweakline.trial_runner.handlers import TrialRunner


async def test_a_trial_request_and_its_message_reach_the_handler_without_a_thread_hop(
    nats, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[tuple[TrialRequested, Any]] = []

    async def record(self: TrialRunner, request: TrialRequested, msg: NatsMessage) -> None:
        handled.append((request, msg))

    monkeypatch.setattr(TrialRunner, "on_trial_requested", record)
    hops: list[Any] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    request = TrialRequested(experiment_id="sub-1", trial_id="sub-1.0", number=0, params={"C": 1.0}, spec=make_spec())
    app = create_app(nats.settings(Identity.TRIAL_RUNNER))
    async with TestNatsBroker(app.broker) as broker:
        await broker.publish(request, trial_subject(DEFAULT_POOL, "sub-1"), stream=Stream.TRIALS.value)
    [(got, msg)] = handled
    assert got == request
    assert isinstance(msg, StreamNatsMessage) and TrialRequested.model_validate_json(msg.body) == request
    assert hops == [], f"the request went through a worker thread: {hops}"

"""The service scaffold in memory (FastStream's TestNatsBroker): typed handlers, dead letters, start-up order.

Every subscriber of every service app is checked: a good payload reaches the typed handler as
its pydantic model; a payload that is too large, not JSON or of the wrong shape is dead-lettered
once with its reason and terminated, and the handler is not called. The handlers themselves are
replaced by recorders (their own logic is tested against the real bus elsewhere).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import pytest
from faststream import FastStream
from faststream.nats import JStream, NatsMessage, NatsRouter, TestNatsBroker
from faststream.nats.message import NatsMessage as StreamNatsMessage  # the class (NatsMessage is its annotation)
from pydantic import BaseModel, SecretStr

from tweakline.deployer.app import create_app as deployer_app
from tweakline.deployer.handlers import Deployer
from tweakline.evaluator.app import create_app as evaluator_app
from tweakline.evaluator.handlers import Evaluator
from tweakline.proto.messages import (
    DeadLetter,
    Decision,
    DeploymentCompleted,
    DeploymentStatus,
    EvaluationCompleted,
    ExperimentCompleted,
    ExperimentStatus,
    ExperimentSubmitted,
    TrialControl,
    TrialProgress,
    TrialRequested,
)
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import DEFAULT_POOL, Stream, Subject, subject_for, trial_subject
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.service import ServiceContext, make_app, make_broker
from tweakline.scheduler.app import create_app as scheduler_app
from tweakline.scheduler.handlers import Scheduler
from tweakline.trial_runner.app import create_app as runner_app
from tweakline.trial_runner.early_stopping import EarlyStopping
from tweakline.trial_runner.handlers import TrialRunner
from tweakline.webhook.app import Webhook, WebhookSettings, build

LIMIT = 64 * 1024

TWEAK = TweakFile.model_validate(
    {
        "apiVersion": "tweakline/v1",
        "kind": "Experiment",
        "metadata": {"name": "intake"},
        "spec": {
            "dataset": {"source": "sklearn:iris"},
            "model": {"estimator": "sklearn.svm.SVC"},
            "search": {"space": {"C": {"type": "float", "low": 0.1, "high": 10}}},
            "objective": {"metric": "accuracy", "cv": 2},
        },
    }
)
EXP = "intake-1"


def _webhook_app(settings: Any) -> FastStream:
    hook = WebhookSettings(webhook_port=0, webhook_secret=SecretStr("s3cret"), webhook_tweak_paths=[])
    return build(settings, hook)[0]


@dataclass(frozen=True)
class Case:
    """One subscriber of one service app: where its payload arrives and what it must be."""

    service: str
    identity: Identity
    create_app: Callable[[Any], FastStream]
    owner: type
    handler: str
    family: Subject
    stream: Stream | None
    good: BaseModel

    def __str__(self) -> str:
        return f"{self.service}.{self.handler}"


CASES = [
    Case(
        "scheduler",
        Identity.SCHEDULER,
        scheduler_app,
        Scheduler,
        "on_submitted",
        Subject.EXPERIMENT_SUBMITTED,
        Stream.EVENTS,
        ExperimentSubmitted(experiment_id=EXP, tweak=TWEAK),
    ),
    # No scheduler.on_trial_completed subscriber: results reach the owning scheduler through its own
    # feed on the stream (scheduler/ownership.py; tests/fault/test_cluster_faults.py), not FastStream.
    Case(
        "scheduler",
        Identity.SCHEDULER,
        scheduler_app,
        Scheduler,
        "on_progress",
        Subject.TRIAL_PROGRESS,
        None,
        TrialProgress(experiment_id=EXP, trial_id=f"{EXP}.0", number=0, step=0, value=0.9),
    ),
    Case(
        "trial-runner",
        Identity.TRIAL_RUNNER,
        runner_app,
        TrialRunner,
        "on_trial_requested",
        Subject.TRIAL_REQUESTED,
        Stream.TRIALS,
        TrialRequested(experiment_id=EXP, trial_id=f"{EXP}.0", number=0, params={"C": 1.0}, spec=TWEAK.spec),
    ),
    Case(
        "trial-runner",
        Identity.TRIAL_RUNNER,
        runner_app,
        EarlyStopping,
        "on_control",
        Subject.TRIAL_CONTROL,
        None,
        TrialControl(experiment_id=EXP, trial_id=f"{EXP}.0", step=0),
    ),
    Case(
        "evaluator",
        Identity.EVALUATOR,
        evaluator_app,
        Evaluator,
        "on_experiment_completed",
        Subject.EXPERIMENT_COMPLETED,
        Stream.EVENTS,
        ExperimentCompleted(
            experiment_id=EXP, tweak=TWEAK, status=ExperimentStatus.COMPLETED, trials=[], started_at=datetime.now(UTC)
        ),
    ),
    Case(
        "deployer",
        Identity.DEPLOYER,
        deployer_app,
        Deployer,
        "on_evaluation_completed",
        Subject.EVALUATION_COMPLETED,
        Stream.EVENTS,
        EvaluationCompleted(experiment_id=EXP, decision=Decision.REJECT),
    ),
    Case(
        "webhook",
        Identity.WEBHOOK,
        _webhook_app,
        Webhook,
        "on_evaluation",
        Subject.EVALUATION_COMPLETED,
        Stream.EVENTS,
        EvaluationCompleted(experiment_id=EXP, decision=Decision.REJECT),
    ),
    Case(
        "webhook",
        Identity.WEBHOOK,
        _webhook_app,
        Webhook,
        "on_deployment",
        Subject.DEPLOYMENT_COMPLETED,
        Stream.EVENTS,
        DeploymentCompleted(experiment_id=EXP, release="r", target="local", status=DeploymentStatus.DEPLOYED),
    ),
]

MALFORMED = {
    "too large": (b'{"pad": "' + b"x" * LIMIT + b'"}', None, f"exceeds the limit of {LIMIT}"),
    "not JSON": (b"{not json", None, "not a valid {model}: <body>: Input should be a valid dictionary"),
    "declared JSON that is not": (b'{"experiment_id":', {"content-type": "application/json"}, "not JSON: "),
    "wrong shape": (b'{"experiment_id": 3}', None, "not a valid {model}: experiment_id: Input should be a valid string"),
}


def published_subject(case: Case) -> str:
    """Where the case's message is published: trial requests carry the runner pool (the default one here)."""
    return trial_subject(DEFAULT_POOL, EXP) if case.family is Subject.TRIAL_REQUESTED else subject_for(case.family, EXP)


@dataclass
class Recorded:
    """What the app did with the published messages."""

    payloads: list[BaseModel]
    letters: list[DeadLetter]
    rejected: list[bytes]
    messages: list[Any] = field(default_factory=list)  # what each handler call got as its ``msg``
    hops: list[Any] = field(default_factory=list)  # functions run in a worker thread meanwhile


async def _publish(
    nats, monkeypatch: pytest.MonkeyPatch, case: Case, body: Any, headers: dict[str, str] | None = None
) -> Recorded:
    recorded = Recorded([], [], [])
    model = type(case.good)

    async def handler(self: Any, body: BaseModel, msg: NatsMessage) -> None:
        recorded.payloads.append(body)
        recorded.messages.append(msg)

    # The recorder keeps the real handler's name and payload type (what the app registers).
    handler.__name__ = case.handler
    handler.__annotations__ = {"body": model, "msg": NatsMessage, "return": None}
    monkeypatch.setattr(case.owner, case.handler, handler)
    original_reject = StreamNatsMessage.reject

    async def reject(self: StreamNatsMessage) -> None:
        recorded.rejected.append(self.body)
        await original_reject(self)

    monkeypatch.setattr(StreamNatsMessage, "reject", reject)
    run_sync = anyio.to_thread.run_sync

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        recorded.hops.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)

    app = case.create_app(nats.settings(case.identity, max_payload_bytes=LIMIT))
    letters = NatsRouter()

    @letters.subscriber(
        f"{Subject.DEAD_LETTER.value}.{case.service}", stream=JStream(name=Stream.DEAD_LETTERS.value, declare=False)
    )
    async def dead_letter(letter: DeadLetter) -> None:
        recorded.letters.append(letter)

    app.broker.include_router(letters)
    async with TestNatsBroker(app.broker) as broker:
        await broker.publish(
            body,
            published_subject(case),
            headers=headers,
            stream=case.stream.value if case.stream else None,
        )
    return recorded


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_a_good_payload_reaches_the_typed_handler(nats, monkeypatch: pytest.MonkeyPatch, case: Case) -> None:
    recorded = await _publish(nats, monkeypatch, case, case.good)
    assert recorded.payloads == [case.good]
    assert recorded.letters == [] and recorded.rejected == []
    # The handler's msg is the message it handles, handed over without a worker-thread hop
    # (FastStream 0.7 resolves a msg parameter in a thread; ServiceContext.subscribe avoids it).
    [msg] = recorded.messages
    assert isinstance(msg, StreamNatsMessage) and type(case.good).model_validate_json(msg.body) == case.good
    assert recorded.hops == [], f"the message went through a worker thread: {recorded.hops}"


@pytest.mark.parametrize("kind", MALFORMED)
@pytest.mark.parametrize("case", CASES, ids=str)
async def test_a_malformed_payload_is_dead_lettered_once_and_never_handled(
    nats, monkeypatch: pytest.MonkeyPatch, case: Case, kind: str
) -> None:
    body, headers, reason = MALFORMED[kind]
    recorded = await _publish(nats, monkeypatch, case, body, headers)
    assert recorded.payloads == [], "the handler must not see a payload it cannot take"
    [letter] = recorded.letters
    assert letter.service == case.service
    assert letter.subject == published_subject(case)
    assert reason.format(model=type(case.good).__name__) in letter.reason
    assert letter.payload == body[:2048].decode()
    assert recorded.rejected == [body], "terminated (never redelivered)"


async def test_a_handlers_own_validation_error_is_not_blamed_on_the_sender(nats) -> None:
    settings = nats.settings(Identity.SCHEDULER)
    broker = make_broker(settings, "scheduler")
    ctx = ServiceContext(settings, broker, "scheduler")
    letters: list[DeadLetter] = []
    router = NatsRouter()

    async def on_progress(progress: TrialProgress) -> None:
        TrialProgress.model_validate({"experiment_id": progress.experiment_id})  # a bug in the handler

    ctx.subscribe(router, on_progress, subject=subject_for(Subject.TRIAL_PROGRESS, EXP))

    @router.subscriber(f"{Subject.DEAD_LETTER.value}.scheduler")
    async def dead_letter(letter: DeadLetter) -> None:
        letters.append(letter)

    broker.include_router(router)
    make_app(ctx, "scheduler")
    good = TrialProgress(experiment_id=EXP, trial_id=f"{EXP}.0", number=0, step=0, value=0.9)
    async with TestNatsBroker(broker) as test_broker:
        with pytest.raises(Exception, match="trial_id"):  # TestNatsBroker re-raises what the handler raised
            await test_broker.publish(good, subject_for(Subject.TRIAL_PROGRESS, EXP))
    assert letters == []


def test_a_handler_without_a_payload_model_is_refused(nats) -> None:
    settings = nats.settings(Identity.SCHEDULER)
    ctx = ServiceContext(settings, make_broker(settings, "scheduler"), "scheduler")

    async def untyped(msg: NatsMessage) -> None: ...

    with pytest.raises(TypeError, match="untyped: first parameter is .*expected a pydantic model"):
        ctx.subscribe(NatsRouter(), untyped, subject="x")

    async def extra(progress: TrialProgress, msg: NatsMessage, other: int) -> None: ...

    with pytest.raises(TypeError, match="extra: after its payload it may take only 'msg: NatsMessage'"):
        ctx.subscribe(NatsRouter(), extra, subject="x")


async def test_no_message_is_handled_before_the_start_hooks_finish(nats) -> None:
    # FastStream starts subscribers before after_startup hooks; make_app runs the start hooks
    # first, so a handler never finds its stores unbound (the start-up race, solved once).
    settings = nats.settings(Identity.ADMIN)
    broker = make_broker(settings, "scheduler")
    ctx = ServiceContext(settings, broker, "scheduler")
    subject = subject_for(Subject.TRIAL_PROGRESS, "startup-order")
    good = TrialProgress(experiment_id="startup-order", trial_id="startup-order.0", number=0, step=0, value=0.5)
    started = False
    seen_started: list[bool] = []
    router = NatsRouter()

    async def on_progress(progress: TrialProgress) -> None:
        seen_started.append(started)

    async def start() -> None:
        nonlocal started
        await broker.publish(good, subject)  # would be handled now if the subscriber were already listening
        await broker.connection.flush()
        await asyncio.sleep(0.5)
        started = True

    ctx.subscribe(router, on_progress, subject=subject)
    broker.include_router(router)
    app = make_app(ctx, "scheduler", start=[start])
    await app.start()
    try:
        await broker.publish(good, subject)
        for _ in range(100):
            if seen_started:
                break
            await asyncio.sleep(0.05)
    finally:
        await app.stop()
    assert seen_started == [True]

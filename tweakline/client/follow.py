"""Submit an experiment and follow it to its decision through the stored event log.

Following reads the experiment's events from JetStream (an ordered consumer on
``tweakline.*.*.<experiment_id>``), so a follower that starts late, or reconnects, misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import api
from opentelemetry import trace

from tweakline.errors import BusError, TweaklineError
from tweakline.observability import telemetry
from tweakline.proto.ids import check_experiment_id
from tweakline.proto.messages import (
    Decision,
    DeploymentCompleted,
    EvaluationCompleted,
    ExperimentCancelled,
    ExperimentCompleted,
    ExperimentSubmitted,
    Source,
    TrialCompleted,
    TrialStatus,
    msg_id,
)
from tweakline.proto.subjects import Stream, Subject, experiment_events, subject_for
from tweakline.proto.tweakfile import TweakFile


def new_experiment_id(tweak: TweakFile) -> str:
    """A unique, subject-safe id: the experiment's name and a random suffix."""
    return f"{tweak.metadata.name}-{uuid.uuid4().hex[:8]}"


@dataclass
class Outcome:
    """Everything learned about one experiment while following it."""

    experiment_id: str
    tweak: TweakFile
    trials: dict[int, TrialCompleted] = field(default_factory=dict)
    completed: ExperimentCompleted | None = None
    evaluation: EvaluationCompleted | None = None
    deployment: DeploymentCompleted | None = None
    cancelled: ExperimentCancelled | None = None  # stopped by `tweakline cancel` or superseded: no decision
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    trace_id: str | None = None

    @property
    def maximize(self) -> bool:
        return self.tweak.spec.objective.maximize

    def best_score(self) -> float | None:
        """Best objective value among the results so far."""
        scores = [t.score for t in self.trials.values() if t.status is TrialStatus.OK and t.score is not None]
        if not scores:
            return None
        return max(scores) if self.maximize else min(scores)

    @property
    def done(self) -> bool:
        """Whether the experiment reached its last event."""
        if self.cancelled is not None:
            return True
        if self.evaluation is None:
            return False
        if self.evaluation.decision is Decision.PROMOTE and self.evaluation.deploy is not None:
            return self.deployment is not None
        return True

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def exit_code(self) -> int:
        """0 when the gate passed (and the deployment worked, or was skipped by the branch rule), 1 when rejected, 2 on error or cancel."""
        if self.evaluation is None:
            return 2
        if self.evaluation.decision is Decision.REJECT:
            return 1
        if self.evaluation.decision is Decision.ERROR:
            return 2
        # "skipped": a pull request or another branch passed the gate; production unchanged by design
        if self.deployment is not None and self.deployment.status.value not in ("deployed", "skipped"):
            return 2
        return 0


_DECODERS: dict[str, type] = {
    Subject.TRIAL_COMPLETED.value: TrialCompleted,
    Subject.EXPERIMENT_COMPLETED.value: ExperimentCompleted,
    Subject.EXPERIMENT_CANCELLED.value: ExperimentCancelled,
    Subject.EVALUATION_COMPLETED.value: EvaluationCompleted,
    Subject.DEPLOYMENT_COMPLETED.value: DeploymentCompleted,
}


def apply_event(outcome: Outcome, subject: str, data: bytes) -> bool:
    """Fold one stored event into ``outcome``; ``True`` if it changed anything."""
    family = subject.rsplit(".", 1)[0]
    model = _DECODERS.get(family)
    if model is None:
        return False
    event = model.model_validate_json(data)
    if isinstance(event, TrialCompleted):
        new = [r for r in event.results() if r.number not in outcome.trials]
        if not new:
            return False
        outcome.trials.update((r.number, r) for r in new)
    elif isinstance(event, ExperimentCompleted):
        outcome.completed = event
    elif isinstance(event, ExperimentCancelled):
        outcome.cancelled = event
    elif isinstance(event, EvaluationCompleted):
        outcome.evaluation = event
    elif isinstance(event, DeploymentCompleted):
        outcome.deployment = event
    if outcome.done and outcome.finished is None:
        outcome.finished = time.monotonic()
    return True


async def submit(nc: Client, tweak: TweakFile, source: Source, experiment_id: str | None = None) -> str:
    """Publish an ``ExperimentSubmitted``; returns the experiment id."""
    exp_id = experiment_id or new_experiment_id(tweak)
    try:  # checked here, at the edge, as the scheduler checks it again on receipt
        check_experiment_id(exp_id)
    except ValueError as exc:
        raise TweaklineError(str(exc)) from None
    # Inside experiment_span() the experiment's root span is current; otherwise this submit roots it.
    with contextlib.ExitStack() as stack:
        if telemetry.current_traceparent() is None:
            stack.enter_context(experiment_span(exp_id, tweak))
        message = ExperimentSubmitted(
            experiment_id=exp_id, tweak=tweak, source=source, traceparent=telemetry.current_traceparent()
        )
        subject = subject_for(Subject.EXPERIMENT_SUBMITTED, exp_id)
        js = nc.jetstream()
        with telemetry.span(
            f"{Subject.EXPERIMENT_SUBMITTED.value} publish",
            kind=trace.SpanKind.PRODUCER,
            experiment_id=exp_id,
            attributes={"messaging.system": "nats", "messaging.destination.name": subject, "messaging.operation": "publish"},
        ):
            try:
                await js.publish(
                    subject,
                    message.model_dump_json().encode(),
                    headers=telemetry.inject_headers({"Nats-Msg-Id": msg_id("submit", exp_id)}),
                    stream=Stream.EVENTS.value,
                    timeout=10,
                )
            except Exception as exc:
                raise BusError(f"could not submit the experiment: {exc}") from exc
    return exp_id


def experiment_span(experiment_id: str, tweak: TweakFile) -> contextlib.AbstractContextManager[trace.Span]:
    """The root span of one experiment's trace (the CLI holds it open while following the experiment)."""
    deploy = tweak.spec.deploy
    return telemetry.span(
        "experiment",
        experiment_id=experiment_id,
        release=deploy.release if deploy else None,
        attributes={
            "tweakline.experiment.name": tweak.metadata.name,
            "tweakline.estimator": tweak.spec.model.name,
            "tweakline.search.algorithm": tweak.spec.search.algorithm,
        },
    )


# A follower that has seen no event for this long re-subscribes from the last one it saw.
RESUBSCRIBE_AFTER_SILENCE_S = 10.0


async def follow(
    nc: Client,
    outcome: Outcome,
    on_change: Callable[[Outcome], None] | None = None,
    *,
    timeout: float | None = None,
    alive: Callable[[], None] | None = None,
) -> Outcome:
    """Read the experiment's events until its decision (and deployment) arrive, or ``timeout`` passes.

    ``alive`` is called about once a second and may raise to abort (e.g. a local service died).
    """
    js = nc.jetstream()
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
    last_seq = 0  # stream sequence of the last event seen: a re-subscription resumes after it

    async def _on_msg(msg) -> None:
        nonlocal last_seq
        seq = msg.metadata.sequence.stream
        if seq <= last_seq:  # already seen (a consumer re-created around a reconnect)
            return
        last_seq = seq
        await queue.put((msg.subject, msg.data))

    async def _subscribe():
        name = f"follow-{uuid.uuid4().hex}"
        options: dict[str, Any] = {"deliver_policy": api.DeliverPolicy.ALL, "config": api.ConsumerConfig(name=name)}
        if last_seq:
            options = {
                "config": api.ConsumerConfig(
                    name=name, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last_seq + 1
                )
            }
        return await js.subscribe(
            experiment_events(outcome.experiment_id),
            stream=Stream.EVENTS.value,
            ordered_consumer=True,
            idle_heartbeat=2.0,
            # Named, so it is created on a subject that carries its name: the submitter may create
            # consumers on the events stream only that way (never one named like a service's durable).
            cb=_on_msg,
            **options,
        )

    sub = await _subscribe()
    reconnects = nc.stats.get("reconnects", 0)
    last_event = time.monotonic()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not outcome.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"experiment {outcome.experiment_id} did not finish within {timeout:.0f}s")
            try:
                subject, data = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                if alive is not None:
                    alive()
                if on_change is not None:
                    on_change(outcome)  # keeps the elapsed time ticking
                silent = time.monotonic() - last_event > RESUBSCRIBE_AFTER_SILENCE_S
                if nc.is_connected and (nc.stats.get("reconnects", 0) != reconnects or silent):
                    # The server restarted (or we moved to another node): its ephemeral consumer
                    # may be gone with it. Or, in a cluster, the node hosting the consumer died while
                    # our connection to another node stayed up: no reconnect to notice, the events
                    # just stop. Follow again from the event after the last one seen (duplicates
                    # are skipped by sequence, so a needless re-subscription costs nothing).
                    reconnects = nc.stats.get("reconnects", 0)
                    last_event = time.monotonic()
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    try:
                        sub = await _subscribe()
                    except Exception:  # JetStream not back yet: retried on the next quiet second
                        reconnects = -1
                continue
            last_event = time.monotonic()
            if apply_event(outcome, subject, data) and on_change is not None:
                on_change(outcome)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return outcome

"""The Python client of a running platform: the contracts the CLI (and a console) use.

Everything goes over the bus with the caller's certificate identity, so the permission map
decides what a client may do (a ``submitter`` may submit, follow, list and cancel; reading
release history needs the releases bucket).

Example (the test ``tests/client/test_api.py::test_the_documented_example_runs`` runs it)::

    from tweakline.client import TweaklineClient

    async with await TweaklineClient.connect(settings) as client:
        exp_id = await client.submit(tweak)
        async for event in client.events(exp_id):
            if isinstance(event, TrialCompleted) and event.number >= 1:
                await client.cancel(exp_id, reason="seen enough")
        summary = await client.experiment(exp_id)   # status cancelled
        for row in await client.experiments(status="running"):
            print(row.experiment_id, row.progress)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.js import api
from pydantic import BaseModel, Field

from tweakline.errors import BusError, TweaklineError
from tweakline.proto.messages import (
    CancelExperiment,
    DeploymentCompleted,
    EvaluationCompleted,
    ExperimentCancelled,
    ExperimentCompleted,
    ExperimentState,
    ExperimentStatus,
    ExperimentSubmitted,
    ReleaseHistory,
    RollbackCompleted,
    RollbackRequested,
    Source,
    TrialCompleted,
    is_state_key,
    msg_id,
)
from tweakline.proto.subjects import Bucket, Stream, Subject, experiment_events, release_subject, subject_for
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.records import ExperimentStore, RecordStore
from tweakline.runtime.settings import Settings

Event = (
    ExperimentSubmitted | TrialCompleted | ExperimentCompleted | ExperimentCancelled | EvaluationCompleted | DeploymentCompleted
)

_EVENTS: dict[str, type[BaseModel]] = {
    Subject.EXPERIMENT_SUBMITTED.value: ExperimentSubmitted,
    Subject.TRIAL_COMPLETED.value: TrialCompleted,
    Subject.EXPERIMENT_COMPLETED.value: ExperimentCompleted,
    Subject.EXPERIMENT_CANCELLED.value: ExperimentCancelled,
    Subject.EVALUATION_COMPLETED.value: EvaluationCompleted,
    Subject.DEPLOYMENT_COMPLETED.value: DeploymentCompleted,
}


class UnknownExperimentError(TweaklineError):
    """No experiment with that id is recorded."""


class RollbackRefusedError(TweaklineError):
    """The deployer did not roll back (no such revision, a newer revision went live, the target failed)."""


class ExperimentSummary(BaseModel):
    """One row of ``tweakline experiments``: what a person needs to decide whether to act."""

    experiment_id: str
    name: str
    status: ExperimentStatus
    trials_done: int = Field(description="Trials with a recorded result.")
    trials_max: int = Field(description="budget.max_trials.")
    running: int = Field(description="Trials issued and not yet finished.")
    best_score: float | None = None
    metric: str
    repository: str | None = None
    branch: str | None = None
    commit: str | None = None
    author: str | None = None
    trigger: str = "cli"
    started_at: datetime
    finished_at: datetime | None = None
    age_s: float
    message: str | None = None
    superseded_by: str | None = None

    @property
    def progress(self) -> str:
        """``done/max`` trials."""
        return f"{self.trials_done}/{self.trials_max}"


def summarize(state: ExperimentState, now: datetime | None = None) -> ExperimentSummary:
    """The list row of one experiment's recorded state (as stored, or whole)."""
    spec = state.tweak.spec
    now = now or datetime.now(UTC)
    return ExperimentSummary(
        experiment_id=state.experiment_id,
        name=state.tweak.metadata.name,
        status=state.status,
        trials_done=state.trials_recorded,
        trials_max=spec.budget.max_trials,
        running=len(set(state.issued) - set(state.results)) if state.status is ExperimentStatus.RUNNING else 0,
        best_score=state.best_score(),
        metric=spec.objective.metric,
        repository=state.source.repository,
        branch=state.source.branch,
        commit=state.source.commit,
        author=state.source.author,
        trigger=state.source.trigger,
        started_at=state.started_at,
        finished_at=state.finished_at,
        age_s=(now - state.started_at).total_seconds(),
        message=state.message,
        superseded_by=state.superseded_by,
    )


def decode_event(subject: str, data: bytes) -> Event | None:
    """The typed event stored under ``subject`` (``None`` for families a client does not follow)."""
    model = _EVENTS.get(subject.rsplit(".", 1)[0])
    return None if model is None else model.model_validate_json(data)  # type: ignore[return-value]


def decode_events(subject: str, data: bytes) -> list[Event]:
    """The events stored under ``subject``, one per trial for a batch of results (empty if not followed)."""
    event = decode_event(subject, data)
    if event is None:
        return []
    return list(event.results()) if isinstance(event, TrialCompleted) else [event]


def is_final(event: Event) -> bool:
    """Whether nothing more follows ``event`` for its experiment."""
    if isinstance(event, ExperimentCancelled | DeploymentCompleted):
        return True
    if isinstance(event, EvaluationCompleted):
        return event.deploy is None or event.decision.value != "promote"
    return False


class TweaklineClient:
    """A connection to a platform, with the operations of ``tweakline submit/experiments/cancel/history``."""

    def __init__(self, nc: Client, identity: str = ""):
        self.nc = nc
        self.js = nc.jetstream()
        self.identity = identity

    @classmethod
    async def connect(cls, settings: Settings, name: str = "tweakline-client") -> TweaklineClient:
        """Connect with ``settings``' certificate identity (``TWEAKLINE_NATS_URL``, ``TWEAKLINE_TLS_DIR``)."""
        from tweakline.runtime.bus import connect

        return cls(await connect(settings, name, max_reconnect_attempts=3), identity=str(settings.identity))

    async def close(self) -> None:
        """Close the connection."""
        await self.nc.close()

    async def __aenter__(self) -> TweaklineClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # -- acting -------------------------------------------------------------------------------

    async def submit(self, tweak: TweakFile, source: Source | None = None, experiment_id: str | None = None) -> str:
        """Submit an experiment (its ``csv:`` data must already be uploaded); returns its id."""
        from tweakline.client.follow import submit

        return await submit(self.nc, tweak, source or Source(trigger="cli"), experiment_id)

    async def cancel(self, experiment_id: str, reason: str = "", user: str | None = None) -> None:
        """Ask the scheduler to stop ``experiment_id`` (no evaluation, no deployment follow).

        Idempotent; the outcome arrives as an :class:`ExperimentCancelled` event.
        """
        by = self.identity + (f" ({user})" if user else "")
        command = CancelExperiment(experiment_id=experiment_id, reason=reason, requested_by=by)
        try:
            await self.js.publish(
                subject_for(Subject.EXPERIMENT_CANCEL, experiment_id),
                command.model_dump_json().encode(),
                headers={"Nats-Msg-Id": msg_id("cancel", experiment_id)},
                stream=Stream.EVENTS.value,
                timeout=10,
            )
        except Exception as exc:
            raise BusError(f"could not send the cancel of {experiment_id}: {exc}") from exc

    # -- reading ------------------------------------------------------------------------------

    async def _experiments_store(self) -> ExperimentStore:
        try:
            return await ExperimentStore.open_bucket(self.js)
        except Exception as exc:
            raise BusError(f"cannot read the experiments bucket: {exc}") from exc

    async def experiment(self, experiment_id: str) -> ExperimentSummary:
        """One experiment's summary; :class:`UnknownExperimentError` if there is none."""
        store = await self._experiments_store()
        found = await store.get_stored(experiment_id)  # a summary: no segment read
        if found is None:
            raise UnknownExperimentError(f"no experiment with id {experiment_id!r} (see `tweakline experiments`)")
        return summarize(found[0])

    async def state(self, experiment_id: str) -> ExperimentState:
        """The full recorded state (issued parameters, every result) of one experiment."""
        store = await self._experiments_store()
        found = await store.get(experiment_id)
        if found is None:
            raise UnknownExperimentError(f"no experiment with id {experiment_id!r} (see `tweakline experiments`)")
        return found[0]

    async def experiments(
        self,
        *,
        status: str | None = None,
        repository: str | None = None,
        branch: str | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> list[ExperimentSummary]:
        """Experiments, newest first, filtered by status, repository, branch and experiment name."""
        if status is not None and status not in {s.value for s in ExperimentStatus}:
            raise TweaklineError(
                f"status: {status!r} is not a status; expected one of {', '.join(s.value for s in ExperimentStatus)}"
            )
        store = await self._experiments_store()
        now = datetime.now(UTC)
        rows: list[ExperimentSummary] = []
        for key in await store.keys():
            found = await store.get_stored(key)
            if found is None:
                continue
            row = summarize(found[0], now)
            if status and row.status.value != status:
                continue
            if repository and row.repository != repository:
                continue
            if branch and row.branch != branch:
                continue
            if name and row.name != name:
                continue
            rows.append(row)
        rows.sort(key=lambda r: r.started_at, reverse=True)
        return rows[:limit] if limit else rows

    async def events(
        self, experiment_id: str, *, until_final: bool = True, idle_timeout: float | None = None
    ) -> AsyncIterator[Event]:
        """The experiment's stored events from the first, then live, as typed messages.

        Stops after the last event (cancelled, or the decision and its deployment) unless
        ``until_final`` is false; ``idle_timeout`` raises :class:`TimeoutError` when nothing arrives for that long.
        """
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        async def _on_msg(msg: Any) -> None:
            await queue.put((msg.subject, msg.data))

        sub = await self.js.subscribe(
            experiment_events(experiment_id),
            stream=Stream.EVENTS.value,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.ALL,
            # Named: clients may create consumers on the events stream only with the name in the
            # subject, never one named like a service's durable (docs/security.md).
            config=api.ConsumerConfig(name=f"client-{uuid.uuid4().hex}"),
            cb=_on_msg,
        )
        try:
            while True:
                subject, data = await asyncio.wait_for(queue.get(), idle_timeout)
                for event in decode_events(subject, data):
                    yield event
                    if until_final and is_final(event):
                        return
        finally:
            await sub.unsubscribe()

    async def history(self, release: str) -> ReleaseHistory:
        """A release's revisions and every step with its reason (``tweakline history``)."""
        try:
            store = await RecordStore.open(self.js, Bucket.RELEASES.value, ReleaseHistory)
        except Exception as exc:
            raise BusError(f"cannot read the releases bucket: {exc}") from exc
        found = await store.get(release)
        if found is None:
            raise TweaklineError(
                f"release: no release named {release!r}; known: {', '.join(sorted(await store.keys())) or 'none'}"
            )
        return found[0]

    async def releases(self) -> list[ReleaseHistory]:
        """Every release's history, by name."""
        try:
            store = await RecordStore.open(self.js, Bucket.RELEASES.value, ReleaseHistory)
        except Exception as exc:
            raise BusError(f"cannot read the releases bucket: {exc}") from exc
        found = [await store.get(key) for key in sorted(await store.keys())]
        return [record for record, _rev in filter(None, found)]

    async def watch_experiments(self) -> AsyncIterator[ExperimentSummary | None]:
        """Every experiment's summary as its recorded state changes: the current ones first, then
        ``None`` (everything recorded so far has been sent), then each change as it is written.

        Pushed by the server (a KV watch): nothing is re-read, however many experiments there are.
        """
        try:
            kv = await self.js.key_value(Bucket.EXPERIMENTS.value)
            watcher = await kv.watch("*", ignore_deletes=True)  # states only: a segment's key has more tokens
        except Exception as exc:
            raise BusError(f"cannot watch the experiments bucket: {exc}") from exc
        try:
            async for entry in watcher:
                if entry is None:
                    yield None
                    continue
                if entry.value and is_state_key(entry.key):  # not a results segment
                    yield summarize(ExperimentState.model_validate_json(entry.value))
        finally:
            await watcher.stop()

    async def rollback(
        self,
        release: str,
        *,
        to: int | None = None,
        expect_current: int | None = None,
        reason: str = "",
        user: str | None = None,
        timeout: float = 60.0,
    ) -> RollbackCompleted:
        """Ask the deployer to make revision ``to`` (default: the one live before) of ``release`` live again.

        ``expect_current``: refuse unless that revision is still live (what the operator confirmed).
        Returns the deployer's answer; :class:`RollbackRefusedError` with its reason when it did
        not roll back, :class:`BusError` when no answer came within ``timeout`` seconds.
        """
        request_id = uuid.uuid4().hex
        request = RollbackRequested(
            release=release,
            to=to,
            expect_current=expect_current,
            reason=reason[:500],
            requested_by=(self.identity + (f" ({user})" if user else ""))[:200],
            request_id=request_id,
        )
        answers: asyncio.Queue[bytes] = asyncio.Queue()

        async def _on_msg(msg: Any) -> None:
            await answers.put(msg.data)

        # Listen before asking, so the answer cannot slip past.
        sub = await self.js.subscribe(
            release_subject(Subject.RELEASE_ROLLED_BACK, release),
            stream=Stream.EVENTS.value,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            config=api.ConsumerConfig(name=f"client-{uuid.uuid4().hex}"),
            cb=_on_msg,
        )
        try:
            try:
                await self.js.publish(
                    release_subject(Subject.RELEASE_ROLLBACK, release),
                    request.model_dump_json().encode(),
                    headers={"Nats-Msg-Id": msg_id("rollback", request_id)},
                    stream=Stream.EVENTS.value,
                    timeout=10,
                )
            except Exception as exc:
                raise BusError(f"could not send the rollback of {release}: {exc}") from exc
            async with asyncio.timeout(timeout):
                while True:
                    answer = RollbackCompleted.model_validate_json(await answers.get())
                    if answer.request_id == request_id:
                        break
        except TimeoutError:
            raise BusError(f"no answer to the rollback of {release} within {timeout:g}s: is the deployer running?") from None
        finally:
            await sub.unsubscribe()
        if not answer.ok:
            raise RollbackRefusedError(answer.message)
        return answer

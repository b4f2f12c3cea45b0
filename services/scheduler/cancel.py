"""Stopping an experiment early: ``tweakline cancel`` and supersede by a newer push.

A cancelled experiment stops issuing trials, its queued trials are skipped by the runners,
its running ones are told to stop on their runners (``trials.control`` with ``cancel``), and it
ends with an ``ExperimentCancelled`` event instead of ``ExperimentCompleted``, so the evaluator
never sees it: no evaluation and no deployment follow. Its state keeps the status
(``cancelled`` or ``superseded``), who asked and why.

Supersede: a newer submission of the same repository, experiment name and branch cancels the
older one still running (status ``superseded``), by default only for CI pushes (the webhook's
and a pipeline's submissions), as a second push makes the first one's answer moot.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tweakline.proto.messages import (
    ExperimentCancelled,
    ExperimentState,
    ExperimentStatus,
    Source,
    TrialControl,
    TrialControlAction,
    msg_id,
    trial_id,
)
from tweakline.proto.subjects import Stream, Subject, subject_for

if TYPE_CHECKING:
    from tweakline.scheduler.handlers import Scheduler

log = logging.getLogger(__name__)

# Submissions from CI pushes; ``cli`` (a person at a terminal) is not superseded by default.
PUSH_TRIGGERS = frozenset({"webhook", "pipeline"})


def supersede_key(state: ExperimentState) -> tuple[str, str, str] | None:
    """What makes two submissions "the same lineage and branch"; ``None`` when there is no branch."""
    source = state.source
    if not source.branch:
        return None
    return (source.repository or "local", state.tweak.metadata.name, source.branch)


def supersedes(policy: str, source: Source) -> bool:
    """Whether a submission from ``source`` cancels its older running siblings under ``policy``."""
    if policy == "always":
        return True
    if policy == "pushes":
        return source.trigger in PUSH_TRIGGERS
    return False


def older_siblings(newer: ExperimentState, running: list[ExperimentState]) -> list[str]:
    """Ids of the running experiments ``newer`` supersedes (same key, submitted before it)."""
    key = supersede_key(newer)
    if key is None:
        return []
    # Submission time, not intake time: a batch of submissions may be taken in any order.
    when = newer.submitted_at or newer.started_at
    return [
        state.experiment_id
        for state in running
        if state.experiment_id != newer.experiment_id
        and state.status is ExperimentStatus.RUNNING
        and supersede_key(state) == key
        and (state.submitted_at or state.started_at) <= when
    ]


async def stop(
    scheduler: Scheduler,
    exp_id: str,
    *,
    status: ExperimentStatus,
    reason: str,
    requested_by: str = "",
    superseded_by: str | None = None,
    again: bool = False,
) -> ExperimentCancelled | None:
    """Stop a running experiment (the caller holds its lock). ``None`` if it was not running.

    The state is saved before the event goes out, so whoever reacts to the event reads the
    stopped state. ``again`` (a redelivered command): an experiment an earlier delivery already
    stopped with ``status`` is announced again, in case that delivery failed to publish the event
    (de-duplicated by its id).
    """
    run = await scheduler._run(exp_id)
    if run is None or run.state.status is not ExperimentStatus.RUNNING:
        scheduler.runs.pop(exp_id, None)  # _run may have cached a finished one
        if run is None or not again or run.state.status is not status:
            return None
        event = ExperimentCancelled(
            experiment_id=exp_id,
            status=status,
            reason=reason,
            requested_by=requested_by,
            superseded_by=run.state.superseded_by,
            trials_done=len(run.state.results),
        )
        await _announce(scheduler, run.state, event)
        return event
    stopped = sorted(run.in_flight())
    state = run.state
    state.status = status
    state.finished_at = datetime.now(UTC)
    state.superseded_by = superseded_by
    who = f" by {requested_by}" if requested_by else ""
    state.message = f"{status.value}{who}" + (f": {reason}" if reason else "")
    ctx = scheduler.ctx
    # Every issued trial is told to stop: a running one stops at once (before its next fold, or
    # killed after the runner's cancel grace); a queued one is skipped by the runner that picks it
    # up. No purge: the scheduler may not purge streams (least privilege, docs/security.md).
    for number in stopped:
        await ctx.broker.publish(
            TrialControl(
                experiment_id=exp_id,
                trial_id=trial_id(exp_id, number),
                action=TrialControlAction.CANCEL,
                reason=state.message,
            ),
            subject_for(Subject.TRIAL_CONTROL, exp_id),
        )
    event = ExperimentCancelled(
        experiment_id=exp_id,
        status=status,
        reason=reason,
        requested_by=requested_by,
        superseded_by=superseded_by,
        stopped_trials=stopped,
        trials_done=len(state.results),
    )
    await scheduler._remember(run)  # its finished trials still warm-start the next push
    await scheduler._save(exp_id)
    scheduler.runs.pop(exp_id, None)
    await _announce(scheduler, state, event)
    log.info("experiment %s %s (%d trials stopped)", exp_id, state.message, len(stopped))
    return event


async def _announce(scheduler: Scheduler, state: ExperimentState, event: ExperimentCancelled) -> None:
    await scheduler.ctx.publish(
        event,
        subject_for(Subject.EXPERIMENT_CANCELLED, state.experiment_id),
        msg_id=msg_id("experiment-cancelled", state.experiment_id),
        stream=Stream.EVENTS,
        trace_parent=state.traceparent,
    )

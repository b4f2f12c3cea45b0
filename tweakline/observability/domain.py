"""What tweakline's own messages and results mean for telemetry: per-domain span attributes and counters.

The rest of the package knows nothing of trials, decisions or deployments; this module maps them
onto spans (a trial's folds and rungs as events, an evaluation's decision) and onto the
instruments of :mod:`tweakline.observability.instruments`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from opentelemetry.trace import Span

from tweakline.observability.attributes import TRIAL_NUMBER
from tweakline.observability.instruments import (
    DECISIONS,
    DEPLOYMENTS,
    EXPERIMENTS,
    PROMOTIONS,
    REJECTIONS,
    ROLLBACKS,
    TRIAL_DURATION,
    TRIALS,
)
from tweakline.observability.tracing import mark_error, span

F = TypeVar("F", bound=Callable[..., Any])


def traced(name: str) -> Callable[[F], F]:
    """Run the decorated function (sync or async) inside span ``name``, with the handled message's ids.

    What the function returns goes on the span: an evaluation's ``decision``, a trial outcome's
    folds (as events), pruning, score and status.
    """

    def _annotate(current_span: Span, result: Any) -> None:
        decision = getattr(result, "decision", None)
        if decision is not None:
            current_span.set_attribute("tweakline.decision", str(getattr(decision, "value", decision)))
        if hasattr(result, "fold_scores"):
            trial_outcome(current_span, result)

    def decorate(func: F) -> F:
        if asyncio.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with span(name) as current_span:
                    result = await func(*args, **kwargs)
                    _annotate(current_span, result)
                    return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with span(name) as current_span:
                result = func(*args, **kwargs)
                _annotate(current_span, result)
                return result

        return wrapper  # type: ignore[return-value]

    return decorate


# Names of the spans that hang a publish under the experiment (see ServiceContext.publish).
_PUBLISH_SPANS = {"TrialRequested": "trial.dispatch", "ExperimentCompleted": "experiment.complete"}


def publish_span(message: Any, trace_parent: str | None) -> contextlib.AbstractContextManager[Any]:
    """A span for publishing ``message`` under ``trace_parent``; nothing without a parent."""
    if trace_parent is None:
        return contextlib.nullcontext()
    number = getattr(message, "number", None)
    return span(
        _PUBLISH_SPANS.get(type(message).__name__, f"{type(message).__name__}.publish"),
        parent=trace_parent,
        experiment_id=getattr(message, "experiment_id", None),
        trial_id=getattr(message, "trial_id", None),
        attributes={TRIAL_NUMBER: number} if isinstance(number, int) else None,
    )


def trial_outcome(current_span: Span, outcome: Any) -> None:
    """Put a trial's folds and rungs (as events), pruning decision, score and status on its run span."""
    for index, value in enumerate(getattr(outcome, "fold_scores", None) or []):
        current_span.add_event("fold", {"tweakline.fold": index, "tweakline.fold.score": float(value)})
    rungs = getattr(outcome, "rung_scores", None) or []
    for index, value in enumerate(rungs):
        current_span.add_event("rung", {"tweakline.rung": index, "tweakline.rung.score": float(value)})
    status = str(getattr(outcome, "status", ""))
    current_span.set_attribute("tweakline.trial.status", status)
    if status == "pruned":
        where = (
            {"tweakline.rung": len(rungs) - 1}
            if rungs
            else {"tweakline.fold": len(getattr(outcome, "fold_scores", None) or []) - 1}
        )
        current_span.add_event("pruned", where)
    score = getattr(outcome, "score", None)
    if score is not None:
        current_span.set_attribute("tweakline.trial.score", float(score))
    if status == "failed":
        mark_error(current_span, str(getattr(outcome, "error", "") or "trial failed"))


def observe_published(message: Any) -> None:
    """Count the lifecycle events a service publishes (one place for trial, decision, deployment metrics)."""
    from tweakline.proto.messages import (
        Decision,
        DeploymentCompleted,
        DeploymentStatus,
        EvaluationCompleted,
        ExperimentCancelled,
        ExperimentCompleted,
        TrialCompleted,
    )

    if isinstance(message, TrialCompleted):
        for result in (message, *message.batch):  # a batch's results are counted one by one (no copies)
            attrs = {"status": result.status.value}
            TRIALS.add(1, attrs)
            TRIAL_DURATION.record(result.duration_s, attrs)
    elif isinstance(message, ExperimentCompleted | ExperimentCancelled):
        EXPERIMENTS.add(1, {"status": message.status.value})
    elif isinstance(message, EvaluationCompleted):
        DECISIONS.add(1, {"decision": message.decision.value})
        if message.decision is Decision.PROMOTE:
            PROMOTIONS.add(1)
        elif message.decision is Decision.REJECT:
            REJECTIONS.add(1)
    elif isinstance(message, DeploymentCompleted):
        DEPLOYMENTS.add(1, {"status": message.status.value})
        if message.status is DeploymentStatus.ROLLED_BACK:
            ROLLBACKS.add(1)

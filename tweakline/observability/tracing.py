"""Traces: tweakline's own spans, and the W3C trace context carried between processes.

One experiment is one trace. FastStream's telemetry middleware (:mod:`tweakline.observability.messaging`)
carries ``traceparent`` in NATS headers for handled messages; the explicit spans (experiment, trial
dispatch, trial run, evaluation, deployment) come from :func:`span`, and a ``traceparent`` kept in
a record hangs later work under the experiment's span (:func:`context_of`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

import tweakline
from tweakline.observability.attributes import EXPERIMENT_ID, INSTRUMENTATION, RELEASE, TRIAL_ID, handled_ids, log_ids

# (global provider, its tracer): get_tracer builds a new tracer and scope on every call, which
# was a third of a batch's per-trial span in the runner's profile (docs/benchmarks.md).
_tracer: tuple[object, trace.Tracer] | None = None
# A provider this process set up without any span exporter: its spans go nowhere.
_unexported: object | None = None


def exports_nothing(provider: object) -> None:
    """Note that ``provider`` (this process's, from its settings) has no span exporter.

    :func:`past_span` then makes no span under it: such a span is never current, never carried
    in a message, and nobody would receive it (a batch's ``trial.run`` span cost about 24 us per
    trial, a fortieth of a trivial trial's CPU; docs/benchmarks.md).
    """
    global _unexported
    _unexported = provider


def tracer() -> trace.Tracer:
    """The tracer for tweakline's own spans (made once per global tracer provider)."""
    global _tracer
    provider = trace.get_tracer_provider()
    cached = _tracer
    if cached is not None and cached[0] is provider:
        return cached[1]
    made = trace.get_tracer(INSTRUMENTATION, tweakline.__version__)
    if not isinstance(made, trace.ProxyTracer):  # a proxy follows a provider set later: not worth keeping
        _tracer = (provider, made)
    return made


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, or ``None`` outside any span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> otel_context.Context | None:
    """A context whose parent is the span named by ``traceparent`` (``None`` if there is none)."""
    if not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})


def trace_id_of(traceparent: str | None) -> str | None:
    """The 32-hex trace id inside a ``traceparent``."""
    if not traceparent:
        return None
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context to outgoing NATS headers (for publishers outside FastStream)."""
    propagate.inject(headers)
    return headers


def _attributes(
    experiment_id: str | None, trial_id: str | None, release: str | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    if experiment_id:
        attrs[EXPERIMENT_ID] = experiment_id
    if trial_id:
        attrs[TRIAL_ID] = trial_id
    if release:
        attrs[RELEASE] = release
    attrs.update({k: v for k, v in (extra or {}).items() if v is not None})
    return attrs


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    experiment_id: str | None = None,
    trial_id: str | None = None,
    release: str | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict[str, Any] | None = None,
) -> Iterator[Span]:
    """A span of tweakline's own, current inside the block.

    ``parent`` (a ``traceparent``) hangs it under the experiment's span when the caller runs
    outside the experiment's context, e.g. the scheduler dispatching a trial after another
    trial's result, or its deadline ticker. An exception marks the span as an error.
    """
    ctx = context_of(parent)
    handled = handled_ids.get()  # ids of the message being handled, when the caller names none
    experiment_id = experiment_id or handled.get("experiment_id")
    trial_id = trial_id or (handled.get("trial_id") if experiment_id == handled.get("experiment_id") else None)
    release = release or handled.get("release")
    with tracer().start_as_current_span(
        name, context=ctx, kind=kind, attributes=_attributes(experiment_id, trial_id, release, attributes)
    ) as current_span:
        token = handled_ids.set({**handled, **log_ids(experiment_id, trial_id)})
        try:
            yield current_span
        finally:
            handled_ids.reset(token)


def past_span(
    name: str,
    *,
    started_ns: int,
    experiment_id: str | None = None,
    trial_id: str | None = None,
    attributes: dict[str, Any] | None = None,
) -> Span:
    """A span of work that already began at ``started_ns`` (``time.time_ns``), under the current span.

    For work timed elsewhere (a batch's trial, trained in the runner's child): the caller ends it
    with ``span.end(end_time=...)``. It is not made current. Without a span exporter it is the
    invalid span, on which recording does nothing (see :func:`exports_nothing`).
    """
    if _unexported is not None and trace.get_tracer_provider() is _unexported:
        return trace.INVALID_SPAN
    return tracer().start_span(name, start_time=started_ns, attributes=_attributes(experiment_id, trial_id, None, attributes))


def mark_error(current_span: Span, message: str) -> None:
    """Record a failure on a span without an exception (e.g. a failed trial)."""
    current_span.set_status(Status(StatusCode.ERROR, message))

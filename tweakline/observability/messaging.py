"""The FastStream middlewares every broker gets: W3C trace context in NATS headers, then the
handled message's ids on its span and log lines, and the busy time it took."""

from __future__ import annotations

import time
from typing import Any

from faststream import BaseMiddleware
from opentelemetry import metrics, trace

from tweakline.observability.attributes import EXPERIMENT_ID, RELEASE, TRIAL_ID, handled_ids, ids_of
from tweakline.observability.instruments import utilisation


def destination_template(subject: str) -> str:
    """A subject with its experiment id replaced by ``{experiment}``: span names and metric labels stay few."""
    from tweakline.proto.subjects import Subject

    for family in Subject:
        if subject.startswith(family.value + "."):
            return f"{family.value}.{{{'service' if family is Subject.DEAD_LETTER else 'experiment'}}}"
    return subject


class _TemplatedDestinations:
    """FastStream's NATS settings provider, naming destinations by template (the full subject stays an attribute)."""

    def __init__(self, inner: Any):
        self._inner = inner
        self.messaging_system = inner.messaging_system

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_publish_destination_name(self, cmd: Any) -> str:
        return destination_template(self._inner.get_publish_destination_name(cmd))

    def get_consume_destination_name(self, msg: Any) -> str:
        return destination_template(self._inner.get_consume_destination_name(msg))


def _templated_provider_factory(msg: Any) -> Any:
    from faststream.nats.opentelemetry.provider import telemetry_attributes_provider_factory

    inner = telemetry_attributes_provider_factory(msg)
    return None if inner is None else _TemplatedDestinations(inner)


def broker_middlewares(tracer_provider: Any = None, meter_provider: Any = None) -> tuple[Any, ...]:
    """FastStream middlewares for every broker: W3C context in NATS headers, then our ids and busy time.

    The providers default to this process's (see :func:`setup_telemetry`); tests pass their own.
    """
    from faststream.opentelemetry import TelemetryMiddleware

    # NatsTelemetryMiddleware is this with FastStream's NATS provider factory (and message
    # counters on); the public base class takes the factory, so ours wraps the NATS one.
    # Span names are "<destination> <operation>": without the experiment id in them, traces group
    # by step and FastStream's messaging.*.duration histograms keep a bounded set of labels.
    tracing = TelemetryMiddleware(
        settings_provider_factory=_templated_provider_factory,
        tracer_provider=tracer_provider or trace.get_tracer_provider(),
        meter_provider=meter_provider or metrics.get_meter_provider(),
        include_messages_counters=True,
    )
    return (tracing, ExperimentContextMiddleware)


class ExperimentContextMiddleware(BaseMiddleware):
    """Puts the handled message's experiment / trial ids on its span and log lines; measures busy time."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        ids = ids_of(msg.body) if isinstance(msg.body, bytes | bytearray) else {}
        current_span = trace.get_current_span()
        if current_span.is_recording():
            for key, attr in (("experiment_id", EXPERIMENT_ID), ("trial_id", TRIAL_ID), ("release", RELEASE)):
                if key in ids:
                    current_span.set_attribute(attr, ids[key])
        token = handled_ids.set(ids)
        started = time.monotonic()
        try:
            return await call_next(msg)
        finally:
            utilisation.add(time.monotonic() - started)
            handled_ids.reset(token)

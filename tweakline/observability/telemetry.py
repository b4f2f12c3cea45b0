"""Logs, traces and metrics, set up the same way in every tweakline process: the front door.

The pieces live in modules by concept; services and the CLI import them from here:

* set-up and exporters (:mod:`~tweakline.observability.exporters`): :func:`setup_telemetry`,
  :func:`shutdown`, chosen by the standard ``OTEL_*`` variables;
* traces (:mod:`~tweakline.observability.tracing`): :func:`span`, the ``traceparent`` helpers;
* the brokers' middlewares (:mod:`~tweakline.observability.messaging`): :func:`broker_middlewares`;
* metrics (:mod:`~tweakline.observability.instruments`): the instruments and queue gauges;
* what tweakline's own messages mean for them (:mod:`~tweakline.observability.domain`):
  :func:`traced`, :func:`publish_span`, :func:`trial_outcome`, :func:`observe_published`;
* logs (:mod:`~tweakline.observability.logs`): :func:`setup_logging`;
* the attribute names and the handled message's ids (:mod:`~tweakline.observability.attributes`).
"""

from __future__ import annotations

from tweakline.observability.attributes import EXPERIMENT_ID, INSTRUMENTATION, RELEASE, TRIAL_ID, TRIAL_NUMBER
from tweakline.observability.domain import observe_published, publish_span, traced, trial_outcome
from tweakline.observability.exporters import Telemetry, current, setup_telemetry, shutdown
from tweakline.observability.instruments import (
    BUSY,
    DEAD_LETTERS,
    DECISIONS,
    DEPLOYMENTS,
    EXPERIMENTS,
    PROMOTIONS,
    REJECTIONS,
    ROLLBACKS,
    TRIAL_DURATION,
    TRIALS,
    observe_dead_letter,
    watch_queues,
)
from tweakline.observability.logs import JsonFormatter, TextFormatter, TraceContextFilter, setup_logging
from tweakline.observability.messaging import ExperimentContextMiddleware, broker_middlewares, destination_template
from tweakline.observability.tracing import (
    context_of,
    current_traceparent,
    inject_headers,
    mark_error,
    past_span,
    span,
    trace_id_of,
)

__all__ = [
    "BUSY",
    "DEAD_LETTERS",
    "DECISIONS",
    "DEPLOYMENTS",
    "EXPERIMENTS",
    "EXPERIMENT_ID",
    "INSTRUMENTATION",
    "PROMOTIONS",
    "REJECTIONS",
    "RELEASE",
    "ROLLBACKS",
    "TRIALS",
    "TRIAL_DURATION",
    "TRIAL_ID",
    "TRIAL_NUMBER",
    "ExperimentContextMiddleware",
    "JsonFormatter",
    "Telemetry",
    "TextFormatter",
    "TraceContextFilter",
    "broker_middlewares",
    "context_of",
    "current",
    "current_traceparent",
    "destination_template",
    "inject_headers",
    "mark_error",
    "observe_dead_letter",
    "observe_published",
    "past_span",
    "publish_span",
    "setup_logging",
    "setup_telemetry",
    "shutdown",
    "span",
    "trace_id_of",
    "traced",
    "trial_outcome",
    "watch_queues",
]

"""Logs, traces and metrics, set up the same way in every tweakline process.

* **Traces** (OpenTelemetry SDK): one experiment is one trace. FastStream's NATS telemetry
  middleware (added to every broker by :func:`broker_middlewares`) carries the W3C
  ``traceparent`` in message headers and opens a CONSUMER span per handled message; the few
  explicit spans (experiment, trial dispatch, trial run, evaluation, deployment) come from
  :func:`span`. Standard ``OTEL_*`` variables choose the exporter: ``OTEL_TRACES_EXPORTER``
  (``otlp``, ``console``, ``none``; default ``otlp`` when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is
  set, else nothing is exported), ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf`` or
  ``grpc``), ``OTEL_TRACES_SAMPLER``; ``TWEAKLINE_TRACE_CONSOLE=true`` adds the console exporter.
* **Metrics** (OpenTelemetry meters): exported over OTLP when configured, and on a Prometheus
  endpoint when ``TWEAKLINE_METRICS_PORT`` is not 0.
* **Logs**: one line per event on stderr, JSON with ``TWEAKLINE_LOG_JSON=true``, each carrying
  the trace and span ids and the experiment / trial ids of the message being handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from faststream import BaseMiddleware
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

import tweakline
from tweakline.errors import ConfigurationError
from tweakline.runtime.settings import Settings

log = logging.getLogger(__name__)

# Attribute names (OpenTelemetry's messaging conventions cover the bus; these are ours).
EXPERIMENT_ID = "tweakline.experiment.id"
TRIAL_ID = "tweakline.trial.id"
TRIAL_NUMBER = "tweakline.trial.number"
RELEASE = "tweakline.release"

INSTRUMENTATION = "tweakline"

F = TypeVar("F", bound=Callable[..., Any])

# The experiment and trial of the message being handled, for log lines.
_ids: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("tweakline_ids", default={})  # noqa: B039 - never mutated, only replaced


# -- set-up ---------------------------------------------------------------------------------------


@dataclass
class Telemetry:
    """This process's providers (kept so they can be flushed at exit)."""

    service: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    exporters: list[str] = field(default_factory=list)
    metrics_port: int | None = None

    def shutdown(self) -> None:
        """Flush and stop the exporters (spans still buffered are sent now)."""
        for provider in (self.tracer_provider, self.meter_provider):
            try:
                provider.shutdown()
            except Exception:  # exporting is best effort: never fail a service's exit on it
                log.debug("telemetry shutdown failed", exc_info=True)


_current: Telemetry | None = None


def _env_list(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    return [part.strip().lower() for part in raw.split(",") if part.strip()]


def _otlp_configured(signal: str) -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


def _protocol(signal: str) -> str:
    return (
        (
            os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "http/protobuf"
        )
        .strip()
        .lower()
    )


def _exporters(signal: str) -> list[str]:
    """Exporter names for ``TRACES`` or ``METRICS``, from ``OTEL_<signal>_EXPORTER`` or the endpoint."""
    chosen = _env_list(f"OTEL_{signal}_EXPORTER")
    if chosen is None:
        chosen = ["otlp"] if _otlp_configured(signal) else []
    unknown = set(chosen) - {"otlp", "console", "none"}
    if unknown:
        raise ConfigurationError(
            f"OTEL_{signal}_EXPORTER={','.join(sorted(unknown))} is not supported; expected otlp, console or none"
        )
    return [name for name in chosen if name != "none"]


def _otlp_span_exporter() -> Any:
    protocol = _protocol("TRACES")
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ConfigurationError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the package opentelemetry-exporter-otlp-proto-grpc; "
                "install it or use http/protobuf"
            ) from exc
        return OTLPSpanExporter()
    if protocol not in ("http/protobuf", "http"):
        raise ConfigurationError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported; expected http/protobuf or grpc")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter()


def _otlp_metric_exporter() -> Any:
    if _protocol("METRICS") == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        except ImportError as exc:
            raise ConfigurationError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the package opentelemetry-exporter-otlp-proto-grpc"
            ) from exc
        return OTLPMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter()


def setup_telemetry(service: str, settings: Settings) -> Telemetry:
    """Create this process's tracer and meter providers (once) and make them the global ones."""
    global _current
    if _current is not None:
        return _current
    # The service starts now (a process forked from a pre-imported parent imported this earlier).
    _utilisation.started = time.monotonic()
    resource = Resource.create(
        {
            "service.name": f"tweakline-{service}",
            "service.namespace": "tweakline",
            "service.version": tweakline.__version__,
            "service.instance.id": f"{os.uname().nodename}-{os.getpid()}",
        }
    )
    # The sampler comes from OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (parent-based always-on by default).
    tracer_provider = TracerProvider(resource=resource)
    span_exporters = _exporters("TRACES")
    if settings.trace_console and "console" not in span_exporters:
        span_exporters.append("console")
    for name in span_exporters:
        if name == "otlp":
            tracer_provider.add_span_processor(BatchSpanProcessor(_otlp_span_exporter()))
        else:
            tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))

    readers: list[MetricReader] = []
    metric_exporters = _exporters("METRICS")
    if "otlp" in metric_exporters:
        readers.append(PeriodicExportingMetricReader(_otlp_metric_exporter()))
    if "console" in metric_exporters:
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
    port = None
    if settings.metrics_port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        try:
            if settings.metrics_port != settings.health_port:  # else the service's probe server has /metrics
                start_http_server(settings.metrics_port, addr=settings.metrics_host)
        except OSError as exc:  # metrics must never take a service down: say so and run without them
            log.warning(
                "cannot serve metrics on %s:%s (TWEAKLINE_METRICS_PORT): %s; continuing without the endpoint",
                settings.metrics_host,
                settings.metrics_port,
                exc,
            )
        else:
            readers.append(PrometheusMetricReader())
            port = settings.metrics_port
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _current = Telemetry(service, tracer_provider, meter_provider, span_exporters + metric_exporters, port)
    return _current


def current() -> Telemetry | None:
    """The telemetry set up in this process, if any."""
    return _current


def shutdown() -> None:
    """Flush what is buffered (called when a service or the CLI exits)."""
    if _current is not None:
        _current.shutdown()


def tracer() -> trace.Tracer:
    """The tracer for tweakline's own spans."""
    return trace.get_tracer(INSTRUMENTATION, tweakline.__version__)


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


# -- traces ---------------------------------------------------------------------------------------


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
    handled = _ids.get()  # ids of the message being handled, when the caller names none
    experiment_id = experiment_id or handled.get("experiment_id")
    trial_id = trial_id or (handled.get("trial_id") if experiment_id == handled.get("experiment_id") else None)
    release = release or handled.get("release")
    with tracer().start_as_current_span(
        name, context=ctx, kind=kind, attributes=_attributes(experiment_id, trial_id, release, attributes)
    ) as current_span:
        token = _ids.set({**handled, **_log_ids(experiment_id, trial_id)})
        try:
            yield current_span
        finally:
            _ids.reset(token)


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


def _log_ids(experiment_id: str | None, trial_id: str | None) -> dict[str, str]:
    ids = {}
    if experiment_id:
        ids["experiment_id"] = experiment_id
    if trial_id:
        ids["trial_id"] = trial_id
    return ids


def mark_error(current_span: Span, message: str) -> None:
    """Record a failure on a span without an exception (e.g. a failed trial)."""
    current_span.set_status(Status(StatusCode.ERROR, message))


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


# -- metrics --------------------------------------------------------------------------------------

_meter = metrics.get_meter(INSTRUMENTATION, tweakline.__version__)
TRIALS = _meter.create_counter("tweakline.trials", unit="{trial}", description="Trials finished, by status.")
TRIAL_DURATION = _meter.create_histogram(
    "tweakline.trial.duration", unit="s", description="Wall-clock time of one trial (cross-validation), by status."
)
EXPERIMENTS = _meter.create_counter("tweakline.experiments", unit="{experiment}", description="Experiments closed, by status.")
DECISIONS = _meter.create_counter(
    "tweakline.decisions", unit="{decision}", description="Evaluator decisions: promote, reject, error."
)
PROMOTIONS = _meter.create_counter("tweakline.promotions", unit="{model}", description="Models the gate promoted.")
REJECTIONS = _meter.create_counter("tweakline.rejections", unit="{model}", description="Models the gate rejected.")
DEPLOYMENTS = _meter.create_counter(
    "tweakline.deployments", unit="{deployment}", description="Deployments by status: deployed, failed, rolled_back."
)
ROLLBACKS = _meter.create_counter("tweakline.rollbacks", unit="{deployment}", description="Releases rolled back.")
DEAD_LETTERS = _meter.create_counter(
    "tweakline.dead_letters", unit="{message}", description="Messages a service refused (sent to dead letters), by service."
)
BUSY = _meter.create_counter("tweakline.busy.time", unit="s", description="Time spent handling messages (busy time of a runner).")


class _Utilisation:
    """Busy time over available time since the process started (a runner's utilisation)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy = 0.0

    def add(self, seconds: float) -> None:
        self.busy += seconds
        BUSY.add(seconds)

    def observe(self, _options: Any) -> list[metrics.Observation]:
        if _current is None or _current.service != "trial-runner":
            return []  # only a runner's busy share means something (its one trial at a time)
        available = max(1e-9, time.monotonic() - self.started)
        return [metrics.Observation(min(1.0, self.busy / available))]


_utilisation = _Utilisation()
_meter.create_observable_gauge(
    "tweakline.runner.utilization",
    callbacks=[_utilisation.observe],
    unit="1",
    description="A trial-runner's busy time over its available time since it started (0..1).",
)

# consumer name -> (pending, in flight), refreshed by watch_queues()
_queues: dict[str, tuple[int, int]] = {}


def _observe_pending(_options: Any) -> list[metrics.Observation]:
    return [metrics.Observation(pending, {"consumer": name}) for name, (pending, _) in _queues.items()]


def _observe_in_flight(_options: Any) -> list[metrics.Observation]:
    return [metrics.Observation(acked, {"consumer": name}) for name, (_, acked) in _queues.items()]


_meter.create_observable_gauge(
    "tweakline.queue.depth",
    callbacks=[_observe_pending],
    unit="{message}",
    description="Messages waiting for a durable consumer (trial-runners: trials not yet started).",
)
_meter.create_observable_gauge(
    "tweakline.queue.in_flight",
    callbacks=[_observe_in_flight],
    unit="{message}",
    description="Messages delivered to a durable consumer and not yet acknowledged.",
)


async def watch_queues(js: Any, consumers: list[tuple[str, str]], interval: float = 5.0) -> None:
    """Poll the consumers this service reads ((stream, durable) pairs) for the queue gauges."""
    while True:
        for stream, durable in consumers:
            try:
                info = await js.consumer_info(stream, durable)
                _queues[durable] = (int(info.num_pending or 0), int(info.num_ack_pending or 0))
            except Exception:  # a lost connection: keep the last value, try again
                log.debug("consumer info of %s failed", durable, exc_info=True)
        await asyncio.sleep(interval)


def observe_dead_letter(service: str) -> None:
    """Count one refused message (the dead-letter alert watches this)."""
    DEAD_LETTERS.add(1, {"service": service})


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
        attrs = {"status": message.status.value}
        TRIALS.add(1, attrs)
        TRIAL_DURATION.record(message.duration_s, attrs)
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


# -- the consume middleware -----------------------------------------------------------------------


def _ids_of(body: bytes) -> dict[str, str]:
    """Experiment, trial and release ids of a message body (best effort: bad bodies are dead-lettered later)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    found = {}
    for key in ("experiment_id", "trial_id", "release"):
        value = data.get(key)
        if isinstance(value, str):
            found[key] = value
    return found


class ExperimentContextMiddleware(BaseMiddleware):
    """Puts the handled message's experiment / trial ids on its span and log lines; measures busy time."""

    async def consume_scope(self, call_next: Any, msg: Any) -> Any:
        ids = _ids_of(msg.body) if isinstance(msg.body, bytes | bytearray) else {}
        current_span = trace.get_current_span()
        if current_span.is_recording():
            for key, attr in (("experiment_id", EXPERIMENT_ID), ("trial_id", TRIAL_ID), ("release", RELEASE)):
                if key in ids:
                    current_span.set_attribute(attr, ids[key])
        token = _ids.set(ids)
        started = time.monotonic()
        try:
            return await call_next(msg)
        finally:
            _utilisation.add(time.monotonic() - started)
            _ids.reset(token)


# -- logs -----------------------------------------------------------------------------------------


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``, ``span_id``, ``experiment_id`` and ``trial_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        else:
            record.trace_id = record.span_id = None
        ids = _ids.get()
        record.experiment_id = ids.get("experiment_id")
        record.trial_id = ids.get("trial_id")
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log collectors."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("trace_id", "span_id", "experiment_id", "trial_id"):
            value = getattr(record, key, None)
            if value:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data)


class TextFormatter(logging.Formatter):
    """Plain lines for people, with the ids appended when there are any."""

    def __init__(self, service: str):
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            f"{key}={getattr(record, key)}" for key in ("experiment_id", "trial_id", "trace_id") if getattr(record, key, None)
        ]
        return f"{line} [{' '.join(extras)}]" if extras else line


def setup_logging(service: str, settings: Settings) -> None:
    """Structured logs on stderr: plain text by default, JSON with ``TWEAKLINE_LOG_JSON=true``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    formatter: logging.Formatter = JsonFormatter(service) if settings.log_json else TextFormatter(service)
    formatter.converter = time.gmtime  # UTC, as the JSON 'Z' says
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for noisy in ("faststream", "nats", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

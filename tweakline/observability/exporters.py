"""Set-up: this process's tracer and meter providers and their exporters, chosen as OpenTelemetry says.

Standard ``OTEL_*`` variables choose the exporters: ``OTEL_TRACES_EXPORTER`` /
``OTEL_METRICS_EXPORTER`` (``otlp``, ``console``, ``none``; default ``otlp`` when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else nothing is exported), ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``http/protobuf`` or ``grpc``), ``OTEL_TRACES_SAMPLER``; ``TWEAKLINE_TRACE_CONSOLE=true`` adds the
console span exporter, and ``TWEAKLINE_METRICS_PORT`` (not 0) a Prometheus endpoint.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

import tweakline
from tweakline.errors import ConfigurationError
from tweakline.observability import tracing
from tweakline.observability.instruments import utilisation
from tweakline.runtime.settings import Settings

log = logging.getLogger(__name__)


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
    utilisation.started = time.monotonic()
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

    if not span_exporters:
        tracing.exports_nothing(tracer_provider)

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

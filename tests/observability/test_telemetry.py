"""Telemetry set-up: exporter choice from OTEL_* variables, ids on spans and log lines, Prometheus metrics.

The Grafana dashboard shipped in the chart is checked against the metric names a real
Prometheus scrape of tweakline's meters returns.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from faststream.nats import NatsBroker, TestNatsBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tweakline.errors import ConfigurationError
from tweakline.observability import exporters, telemetry
from tweakline.proto.permissions import Identity

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "helm" / "tweakline" / "files" / "grafana-dashboard.json"
ALERT_RULES = REPO / "helm" / "tweakline" / "files" / "alert-rules.yaml"


# -- exporters from the environment ---------------------------------------------------------------


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_nothing_is_exported_unless_asked(clean_otel_env: pytest.MonkeyPatch) -> None:
    assert exporters._exporters("TRACES") == [] and exporters._exporters("METRICS") == []


def test_an_otlp_endpoint_turns_otlp_on(clean_otel_env: pytest.MonkeyPatch) -> None:
    clean_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert exporters._exporters("TRACES") == ["otlp"]
    clean_otel_env.setenv("OTEL_TRACES_EXPORTER", "console,none")
    assert exporters._exporters("TRACES") == ["console"]


def test_unknown_exporter_and_missing_grpc_are_clear_errors(clean_otel_env: pytest.MonkeyPatch) -> None:
    clean_otel_env.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER=zipkin.*expected otlp, console or none"):
        exporters._exporters("TRACES")
    clean_otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon")
    with pytest.raises(ConfigurationError, match="carrier-pigeon"):
        exporters._otlp_span_exporter()


def test_traceparent_helpers() -> None:
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert telemetry.trace_id_of(tp) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert telemetry.trace_id_of(None) is None and telemetry.trace_id_of("garbage") is None
    assert trace.get_current_span(telemetry.context_of(tp)).get_span_context().span_id == 0x00F067AA0BA902B7


# -- ids on spans and logs, through FastStream's middleware ----------------------------------------


def test_a_trial_span_carries_its_folds_or_its_rungs_and_where_it_was_pruned() -> None:
    from tweakline.ml.outcome import TrialOutcome
    from tweakline.proto.messages import TrialStatus

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    outcomes = {
        "folds": TrialOutcome(status=TrialStatus.PRUNED, score=0.6, fold_scores=[0.6, 0.6]),
        "rungs": TrialOutcome(status=TrialStatus.PRUNED, score=0.7, fold_scores=[0.7] * 3, rung_scores=[0.5, 0.7]),
    }
    for name, outcome in outcomes.items():
        with tracer.start_as_current_span(name) as current:
            telemetry.trial_outcome(current, outcome)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    events = {name: [(e.name, dict(e.attributes)) for e in span.events] for name, span in spans.items()}
    assert ("pruned", {"tweakline.fold": 1}) in events["folds"]
    assert [a["tweakline.rung.score"] for n, a in events["rungs"] if n == "rung"] == [0.5, 0.7]
    assert ("pruned", {"tweakline.rung": 1}) in events["rungs"]  # stopped after its second rung
    assert spans["rungs"].attributes["tweakline.trial.status"] == "pruned"


async def test_handled_message_carries_ids_on_its_span_and_log_lines() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    broker = NatsBroker(middlewares=telemetry.broker_middlewares(tracer_provider=provider))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(telemetry.TraceContextFilter())
    handler.setFormatter(telemetry.JsonFormatter("trial-runner"))
    logger = logging.getLogger("tests.telemetry.handler")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    @broker.subscriber("tweakline.trials.requested.exp-1")
    async def handle(body: dict) -> None:
        logger.info("trial %s started", body["trial_id"])

    tracer = provider.get_tracer("test")
    try:
        async with TestNatsBroker(broker) as br:
            with tracer.start_as_current_span("experiment") as root:
                await br.publish(
                    {"experiment_id": "exp-1", "trial_id": "exp-1.0", "number": 0}, "tweakline.trials.requested.exp-1"
                )
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().splitlines()[0])
    process = next(s for s in exporter.get_finished_spans() if s.name.endswith(" process"))
    assert line["message"] == "trial exp-1.0 started"
    assert line["experiment_id"] == "exp-1" and line["trial_id"] == "exp-1.0"
    assert line["trace_id"] == format(root.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(process.context.span_id, "016x")
    assert process.attributes[telemetry.EXPERIMENT_ID] == "exp-1"
    assert process.attributes[telemetry.TRIAL_ID] == "exp-1.0"
    assert process.context.trace_id == root.get_span_context().trace_id  # W3C context crossed the bus
    assert process.name == "tweakline.trials.requested.{experiment} process"  # no id in span names


# -- Prometheus -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape(port: int, wanted: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> str:
    """The /metrics text once it contains ``wanted`` (the endpoint comes up with the process)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process exited: {process.stdout.read() if process.stdout else ''}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                text = response.read().decode()
            if wanted in text:
                return text
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{wanted} not served within {timeout}s; last scrape:\n{text[-2000:]}")


def metric_names(text: str) -> set[str]:
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


# Every kind of event the services publish, through the real meters and Prometheus exporter.
EMIT_EVERYTHING = """
import sys, time
from tweakline.observability import instruments, telemetry
from tweakline.runtime.settings import Settings
from tweakline.proto.messages import *
from tweakline.validation.loading import parse_tweak_file
telemetry.setup_telemetry("trial-runner", Settings(metrics_port=int(sys.argv[1])))
for status in ("ok", "failed", "pruned"):
    telemetry.observe_published(TrialCompleted(experiment_id="e", trial_id="e.0", number=0, status=status, params={}, duration_s=1.5))
for decision in ("promote", "reject", "error"):
    telemetry.observe_published(EvaluationCompleted(experiment_id="e", decision=decision))
for status in ("deployed", "failed", "rolled_back"):
    telemetry.observe_published(DeploymentCompleted(experiment_id="e", release="r", target="local", status=status))
instruments._queues["trial-runners"] = (3, 1)
telemetry.observe_dead_letter("scheduler")
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture(scope="module")
def exported_metrics() -> set[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", EMIT_EVERYTHING, str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        return metric_names(scrape(port, "tweakline_rollbacks_total", process=proc))
    finally:
        proc.kill()
        proc.wait(10)


def test_prometheus_names_of_the_meters(exported_metrics: set[str]) -> None:
    assert {
        "tweakline_trials_total",
        "tweakline_trial_duration_seconds_bucket",
        "tweakline_queue_depth",
        "tweakline_queue_in_flight",
        "tweakline_runner_utilization",
        "tweakline_promotions_total",
        "tweakline_rejections_total",
        "tweakline_rollbacks_total",
        "tweakline_decisions_total",
        "tweakline_deployments_total",
    } <= exported_metrics


def dashboard_metrics(dashboard: dict) -> set[str]:
    exprs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition") and isinstance(value, str):
                    exprs.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(dashboard)
    return {name for expr in exprs for name in re.findall(r"\b(tweakline_[a-zA-Z0-9_:]+)", expr)}


def model_server_metrics() -> set[str]:
    """What the model server's /metrics serves (its own Prometheus registry), every series touched."""
    from prometheus_client import generate_latest

    from tweakline.model_server.api import ServerMetrics

    served = ServerMetrics()
    served.requests.labels("predict", "200").inc()
    served.latency.observe(0.01)
    return metric_names(generate_latest(served.registry).decode())


def test_grafana_dashboard_refers_only_to_exported_metrics(exported_metrics: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard.get("panels"), "the dashboard has no panels"
    used = dashboard_metrics(dashboard)
    assert used, "the dashboard queries no tweakline metric"
    exported = exported_metrics | model_server_metrics()
    assert used - exported == set(), f"not exported by the services or the model server: {sorted(used - exported)}"
    assert {"tweakline_model_requests_total", "tweakline_model_request_seconds_bucket"} <= used  # model-server panels


def test_alert_rules_refer_only_to_exported_metrics(exported_metrics: set[str]) -> None:
    rules = yaml.safe_load(ALERT_RULES.read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\b(tweakline_[a-zA-Z0-9_:]+)", expr)}
    exported = exported_metrics | model_server_metrics()
    assert "tweakline_dead_letters_total" in used
    assert used - exported == set(), f"alert rules on metrics nobody exports: {sorted(used - exported)}"


def test_a_service_serves_prometheus_metrics(nats, tmp_path: Path) -> None:
    port = free_port()
    settings = nats.settings(Identity.TRIAL_RUNNER)
    env = dict(os.environ)
    env.update(
        {
            "TWEAKLINE_NATS_URL": nats.url,
            "TWEAKLINE_IDENTITY": "trial-runner",
            "TWEAKLINE_STATE_DIR": str(settings.state_dir),
            "TWEAKLINE_METRICS_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("TWEAKLINE_TLS_DIR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tweakline", "service", "trial-runner"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        text = scrape(port, 'tweakline_queue_depth{consumer="trial-runners"', process=proc)
        assert "tweakline_runner_utilization" in text
        assert 'service_name="tweakline-trial-runner"' in text  # target_info from the resource
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_batch_of_results_is_counted_trial_by_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    from tweakline.observability import domain
    from tweakline.proto.messages import TrialCompleted, TrialRecord

    counted: list[tuple[str, float]] = []

    class Recorder:
        def add(self, amount: int, attrs: dict[str, str]) -> None:
            counted.append((attrs["status"], float(amount)))

        def record(self, value: float, attrs: dict[str, str]) -> None:
            counted.append((attrs["status"], value))

    monkeypatch.setattr(domain, "TRIALS", Recorder())
    monkeypatch.setattr(domain, "TRIAL_DURATION", Recorder())
    first = TrialCompleted(experiment_id="e", trial_id="e.0", number=0, status="ok", params={}, duration_s=1.5)
    rest = [TrialRecord(number=n, params={}, status=s, duration_s=d) for n, s, d in ((1, "failed", 0.25), (2, "pruned", 0.5))]
    telemetry.observe_published(first.model_copy(update={"batch": rest}))
    assert counted == [("ok", 1.0), ("ok", 1.5), ("failed", 1.0), ("failed", 0.25), ("pruned", 1.0), ("pruned", 0.5)]


_PAST_SPAN = """
from tweakline.observability import telemetry
from tweakline.runtime.settings import Settings
telemetry.setup_telemetry("trial-runner", Settings())
span = telemetry.past_span("trial.run", started_ns=1, experiment_id="exp", trial_id="exp.1")
print("recording" if span.is_recording() else "not recording")
span.end(end_time=2)
"""


@pytest.mark.parametrize(("exporter", "expected"), [("none", "not recording"), ("console", "recording")])
def test_a_batched_trial_span_is_made_only_when_spans_are_exported(
    clean_otel_env: pytest.MonkeyPatch, exporter: str, expected: str
) -> None:
    # Its own process: a tracer provider is set once per process.
    env = {**os.environ, "OTEL_TRACES_EXPORTER": exporter}
    out = subprocess.run([sys.executable, "-c", _PAST_SPAN], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == expected

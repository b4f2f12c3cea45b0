"""One experiment is one trace: every service process exports to an OTLP/HTTP receiver in this test.

The run goes through the real ``tweakline run`` (embedded nats-server with mTLS, every service
its own process); the receiver decodes the exports with the OTLP protobuf definitions.
"""

from __future__ import annotations

import json

import pytest

from tests.browser import CHROMIUM, chromium, console_messages, drawn_plots
from tests.conftest import run_cli
from tests.otlp import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.e2e

TWEAK = """
apiVersion: tweakline/v1
kind: Experiment
metadata: {name: traced-wine}
spec:
  dataset: {source: "sklearn:wine", test_size: 0.25, seed: 0}
  model: {estimator: sklearn.svm.SVC}
  search:
    algorithm: random
    seed: 3
    space:
      C:     {type: float, low: 1.0e-1, high: 1.0e+4, log: true}
      gamma: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
  objective: {metric: accuracy, cv: 3}
  budget: {max_trials: 6, parallelism: 2, timeout: 5m}
  gate:
    thresholds: {accuracy: 0.5}
  deploy: {target: local, release: traced-wine}
"""

SERVICES = {"tweakline-scheduler", "tweakline-trial-runner", "tweakline-evaluator", "tweakline-deployer"}


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    """The chain of parents of ``span`` (nearest first) as far as they were exported."""
    chain = []
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


@pytest.fixture(scope="module")
def traced_run(tmp_path_factory: pytest.TempPathFactory):
    """Run one experiment with every process exporting to a local OTLP receiver."""
    tmp = tmp_path_factory.mktemp("traced")
    tweak = tmp / "traced.tweak.yaml"
    tweak.write_text(TWEAK)
    report = tmp / "report.html"
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
            "TWEAKLINE_LOG_JSON": "true",
        }
        result = run_cli(
            "run",
            str(tweak),
            "--json",
            "--state-dir",
            str(tmp / "state"),
            "--runners",
            "2",
            "--report",
            str(report),
            env=env,
        )
        # The stack is stopped when 'run' returns: every service flushed its spans on SIGTERM.
    # Kept for debugging a failure: every span received, one JSON object per line.
    (tmp / "spans.jsonl").write_text("".join(json.dumps(vars(s), default=str) + "\n" for s in receiver.spans))
    return result, receiver, tmp


def test_one_trace_spans_all_four_services_with_parent_links(traced_run) -> None:
    result, receiver, _tmp = traced_run
    assert result.code == 0, result.stderr
    summary = result.json()
    exp_id = summary["experiment_id"]
    spans = receiver.spans
    roots = [s for s in spans if s.name == "experiment" and s.attributes.get("tweakline.experiment.id") == exp_id]
    assert len(roots) == 1, sorted({s.name for s in spans})
    root = roots[0]
    assert summary["trace_id"] == root.trace_id  # 'run --json' names the trace
    assert root.parent_id == "" and root.service == "tweakline-cli"
    trace = [s for s in spans if s.trace_id == root.trace_id]
    assert SERVICES <= {s.service for s in trace}
    by_id = {s.span_id: s for s in trace}

    # A trial may be dispatched twice (a resend after a scheduler (re)start is stored once, by its
    # Nats-Msg-Id); every dispatch hangs under the experiment, and each run under one of them.
    dispatches = [s for s in trace if s.name == "trial.dispatch"]
    runs = [s for s in trace if s.name == "trial.run"]
    assert {d.attributes["tweakline.trial.id"] for d in dispatches} == {f"{exp_id}.{n}" for n in range(6)}
    assert len(runs) >= 6
    for dispatch in dispatches:
        assert dispatch.service == "tweakline-scheduler"
        assert dispatch.parent_id == root.span_id  # experiment -> trial, whichever message triggered it
        assert dispatch.attributes["tweakline.experiment.id"] == exp_id
    for run in runs:
        assert run.service == "tweakline-trial-runner"
        chain = ancestors(run, by_id)
        dispatch = next((s for s in chain if s.name == "trial.dispatch"), None)
        assert dispatch is not None, f"{run.span_id}: see spans.jsonl"  # trial -> runner, through NATS headers
        assert dispatch.attributes["tweakline.trial.id"] == run.attributes["tweakline.trial.id"]
        assert chain[-1] == root
        consumer = chain[0]
        assert consumer.name == "tweakline.trials.requested.{experiment} process"
        assert consumer.attributes["messaging.system"] == "nats"
        assert (
            consumer.attributes["messaging.destination_publish.name"] == f"tweakline.trials.requested.default.{exp_id}"
        )  # the default runner pool
        assert run.events.count("fold") == 3

    evaluation = next(s for s in trace if s.name == "evaluation")
    deployment = next(s for s in trace if s.name == "deployment")
    assert evaluation.service == "tweakline-evaluator" and root in ancestors(evaluation, by_id)
    assert deployment.service == "tweakline-deployer" and root in ancestors(deployment, by_id)
    assert deployment.attributes["tweakline.release"] == "traced-wine"
    assert evaluation.attributes["tweakline.decision"] == "promote"


def test_logs_carry_trace_and_experiment_ids(traced_run) -> None:
    result, receiver, tmp = traced_run
    exp_id = result.json()["experiment_id"]
    trace_id = next(s.trace_id for s in receiver.spans if s.name == "experiment")
    lines = []
    for log_file in (tmp / "state" / "logs").glob("trial-runner-*.log"):
        for line in log_file.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
    started = [line for line in lines if "started" in line["message"] and line.get("experiment_id") == exp_id]
    assert len(started) >= 6
    assert {line["trace_id"] for line in started} == {trace_id}
    assert all(line["trial_id"].startswith(exp_id) and len(line["span_id"]) == 16 for line in started)


def test_metrics_are_exported(traced_run) -> None:
    _result, receiver, _tmp = traced_run
    assert {
        "tweakline.trials",
        "tweakline.trial.duration",
        "tweakline.decisions",
        "tweakline.deployments",
        "tweakline.runner.utilization",
        "tweakline.queue.depth",
        "tweakline.promotions",
    } <= receiver.metric_names


def test_report_written_at_the_end_of_run(traced_run) -> None:
    result, receiver, tmp = traced_run
    document = (tmp / "report.html").read_text()
    trace_id = next(s.trace_id for s in receiver.spans if s.name == "experiment")
    assert trace_id in document and result.json()["experiment_id"] in document
    assert "cdn.plot.ly" not in document.split("</script>", 1)[1]  # nothing fetched from the network
    if CHROMIUM is not None:
        dom = chromium((tmp / "report.html").as_uri(), "--dump-dom")
        assert console_messages(dom.stderr) == []
        assert len(drawn_plots(dom.stdout)) == 6


def test_report_command_reads_the_stored_experiment(traced_run) -> None:
    result, receiver, tmp = traced_run
    exp_id = result.json()["experiment_id"]
    trace_id = next(s.trace_id for s in receiver.spans if s.name == "experiment")
    out, md = tmp / "again.html", tmp / "summary.md"
    # The stack is down: the command serves the state directory's store for the moment.
    done = run_cli("report", exp_id, "--state-dir", str(tmp / "state"), "-o", str(out), "--markdown", str(md))
    assert done.code == 0, done.stderr
    assert trace_id in out.read_text() and trace_id in done.stderr
    summary = md.read_text()
    assert summary.startswith("## tweakline: traced-wine: **promote**") and exp_id in summary

    unknown = run_cli("report", "no-such-experiment", "--state-dir", str(tmp / "state"), "-o", str(tmp / "x.html"))
    assert unknown.code == 2 and "no experiment 'no-such-experiment'" in unknown.stderr
    assert "Traceback" not in unknown.stderr and not (tmp / "x.html").exists()

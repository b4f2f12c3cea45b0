"""The HTML report and Markdown summary, from real trials on the wine data (no bus needed).

The trials are real cross-validations (``run_trial``), one of them pruned after its first fold;
the evaluation is the real refit and gate. The HTML is opened in headless Chromium when the
machine has it (Debian's ``chromium`` package).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.browser import CHROMIUM, chromium, console_messages, drawn_plots
from tweakline.client.follow import Outcome
from tweakline.evaluator.scoring import refit_and_score
from tweakline.ml.datasets import DatasetCache
from tweakline.ml.estimators import task_of
from tweakline.ml.training import run_trial
from tweakline.promotion.gate import decide
from tweakline.proto.messages import EvaluationCompleted, TrialCompleted, TrialStatus
from tweakline.reporting.html import ReportData, rebuild_study, render_html, render_markdown
from tweakline.validation.loading import parse_tweak_file

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"

TWEAK = """
apiVersion: tweakline/v1
kind: Experiment
metadata: {name: report-wine}
spec:
  dataset: {source: "sklearn:wine", test_size: 0.25, seed: 0}
  model: {estimator: sklearn.svm.SVC}
  search:
    algorithm: random
    space:
      C:     {type: float, low: 1.0e-1, high: 1.0e+4, log: true}
      gamma: {type: float, low: 1.0e-6, high: 1.0e-2, log: true}
  objective: {metric: accuracy, cv: 3}
  budget: {max_trials: 5, parallelism: 1}
  gate:
    thresholds: {accuracy: 0.5}
  deploy: {target: local, release: report-wine}
"""

PARAMS = [
    {"C": 1000.0, "gamma": 1e-4},
    {"C": 10.0, "gamma": 1e-3},
    {"C": 0.5, "gamma": 1e-2},
    {"C": 300.0, "gamma": 3e-5},
    {"C": 5.0, "gamma": 1e-6},
]


@pytest.fixture(scope="module")
def data() -> ReportData:
    tweak = parse_tweak_file(TWEAK)
    spec = tweak.spec
    split = DatasetCache().get(spec.dataset)
    exp_id = "report-wine-0001"
    outcome = Outcome(experiment_id=exp_id, tweak=tweak)
    for number, params in enumerate(PARAMS):
        prune = number == 4  # early stopping after the first fold
        result = run_trial(split, spec, params, ["sklearn."], seed=0, on_fold=(lambda i, v: True) if prune else None)
        outcome.trials[number] = TrialCompleted(
            experiment_id=exp_id,
            trial_id=f"{exp_id}.{number}",
            number=number,
            status=TrialStatus(result.status),
            params=params,
            score=result.score,
            metrics=result.metrics,
            fold_scores=result.fold_scores,
            duration_s=result.duration_s,
            runner="test",
        )
    best = max((t for t in outcome.trials.values() if t.status is TrialStatus.OK), key=lambda t: t.score or 0.0)
    task = task_of(spec.model, ["sklearn."])
    refit = refit_and_score(split, spec, best.params, ["sklearn."], task)
    gate = decide(spec, refit.metrics, None)
    outcome.evaluation = EvaluationCompleted(
        experiment_id=exp_id,
        decision=gate.decision,
        reasons=gate.reasons,
        checks=gate.checks,
        metric=spec.objective.metric,
        best_params=best.params,
        best_cv_score=best.score,
        candidate_metrics=refit.metrics,
        default_metrics=refit.default_metrics,
        release="report-wine",
    )
    return ReportData(outcome=outcome, trace_id=TRACE_ID, trace_url=f"http://jaeger.example/trace/{TRACE_ID}")


def test_study_rebuilt_from_trial_records(data: ReportData) -> None:
    study = rebuild_study(data.outcome)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.PRUNED) == 1
    pruned = next(t for t in study.trials if t.state is TrialState.PRUNED)
    assert list(pruned.intermediate_values) == [0]  # stopped after its first fold
    assert study.best_value == pytest.approx(
        max(t.score for t in data.outcome.trials.values() if t.score and t.status is TrialStatus.OK)
    )


def test_a_study_with_rungs_shows_each_rungs_score_at_its_resource_step() -> None:
    text = TWEAK.replace("algorithm: random", "algorithm: random\n    pruner: asha\n    resource: {name: fraction, min: 0.1}")
    tweak = parse_tweak_file(text)
    outcome = Outcome(experiment_id="report-rungs", tweak=tweak)
    for number, (status, rungs) in enumerate([(TrialStatus.OK, [0.7, 0.8, 0.9]), (TrialStatus.PRUNED, [0.4])]):
        outcome.trials[number] = TrialCompleted(
            experiment_id="report-rungs",
            trial_id=f"report-rungs.{number}",
            number=number,
            status=status,
            params=PARAMS[number],
            score=rungs[-1],
            rung_scores=rungs,
            fold_scores=[rungs[-1]] * 3,
        )
    study = rebuild_study(outcome)
    assert [t.intermediate_values for t in study.trials] == [{1: 0.7, 3: 0.8, 9: 0.9}, {1: 0.4}]


def test_html_is_self_contained(data: ReportData) -> None:
    document = render_html(data)
    assert not re.search(r"<script[^>]+src=", document)  # plotly.js inlined, nothing fetched
    assert not re.search(r"<link[^>]+href=", document)
    assert document.count("Plotly.newPlot") >= 6
    assert TRACE_ID in document and "report-wine-0001" in document
    for title in (
        "Leaderboard",
        "Optimisation history",
        "Parameter importances",
        "Parallel coordinates",
        "Intermediate values",
        "Gate evidence",
        "Gain over default parameters and production",
    ):
        assert title in document
    assert "<p class='note'>not available" not in document


def test_markdown_summary(data: ReportData) -> None:
    text = render_markdown(data)
    assert text.startswith("## tweakline: report-wine: **promote**")
    assert f"`{TRACE_ID}`" in text
    assert "| accuracy |" in text and text.count("| ok |") == 4


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (apt-get install -y chromium)")
def test_report_opens_in_headless_chromium_with_its_plots(data: ReportData, tmp_path: Path) -> None:
    # The console check itself can fail: a page with an error is caught.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>undefinedFunction()</script></body></html>")
    assert console_messages(chromium(broken.as_uri(), "--dump-dom").stderr)

    page = tmp_path / "report.html"
    page.write_text(render_html(data))
    dom = chromium(page.as_uri(), "--dump-dom")
    assert console_messages(dom.stderr) == []
    assert drawn_plots(dom.stdout) == {f"plot-{i}" for i in range(6)}  # every figure drawn by plotly.js

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    chromium(page.as_uri(), f"--screenshot={shot}", "--window-size=1280,5200")
    assert shot.stat().st_size > 50_000

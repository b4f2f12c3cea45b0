"""The experiment report: one self-contained HTML file (works offline) and a Markdown summary.

Everything comes from what the bus stored: the experiment's events on the EVENTS stream (trial
results with their fold scores, the closed study, the evaluation with the gate's evidence, the
deployment) and its state in the experiments KV bucket (the trace id). The plots are Optuna's
own visualisations of a study rebuilt from those trial records; plotly.js is inlined once.
"""

from __future__ import annotations

import asyncio
import html
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import api

from tweakline.client.follow import Outcome, apply_event
from tweakline.errors import TweaklineError
from tweakline.observability.telemetry import trace_id_of
from tweakline.proto.messages import ExperimentSubmitted, TrialStatus
from tweakline.proto.subjects import Stream, Subject, experiment_events
from tweakline.runtime.records import ExperimentStore


class ReportError(TweaklineError):
    """The experiment cannot be reported on (unknown id, nothing stored)."""


@dataclass
class ReportData:
    """What a report shows about one experiment."""

    outcome: Outcome
    trace_id: str | None = None
    trace_url: str | None = None


async def load_experiment(nc: Client, experiment_id: str, *, idle_timeout: float = 3.0) -> ReportData:
    """Read every stored event of ``experiment_id`` and its state; raise :class:`ReportError` if unknown."""
    js = nc.jetstream()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def _on_msg(msg: Any) -> None:
        await queue.put(msg)

    sub = await js.subscribe(
        experiment_events(experiment_id),
        stream=Stream.EVENTS.value,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
        cb=_on_msg,
    )
    submitted: ExperimentSubmitted | None = None
    outcome: Outcome | None = None
    pending: list[tuple[str, bytes]] = []
    try:
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), timeout=idle_timeout)
            except TimeoutError:
                break
            family = msg.subject.rsplit(".", 1)[0]
            if family == Subject.EXPERIMENT_SUBMITTED.value:
                submitted = ExperimentSubmitted.model_validate_json(msg.data)
            else:
                pending.append((msg.subject, msg.data))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    if submitted is None:
        raise ReportError(f"no experiment {experiment_id!r} is stored on this bus (nothing on {Stream.EVENTS.value})")
    outcome = Outcome(experiment_id=experiment_id, tweak=submitted.tweak)
    for subject, data in pending:
        apply_event(outcome, subject, data)

    traceparent = submitted.traceparent
    try:
        store = await ExperimentStore.open_bucket(js)
        found = await store.get_stored(experiment_id)  # its trace: no segment read
        if found is not None and found[0].traceparent:
            traceparent = found[0].traceparent
    except Exception:  # the state may have expired; the submission's context still names the trace
        pass
    return ReportData(outcome=outcome, trace_id=trace_id_of(traceparent))


# -- the study, rebuilt ---------------------------------------------------------------------------


def rebuild_study(outcome: Outcome) -> Any:
    """An in-memory Optuna study holding the experiment's trials (fold scores as intermediate values)."""
    import optuna
    from optuna.trial import TrialState

    from tweakline.search.space import distributions_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = outcome.tweak.spec
    study = optuna.create_study(direction="maximize" if spec.objective.maximize else "minimize")
    for number in sorted(outcome.trials):
        trial = outcome.trials[number]
        dists = distributions_of(trial.params, spec.search.space)
        if dists is None:
            continue
        if spec.search.resource is not None:  # a CV score per rung, at the rung's step as the pruner saw it
            steps = [rung.step for rung in spec.search.resource.rungs()]
            intermediate = {steps[i]: v for i, v in enumerate(trial.rung_scores[: len(steps)]) if math.isfinite(v)}
        else:
            intermediate = {i: v for i, v in enumerate(trial.fold_scores) if v is not None and math.isfinite(v)}
        if trial.status is TrialStatus.OK and trial.score is not None and math.isfinite(trial.score):
            state, value = TrialState.COMPLETE, trial.score
        elif trial.status is TrialStatus.PRUNED:
            state, value = TrialState.PRUNED, None
        else:
            state, value = TrialState.FAIL, None
        study.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=dists,
                value=value,
                state=state,
                intermediate_values=intermediate,
                user_attrs={"trial_id": trial.trial_id, "runner": trial.runner},
            )
        )
    return study


def _plots(data: ReportData) -> list[tuple[str, Any | None, str]]:
    """(title, figure or None, note) for every plot of the report."""
    from optuna import visualization as vis

    study = rebuild_study(data.outcome)
    plots: list[tuple[str, Any | None, str]] = []
    makers = [
        ("Optimisation history", vis.plot_optimization_history),
        ("Parameter importances", vis.plot_param_importances),
        ("Parallel coordinates", vis.plot_parallel_coordinate),
        ("Intermediate values (fold scores; pruned trials stop early)", vis.plot_intermediate_values),
        ("Slices", vis.plot_slice),
    ]
    for title, make in makers:
        try:
            plots.append((title, make(study), ""))
        except Exception as exc:  # e.g. importances need two finished trials with different params
            plots.append((title, None, f"not available: {exc}"))
    gain = _gain_figure(data)
    if gain is not None:
        plots.append(("Tuned model against default parameters and production (test split)", gain, ""))
    return plots


def _gain_figure(data: ReportData) -> Any | None:
    import plotly.graph_objects as go

    evaluation = data.outcome.evaluation
    if evaluation is None or not evaluation.candidate_metrics:
        return None
    metrics = sorted(evaluation.candidate_metrics)
    fig = go.Figure()
    fig.add_bar(name="tuned", x=metrics, y=[evaluation.candidate_metrics[m] for m in metrics])
    if evaluation.default_metrics:
        fig.add_bar(name="default params", x=metrics, y=[evaluation.default_metrics.get(m) for m in metrics])
    if evaluation.production_metrics:
        fig.add_bar(
            name=f"production (rev {evaluation.production_revision})",
            x=metrics,
            y=[evaluation.production_metrics.get(m) for m in metrics],
        )
    fig.update_layout(barmode="group", template="plotly_white", title="Test-split metrics")
    return fig


# -- rendering ------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(params.items()))


def _gain_rows(data: ReportData) -> list[tuple[str, float, float | None, float | None]]:
    evaluation = data.outcome.evaluation
    if evaluation is None:
        return []
    rows = []
    for metric in sorted(evaluation.candidate_metrics):
        rows.append(
            (
                metric,
                evaluation.candidate_metrics[metric],
                evaluation.default_metrics.get(metric),
                (evaluation.production_metrics or {}).get(metric),
            )
        )
    return rows


def _leaderboard(outcome: Outcome) -> list[Any]:
    sign = -1.0 if outcome.maximize else 1.0
    ok = [t for t in outcome.trials.values() if t.status is TrialStatus.OK and t.score is not None]
    rest = [t for t in outcome.trials.values() if t not in ok]
    return sorted(ok, key=lambda t: (sign * (t.score or 0.0), t.number)) + sorted(rest, key=lambda t: t.number)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222}
h1{margin-bottom:.2rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem} th,td{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}
th{background:#f4f4f4} .promote{color:#1a7f37} .reject{color:#b35900} .error{color:#c62828}
.pass{color:#1a7f37} .fail{color:#c62828} .plot{margin:1.5rem 0} .note{color:#888;font-style:italic}
code{background:#f4f4f4;padding:0 .2rem}
"""


def render_html(data: ReportData) -> str:
    """The whole report as one HTML document with plotly.js inlined (no network needed)."""
    from plotly.offline import get_plotlyjs

    outcome = data.outcome
    spec = outcome.tweak.spec
    evaluation = outcome.evaluation
    deployment = outcome.deployment
    esc = html.escape
    parts: list[str] = []
    decision = evaluation.decision.value if evaluation else "pending"
    parts.append(f"<h1>{esc(outcome.tweak.metadata.name)}: <span class='{esc(decision)}'>{esc(decision)}</span></h1>")
    parts.append(
        f"<p class='sub'>experiment <code>{esc(outcome.experiment_id)}</code> · {esc(spec.model.name)} on "
        f"{esc(spec.dataset.source)} · {esc(spec.search.algorithm)} search · objective "
        f"{esc(spec.objective.metric)} ({'maximise' if outcome.maximize else 'minimise'})</p>"
    )
    trace = "–"
    if data.trace_id:
        trace = f"<code id='trace-id'>{esc(data.trace_id)}</code>"
        if data.trace_url:
            trace = f"<a href='{esc(data.trace_url)}'>{trace}</a>"
    statuses = {s: sum(t.status is s for t in outcome.trials.values()) for s in TrialStatus}
    summary_rows = [
        ["trials", f"{len(outcome.trials)} ({', '.join(f'{n} {s.value}' for s, n in statuses.items())})"],
        ["best parameters", esc(_params(evaluation.best_params)) if evaluation and evaluation.best_params else "–"],
        ["best CV score", _fmt(evaluation.best_cv_score) if evaluation else "–"],
        ["release", esc(_fmt(evaluation.release)) if evaluation else "–"],
        ["deployment", esc(f"{deployment.status.value}: {deployment.message}") if deployment else "–"],
        ["trace id", trace],
    ]
    parts.append(_table(["", ""], summary_rows))

    parts.append("<h2>Gain over default parameters and production</h2>")
    gain_rows = [
        [esc(m), _fmt(c), _fmt(d), _fmt(None if d is None else c - d), _fmt(p), _fmt(None if p is None else c - p)]
        for m, c, d, p in _gain_rows(data)
    ]
    parts.append(
        _table(["metric", "tuned", "default", "gain over default", "production", "gain over production"], gain_rows)
        if gain_rows
        else "<p class='note'>no evaluation stored</p>"
    )

    parts.append("<h2>Gate evidence</h2>")
    if evaluation is not None:
        checks = [
            [
                esc(c.rule),
                f"<span class='{'pass' if c.passed else 'fail'}'>{'pass' if c.passed else 'fail'}</span>",
                esc(c.detail),
            ]
            for c in evaluation.checks
        ]
        parts.append(_table(["rule", "result", "detail"], checks) if checks else "")
        parts.append("<ul>" + "".join(f"<li>{esc(r)}</li>" for r in evaluation.reasons) + "</ul>")
    else:
        parts.append("<p class='note'>no decision stored</p>")

    parts.append("<h2>Leaderboard</h2>")
    board = [
        [
            str(rank),
            str(t.number),
            esc(t.status.value),
            _fmt(t.score),
            esc(_params(t.params)),
            _fmt(t.duration_s),
            esc(t.runner),
            esc(t.error or ""),
        ]
        for rank, t in enumerate(_leaderboard(outcome), start=1)
    ]
    parts.append(_table(["#", "trial", "status", "score", "params", "seconds", "runner", "error"], board))

    for index, (title, fig, note) in enumerate(_plots(data)):
        parts.append(f"<h2>{esc(title)}</h2>")
        if fig is None:
            parts.append(f"<p class='note'>{esc(note)}</p>")
            continue
        parts.append(
            "<div class='plot'>"
            + fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{index}", config={"displaylogo": False})
            + "</div>"
        )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<p class='sub'>generated {generated} by tweakline</p>")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>tweakline report: {esc(outcome.experiment_id)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>" + "\n".join(parts) + "</body></html>"
    )


def render_markdown(data: ReportData) -> str:
    """A short Markdown summary (for a pull request comment or a CI job summary)."""
    outcome = data.outcome
    evaluation = outcome.evaluation
    lines = [f"## tweakline: {outcome.tweak.metadata.name}: **{evaluation.decision.value if evaluation else 'pending'}**", ""]
    lines.append(f"- experiment `{outcome.experiment_id}`, {len(outcome.trials)} trials")
    if evaluation is not None:
        lines.append(f"- best parameters: `{_params(evaluation.best_params)}` (CV {_fmt(evaluation.best_cv_score)})")
        for reason in evaluation.reasons:
            lines.append(f"- {reason}")
    if outcome.deployment is not None:
        lines.append(f"- deployment: {outcome.deployment.status.value}: {outcome.deployment.message}")
    if data.trace_id:
        lines.append(f"- trace id: `{data.trace_id}`" + (f" ({data.trace_url})" if data.trace_url else ""))
    rows = _gain_rows(data)
    if rows:
        lines += ["", "| metric | tuned | default | production |", "| --- | --- | --- | --- |"]
        lines += [f"| {m} | {_fmt(c)} | {_fmt(d)} | {_fmt(p)} |" for m, c, d, p in rows]
    board = _leaderboard(outcome)[:5]
    if board:
        lines += ["", "| trial | status | score | params |", "| --- | --- | --- | --- |"]
        lines += [f"| {t.number} | {t.status.value} | {_fmt(t.score)} | `{_params(t.params)}` |" for t in board]
    return "\n".join(lines) + "\n"


async def write_report(
    nc: Client,
    experiment_id: str,
    path: Path,
    *,
    markdown: Path | None = None,
    trace_url_template: str | None = None,
) -> ReportData:
    """Load the experiment from the bus and write its HTML report (and Markdown summary)."""
    data = await load_experiment(nc, experiment_id)
    if trace_url_template and data.trace_id:
        data.trace_url = trace_url_template.format(trace_id=data.trace_id)
    document = await asyncio.to_thread(render_html, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(render_markdown(data), encoding="utf-8")
    return data

"""Terminal output: the live progress bar, the leaderboard, the decision, and the ``--json`` summary."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tweakline.client.follow import Outcome
from tweakline.proto.messages import Decision, TrialStatus

# Progress, logs and errors go to stderr so that stdout carries only results (--json).
err = Console(stderr=True, soft_wrap=True)
out = Console()


class ProgressView:
    """A live bar: trials done / total, best score so far, elapsed time."""

    def __init__(self, outcome: Outcome, total: int, console: Console = err):
        self.outcome = outcome
        self.metric = outcome.tweak.spec.objective.metric
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best {task.fields[best]}"),
            TextColumn("{task.fields[stage]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(outcome.tweak.metadata.name, total=total, best="-", stage="")

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.update(self.outcome)
        self.progress.stop()

    def update(self, outcome: Outcome) -> None:
        """Refresh from the outcome (called on every event and once a second)."""
        best = outcome.best_score()
        stage = "searching"
        if outcome.completed is not None:
            stage = "evaluating"
        if outcome.evaluation is not None:
            stage = "deploying" if not outcome.done else outcome.evaluation.decision.value
        total = outcome.completed.total if outcome.completed is not None else None
        self.progress.update(
            self.task,
            completed=len(outcome.trials),
            total=total if total is not None else self.progress.tasks[0].total,
            best="-" if best is None else f"{self.metric} {best:.4f}",
            stage=stage,
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def leaderboard_table(outcome: Outcome, top: int = 10) -> Table:
    """The best trials, with their parameters."""
    metric = outcome.tweak.spec.objective.metric
    table = Table(title=f"Leaderboard ({metric}, {'higher' if outcome.maximize else 'lower'} is better)")
    table.add_column("#", justify="right")
    table.add_column("trial", justify="right")
    table.add_column(f"cv {metric}", justify="right")
    table.add_column("status")
    table.add_column("params")
    table.add_column("time", justify="right")
    rows = outcome.completed.trials if outcome.completed else []
    for rank, trial in enumerate(rows[:top], 1):
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        score = "-" if trial.score is None else f"{trial.score:.4f}"
        status = trial.status.value if trial.status is TrialStatus.OK else f"[red]{trial.status.value}[/red]"
        table.add_row(str(rank), str(trial.number), score, status, params, f"{trial.duration_s:.1f}s")
    warm = outcome.completed.warm_start if outcome.completed else None
    if warm is not None and warm.available:
        text = f"warm start from {warm.lineage}: {warm.reused} of {warm.available} earlier trials reused"
        if warm.rerun:
            text += f", the best {warm.rerun} tried again first"
        if warm.incompatible:
            text += f"; {warm.incompatible} incompatible (" + "; ".join(f"{why}: {n}" for why, n in warm.reasons.items()) + ")"
        table.caption = escape(text)
    return table


def decision_panel(outcome: Outcome) -> Panel:
    """The decision, its reasons and the metrics it was based on."""
    ev = outcome.evaluation
    assert ev is not None
    colour = {Decision.PROMOTE: "green", Decision.REJECT: "yellow", Decision.ERROR: "red"}[ev.decision]
    lines = [f"[bold {colour}]{ev.decision.value.upper()}[/bold {colour}]"]
    lines += [f"  {reason}" for reason in ev.reasons]
    if ev.candidate_metrics:
        metrics = Table(box=None, padding=(0, 2), show_header=True, header_style="bold")
        metrics.add_column("test split")
        metrics.add_column("tuned", justify="right")
        metrics.add_column("defaults", justify="right")
        metrics.add_column("production", justify="right")
        for name, value in ev.candidate_metrics.items():
            prod = (ev.production_metrics or {}).get(name)
            metrics.add_row(name, f"{value:.4f}", _fmt(ev.default_metrics.get(name, "-")), "-" if prod is None else f"{prod:.4f}")
    dep = outcome.deployment
    footer = ""
    if dep is not None:
        footer = f"release {dep.release} ({dep.target}): {dep.status.value}, revision {dep.revision}"
        if dep.message:
            footer += f"\n  {escape(dep.message)}"
    body = "\n".join(lines)
    parts: list[Any] = [body]
    if ev.candidate_metrics:
        parts.append(metrics)
    if footer:
        parts.append(footer)
    parts.append(f"experiment {outcome.experiment_id}, {len(outcome.trials)} trials in {outcome.elapsed:.1f}s")
    return Panel(Group(*parts), title="Decision", border_style=colour)


def summary(outcome: Outcome) -> dict[str, Any]:
    """The ``--json`` object: everything a pipeline needs about the run."""
    ev = outcome.evaluation
    dep = outcome.deployment
    statuses = [t.status for t in outcome.trials.values()]
    return {
        "experiment_id": outcome.experiment_id,
        "name": outcome.tweak.metadata.name,
        "decision": ev.decision.value if ev else "error",
        "exit_code": outcome.exit_code(),
        "reasons": ev.reasons if ev else ["no decision was received"],
        "metric": outcome.tweak.spec.objective.metric,
        "best_params": ev.best_params if ev else None,
        "best_cv_score": ev.best_cv_score if ev else None,
        "test_metrics": ev.candidate_metrics if ev else {},
        "default_metrics": ev.default_metrics if ev else {},
        "production_metrics": ev.production_metrics if ev else None,
        "production_revision": ev.production_revision if ev else None,
        "comparison": ev.comparison.model_dump() if ev and ev.comparison else None,
        "deployment_message": dep.message if dep else None,
        "release": dep.release if dep else (ev.release if ev else None),
        "revision": dep.revision if dep else None,
        "deployment_status": dep.status.value if dep else None,
        "trials": {
            "total": len(statuses),
            "ok": sum(s is TrialStatus.OK for s in statuses),
            "failed": sum(s is TrialStatus.FAILED for s in statuses),
            "pruned": sum(s is TrialStatus.PRUNED for s in statuses),
        },
        "elapsed_s": round(outcome.elapsed, 3),
        # search: what warm start reused or refused, and the Pareto front of a multi-objective search
        "warm_start": done.warm_start.model_dump(mode="json") if (done := outcome.completed) and done.warm_start else None,
        "pareto_front": outcome.completed.pareto_front if outcome.completed else [],
        "trace_id": outcome.trace_id,
    }


def print_json(data: dict[str, Any]) -> None:
    """One JSON object on stdout."""
    print(json.dumps(data, default=str))

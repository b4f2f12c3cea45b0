"""What the pages show, as plain data: events and records turned into JSON rows (no HTTP, no bus).

The browser receives only these shapes (over server-sent events or in the rendered page), so
this module decides what leaves the platform: never a token, never a dataset or a model.
"""

from __future__ import annotations

import math
from typing import Any

from tweakline.client.api import Event, ExperimentSummary
from tweakline.proto.messages import (
    Comparison,
    DeploymentCompleted,
    EvaluationCompleted,
    ExperimentCancelled,
    ExperimentCompleted,
    ExperimentSubmitted,
    ReleaseAction,
    ReleaseHistory,
    TrialCompleted,
)

MAX_PARAM_CHARS = 200


def _num(value: float | None) -> float | None:
    """JSON has no NaN or infinity: send ``None`` instead."""
    return None if value is None or not math.isfinite(value) else value


def _short(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return _num(value) if isinstance(value, float) else value
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS] + "..."


def summary_row(row: ExperimentSummary) -> dict[str, Any]:
    """One row of the experiments list."""
    return {
        "id": row.experiment_id,
        "name": row.name,
        "status": row.status.value,
        "done": row.trials_done,
        "max": row.trials_max,
        "running": row.running,
        "best": _num(row.best_score),
        "metric": row.metric,
        "source": " ".join(part for part in (row.repository, row.branch, (row.commit or "")[:12]) if part) or row.trigger,
        "author": row.author or "",
        "started": row.started_at.isoformat(),
        "message": row.message or "",
    }


def event_row(event: Event) -> tuple[str, dict[str, Any]] | None:
    """An experiment's event as ``(kind, data)`` for its page; ``None`` for events it does not show."""
    if isinstance(event, ExperimentSubmitted):
        spec = event.tweak.spec
        return "submitted", {
            "id": event.experiment_id,
            "name": event.tweak.metadata.name,
            "metric": spec.objective.metric,
            "maximize": spec.objective.maximize,
            "max_trials": spec.budget.max_trials,
            "at": event.submitted_at.isoformat(),
        }
    if isinstance(event, TrialCompleted):
        return "trial", {
            "number": event.number,
            "status": event.status.value,
            "score": _num(event.score),
            "params": {str(k): _short(v) for k, v in event.params.items()},
            "duration_s": round(event.duration_s, 3),
            "runner": event.runner,
            "error": (event.error or "")[:300],
        }
    if isinstance(event, ExperimentCompleted):
        best = event.best
        return "completed", {
            "status": event.status.value,
            "best_number": best.number if best else None,
            "best_score": _num(best.score) if best else None,
            "message": event.message or "",
        }
    if isinstance(event, ExperimentCancelled):
        return "cancelled", {"status": event.status.value, "reason": event.reason, "by": event.requested_by}
    if isinstance(event, EvaluationCompleted):
        return "evaluation", {"decision": event.decision.value, "reasons": event.reasons[:10], "release": event.release}
    if isinstance(event, DeploymentCompleted):
        return "deployment", {"status": event.status.value, "revision": event.revision, "message": event.message}
    return None


def evidence(comparison: Comparison | None) -> str:
    """One line of a revision's evidence against production."""
    c = comparison
    if c is None:
        return "nothing in production: thresholds only"
    if c.p_value is not None:
        return f"{c.metric} {c.difference:+.4f} vs prod, McNemar mid-p {c.p_value:.3g}"
    if c.ci_low is not None and c.ci_high is not None and c.confidence is not None:
        return f"{c.metric} {c.difference:+.4f} vs prod, {c.confidence:.0%} CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
    return f"{c.metric} {c.difference:+.4f} vs prod"


def release_view(history: ReleaseHistory) -> dict[str, Any]:
    """A release page: its revisions (newest first) with metrics and evidence, and its steps."""
    return {
        "release": history.release,
        "target": history.target,
        "current": history.current,
        "revisions": [
            {
                "revision": r.revision,
                "live": r.revision == history.current,
                "created": r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                "experiment": r.experiment_id,
                "commit": (r.source.commit or "")[:12],
                "metrics": ", ".join(f"{k} {v:.4f}" for k, v in list(r.metrics.items())[:4]),
                "evidence": evidence(r.comparison),
                "estimator": r.estimator,
            }
            for r in sorted(history.revisions, key=lambda r: r.revision, reverse=True)
        ],
        "events": [
            {
                "at": e.at.strftime("%Y-%m-%d %H:%M:%S"),
                "action": e.action.value,
                "revision": e.revision,
                "previous": e.previous,
                "by": e.by,
                "reason": e.reason,
            }
            for e in reversed(history.events)
        ],
    }


def rollback_choice(history: ReleaseHistory, to: int | None) -> tuple[int | None, str]:
    """The revision a rollback to ``to`` (default: the one live before) would make live, or why none."""
    if history.current is None:
        return None, f"release {history.release} has no live revision"
    if to is None:  # as the deployer's default: the revision live before the current one, else the newest older one
        for event in reversed(history.events):
            if event.revision == history.current and event.action is not ReleaseAction.VERIFIED:
                if event.previous is not None and history.revision(event.previous) is not None:
                    to = event.previous
                break
        if to is None:
            to = max((r.revision for r in history.revisions if r.revision < history.current), default=None)
        if to is None:
            return None, f"release {history.release} has no earlier revision to go back to"
    if history.revision(to) is None:
        return None, f"release {history.release} has no revision {to}"
    if to == history.current:
        return None, f"revision {to} is already live"
    return to, ""

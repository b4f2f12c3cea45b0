"""Reports of a decision for the places developers look: a commit build status and a Markdown summary.

The same three files are written for any CI (``--report-dir``): ``report.md`` (the pull-request
comment), ``build-status.json`` (exactly the body of Bitbucket's commit build-status call, so
another CI can post or translate it) and ``summary.json`` (the ``--json`` summary when known).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tweakline.errors import ConfigurationError
from tweakline.proto.messages import (
    Decision,
    DeploymentCompleted,
    DeploymentStatus,
    EvaluationCompleted,
    ExperimentCompleted,
)
from tweakline.proto.tweakfile import LOWER_IS_BETTER

# Bitbucket limits: a status key of at most 40 characters; descriptions are kept short.
STATUS_KEY_MAX = 40
DESCRIPTION_MAX = 255


class BuildState:
    """Bitbucket commit build states."""

    INPROGRESS = "INPROGRESS"
    SUCCESSFUL = "SUCCESSFUL"
    FAILED = "FAILED"
    STOPPED = "STOPPED"


def file_label(path: str) -> str:
    """A tweak file's label for its status key: its repository path without the suffix, '/' as '-'
    (``models/digits.tweak.yaml`` -> ``models-digits``); only the file name for an absolute path."""
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm.startswith(("/", "..")):
        norm = posixpath.basename(norm)
    for suffix in (".tweak.yaml", ".tweak.yml", ".yaml", ".yml"):
        if norm.endswith(suffix):
            norm = norm[: -len(suffix)]
            break
    return norm.replace("/", "-")


def status_key(name: str) -> str:
    """The build-status key of one tweak file (re-posting the same key replaces the status).

    The same tweak file gets the same key from the webhook and from ``submit --report-dir``:
    ``status_key(file_label(path))``.
    """
    key = f"tweakline-{name}"
    if len(key) <= STATUS_KEY_MAX:
        return key
    return f"tweakline-{name[:20]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class BuildStatus:
    """One commit build status."""

    key: str
    state: str
    name: str
    description: str
    url: str

    def body(self) -> dict[str, str]:
        """The JSON body of ``POST .../commit/{commit}/statuses/build``."""
        return {
            "key": self.key,
            "state": self.state,
            "name": self.name,
            "description": self.description[:DESCRIPTION_MAX],
            "url": self.url,
        }


def _gain(value: float, other: float, metric: str) -> float:
    """How much better ``value`` is than ``other`` (positive is better, whatever the direction)."""
    return other - value if metric in LOWER_IS_BETTER else value - other


def summary_line(evaluation: EvaluationCompleted, deployment: DeploymentCompleted | None = None) -> str:
    """One line, e.g. ``accuracy 0.981 (+0.012 vs production), promoted rev 7``."""
    metric = evaluation.metric
    value = evaluation.candidate_metrics.get(metric)
    parts: list[str] = []
    if value is not None:
        text = f"{metric} {value:.3f}"
        prod = (evaluation.production_metrics or {}).get(metric)
        if prod is not None:
            text += f" ({_gain(value, prod, metric):+.3f} vs production)"
        elif (default := evaluation.default_metrics.get(metric)) is not None:
            text += f" ({_gain(value, default, metric):+.3f} vs defaults, no model in production)"
        parts.append(text)
    if evaluation.decision is Decision.PROMOTE:
        if deployment is None:
            parts.append("promoted")
        elif deployment.status is DeploymentStatus.DEPLOYED:
            parts.append(f"promoted rev {deployment.revision}" if deployment.revision is not None else "promoted")
        elif deployment.status is DeploymentStatus.SKIPPED:
            parts.append(f"passed the gate, {deployment.message}")
        else:
            parts.append(f"promotion {deployment.status.value}: {deployment.message}".rstrip(": "))
    elif evaluation.decision is Decision.REJECT:
        reason = evaluation.reasons[0] if evaluation.reasons else ""
        parts.append(f"rejected: {reason}" if reason else "rejected")
    else:
        parts.append(f"error: {evaluation.reasons[0] if evaluation.reasons else 'no reason given'}")
    return ", ".join(parts)


def final_state(evaluation: EvaluationCompleted, deployment: DeploymentCompleted | None = None) -> str:
    """SUCCESSFUL when promoted (and deployed, if a deployment was asked for), else FAILED."""
    if evaluation.decision is not Decision.PROMOTE:
        return BuildState.FAILED
    # SKIPPED: the model passed the gate on a pull request or a non-production branch (by design)
    if deployment is not None and deployment.status not in (DeploymentStatus.DEPLOYED, DeploymentStatus.SKIPPED):
        return BuildState.FAILED
    return BuildState.SUCCESSFUL


def decision_status(
    name: str, evaluation: EvaluationCompleted, deployment: DeploymentCompleted | None, url: str, *, key: str | None = None
) -> BuildStatus:
    """The build status posted at the decision (``key`` defaults to one made from ``name``)."""
    return BuildStatus(
        key=key or status_key(name),
        state=final_state(evaluation, deployment),
        name=f"tweakline {name}",
        description=summary_line(evaluation, deployment),
        url=url,
    )


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.4f}"


def _md(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_report(
    name: str,
    evaluation: EvaluationCompleted,
    deployment: DeploymentCompleted | None = None,
    completed: ExperimentCompleted | None = None,
    *,
    url: str | None = None,
    top: int = 10,
) -> str:
    """The pull-request comment: decision, metrics with gains over defaults and production, leaderboard."""
    ev = evaluation
    verdict = {Decision.PROMOTE: "✅ promoted", Decision.REJECT: "❌ rejected", Decision.ERROR: "⚠️ error"}[ev.decision]
    if ev.decision is Decision.PROMOTE and final_state(ev, deployment) == BuildState.FAILED:
        verdict = "⚠️ promotion failed"
    lines = [f"### tweakline · `{name}` · {verdict}", "", f"**{summary_line(ev, deployment)}**", ""]
    src = ev.source
    where = [f"experiment `{ev.experiment_id}`"]
    if src.commit:
        where.append(f"commit `{src.commit[:12]}`")
    if src.branch:
        where.append(f"branch `{src.branch}`")
    if src.path:
        where.append(f"file `{src.path}`")
    lines += [" · ".join(where), ""]
    if ev.candidate_metrics:
        lines += [
            "| test-split metric | tuned | defaults | gain vs defaults | production | gain vs production |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for metric, value in ev.candidate_metrics.items():
            default = ev.default_metrics.get(metric)
            prod = (ev.production_metrics or {}).get(metric)
            lines.append(
                f"| {_md(metric)}{' (objective)' if metric == ev.metric else ''} | {_num(value)} | {_num(default)} "
                f"| {_signed(None if default is None else _gain(value, default, metric))} | {_num(prod)} "
                f"| {_signed(None if prod is None else _gain(value, prod, metric))} |"
            )
        lines.append("")
    if ev.reasons:
        lines += ["**Decision**", ""] + [f"- {_md(r)}" for r in ev.reasons] + [""]
    if ev.best_params:
        params = ", ".join(f"`{k}={v!r}`" for k, v in ev.best_params.items())
        lines += [f"Best parameters: {params}", ""]
    if deployment is not None:
        lines += [
            f"Release `{deployment.release}` ({deployment.target}): {deployment.status.value}"
            + (f", revision {deployment.revision}" if deployment.revision is not None else "")
            + (f" — {_md(deployment.message)}" if deployment.message else ""),
            "",
        ]
    if completed is not None and completed.trials:
        lines += [
            f"<details><summary>Leaderboard: top {min(top, len(completed.trials))} of {completed.total} trials "
            f"({completed.ok} ok), cv {ev.metric or 'score'}</summary>",
            "",
            f"| # | trial | cv {_md(ev.metric)} | status | params | time |",
            "| ---: | ---: | ---: | --- | --- | ---: |",
        ]
        for rank, trial in enumerate(completed.trials[:top], 1):
            params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
            lines.append(
                f"| {rank} | {trial.number} | {_num(trial.score)} | {trial.status.value} | {_md(params)} "
                f"| {trial.duration_s:.1f}s |"
            )
        lines += ["", "</details>", ""]
    if url:
        lines.append(f"[Details]({url})")
    return "\n".join(lines).rstrip() + "\n"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_report(directory: Path, status: BuildStatus, markdown: str, summary: dict[str, Any] | None = None) -> list[Path]:
    """Write ``report.md``, ``build-status.json`` (and ``summary.json``) into ``directory``.

    Raises :class:`ConfigurationError` naming the directory when it cannot be written (in CI, a
    checkout owned by another user than the one running tweakline), never a traceback.
    """
    written = [directory / "report.md", directory / "build-status.json"]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written[0].write_text(markdown, encoding="utf-8")
        written[1].write_text(json.dumps(status.body(), indent=2) + "\n", encoding="utf-8")
        if summary is not None:
            path = directory / "summary.json"
            path.write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
            written.append(path)
    except OSError as exc:
        raise ConfigurationError(
            f"--report-dir {directory}: cannot write the reports ({exc.strerror or exc}); expected a directory "
            f"the user running tweakline (UID {os.getuid()}) can write, e.g. in a CI container run as the checkout's owner"
        ) from None
    return written

"""The names tweakline puts on spans and log lines, and the ids of the message being handled.

OpenTelemetry's messaging conventions cover the bus; these attribute names are ours. The
experiment, trial and release of the message a handler is working on are kept in a context
variable (set by the consume middleware and by :func:`tweakline.observability.tracing.span`), so
spans and log lines opened anywhere below carry them.
"""

from __future__ import annotations

import contextvars
import json

EXPERIMENT_ID = "tweakline.experiment.id"
TRIAL_ID = "tweakline.trial.id"
TRIAL_NUMBER = "tweakline.trial.number"
RELEASE = "tweakline.release"

INSTRUMENTATION = "tweakline"

# The experiment and trial of the message being handled, for log lines.
handled_ids: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("tweakline_ids", default={})  # noqa: B039 - never mutated, only replaced


def log_ids(experiment_id: str | None, trial_id: str | None) -> dict[str, str]:
    """The ids a log line shows, those that are set."""
    ids = {}
    if experiment_id:
        ids["experiment_id"] = experiment_id
    if trial_id:
        ids["trial_id"] = trial_id
    return ids


def ids_of(body: bytes) -> dict[str, str]:
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

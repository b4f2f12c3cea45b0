"""Logs: one line per event on stderr (JSON with ``TWEAKLINE_LOG_JSON=true``), each carrying the
trace and span ids and the experiment / trial ids of the message being handled."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from opentelemetry import trace

from tweakline.observability.attributes import handled_ids
from tweakline.runtime.settings import Settings


class TraceContextFilter(logging.Filter):
    """Adds ``trace_id``, ``span_id``, ``experiment_id`` and ``trial_id`` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        else:
            record.trace_id = record.span_id = None
        ids = handled_ids.get()
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

"""Metrics: tweakline's instruments (OpenTelemetry meters), a runner's utilisation and the queue gauges.

Exported over OTLP when configured, and on a Prometheus endpoint when ``TWEAKLINE_METRICS_PORT``
is not 0 (:mod:`tweakline.observability.exporters`). What a published message counts for is
:func:`tweakline.observability.domain.observe_published`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from opentelemetry import metrics

import tweakline
from tweakline.observability.attributes import INSTRUMENTATION

log = logging.getLogger(__name__)

_meter = metrics.get_meter(INSTRUMENTATION, tweakline.__version__)
TRIALS = _meter.create_counter("tweakline.trials", unit="{trial}", description="Trials finished, by status.")
TRIAL_DURATION = _meter.create_histogram(
    "tweakline.trial.duration", unit="s", description="Wall-clock time of one trial (cross-validation), by status."
)
EXPERIMENTS = _meter.create_counter("tweakline.experiments", unit="{experiment}", description="Experiments closed, by status.")
DECISIONS = _meter.create_counter(
    "tweakline.decisions", unit="{decision}", description="Evaluator decisions: promote, reject, error."
)
PROMOTIONS = _meter.create_counter("tweakline.promotions", unit="{model}", description="Models the gate promoted.")
REJECTIONS = _meter.create_counter("tweakline.rejections", unit="{model}", description="Models the gate rejected.")
DEPLOYMENTS = _meter.create_counter(
    "tweakline.deployments", unit="{deployment}", description="Deployments by status: deployed, failed, rolled_back."
)
ROLLBACKS = _meter.create_counter("tweakline.rollbacks", unit="{deployment}", description="Releases rolled back.")
DEAD_LETTERS = _meter.create_counter(
    "tweakline.dead_letters", unit="{message}", description="Messages a service refused (sent to dead letters), by service."
)
BUSY = _meter.create_counter("tweakline.busy.time", unit="s", description="Time spent handling messages (busy time of a runner).")


class _Utilisation:
    """Busy time over available time since the process started (a runner's utilisation)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.busy = 0.0

    def add(self, seconds: float) -> None:
        self.busy += seconds
        BUSY.add(seconds)

    def observe(self, _options: Any) -> list[metrics.Observation]:
        from tweakline.observability.exporters import current  # set-up imports this module

        telemetry = current()
        if telemetry is None or telemetry.service != "trial-runner":
            return []  # only a runner's busy share means something (its one trial at a time)
        available = max(1e-9, time.monotonic() - self.started)
        return [metrics.Observation(min(1.0, self.busy / available))]


utilisation = _Utilisation()
"""This process's busy time (added by the consume middleware)."""
_meter.create_observable_gauge(
    "tweakline.runner.utilization",
    callbacks=[utilisation.observe],
    unit="1",
    description="A trial-runner's busy time over its available time since it started (0..1).",
)

# consumer name -> (pending, in flight), refreshed by watch_queues()
_queues: dict[str, tuple[int, int]] = {}


def _observe_pending(_options: Any) -> list[metrics.Observation]:
    return [metrics.Observation(pending, {"consumer": name}) for name, (pending, _) in _queues.items()]


def _observe_in_flight(_options: Any) -> list[metrics.Observation]:
    return [metrics.Observation(acked, {"consumer": name}) for name, (_, acked) in _queues.items()]


_meter.create_observable_gauge(
    "tweakline.queue.depth",
    callbacks=[_observe_pending],
    unit="{message}",
    description="Messages waiting for a durable consumer (trial-runners: trials not yet started).",
)
_meter.create_observable_gauge(
    "tweakline.queue.in_flight",
    callbacks=[_observe_in_flight],
    unit="{message}",
    description="Messages delivered to a durable consumer and not yet acknowledged.",
)


async def watch_queues(js: Any, consumers: list[tuple[str, str]], interval: float = 5.0) -> None:
    """Poll the consumers this service reads ((stream, durable) pairs) for the queue gauges."""
    while True:
        for stream, durable in consumers:
            try:
                info = await js.consumer_info(stream, durable)
                _queues[durable] = (int(info.num_pending or 0), int(info.num_ack_pending or 0))
            except Exception:  # a lost connection: keep the last value, try again
                log.debug("consumer info of %s failed", durable, exc_info=True)
        await asyncio.sleep(interval)


def observe_dead_letter(service: str) -> None:
    """Count one refused message (the dead-letter alert watches this)."""
    DEAD_LETTERS.add(1, {"service": service})

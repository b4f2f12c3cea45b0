"""The model server's own live figures per revision, published periodically for the post-promotion watch.

Why the server counts them itself rather than the deployer scraping ``/metrics``: the deployer
reaches every replica through the bus it already uses (no scrape target, no Prometheus needed),
and the figures are kept *per revision*, so the revision a promotion replaced is measured by the
same server, on the same traffic, just before the swap. Counts are cumulative since the revision
went live in this process, so replicas' summaries add up and a lost summary loses nothing.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import random
import socket
from collections import OrderedDict
from typing import Any

from tweakline.proto.messages import (
    LATENCY_BUCKETS_MS,
    STATS_MAX_LABELS,
    STATS_MAX_REVISIONS,
    STATS_MAX_SAMPLE,
    ModelStats,
    RevisionFigures,
)
from tweakline.proto.subjects import Subject, release_subject

log = logging.getLogger(__name__)

LABEL_CHARS = 64


class _Tally:
    """Running figures of one revision."""

    def __init__(self, revision: int) -> None:
        self.figures = RevisionFigures(revision=revision, latency_counts=[0] * (len(LATENCY_BUCKETS_MS) + 1))
        self._rng = random.Random(revision)

    def add(self, ok: bool, seconds: float, predictions: list[Any]) -> None:
        f = self.figures
        f.requests += 1
        f.errors += 0 if ok else 1
        ms = seconds * 1000
        f.latency_counts[bisect.bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
        f.max_latency_ms = max(f.max_latency_ms, round(ms, 3))
        for value in predictions:
            f.predictions += 1
            key = str(value)[:LABEL_CHARS]
            if key in f.labels or len(f.labels) < STATS_MAX_LABELS:
                f.labels[key] = f.labels.get(key, 0) + 1
            if isinstance(value, int | float) and not isinstance(value, bool):
                # Reservoir sampling: every prediction so far is in the sample with equal chance.
                if len(f.sample) < STATS_MAX_SAMPLE:
                    f.sample.append(float(value))
                else:
                    slot = self._rng.randrange(f.predictions)
                    if slot < STATS_MAX_SAMPLE:
                        f.sample[slot] = float(value)


class LiveFigures:
    """Figures of the last few revisions this server answered with (bounded: the oldest is dropped)."""

    def __init__(self, release: str, instance: str | None = None) -> None:
        self.release = release
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}"
        self._tallies: OrderedDict[int, _Tally] = OrderedDict()
        self.current: int | None = None

    def record(self, revision: int, *, ok: bool, seconds: float, predictions: list[Any] | None = None) -> None:
        """Count one ``/predict`` answer of ``revision`` (``ok=False``: the model failed it)."""
        tally = self._tallies.get(revision)
        if tally is None:
            tally = self._tallies[revision] = _Tally(revision)
            while len(self._tallies) > STATS_MAX_REVISIONS:
                self._tallies.popitem(last=False)
        self._tallies.move_to_end(revision)
        tally.add(ok, seconds, predictions or [])

    def summary(self) -> ModelStats:
        """The summary published on the bus."""
        return ModelStats(
            release=self.release,
            instance=self.instance[:200],
            revision=self.current,
            revisions=[t.figures.model_copy(deep=True) for t in self._tallies.values()],
        )


async def publish_periodically(nc: Any, figures: LiveFigures, interval: float) -> None:
    """Publish ``figures`` on ``tweakline.models.stats.<release>`` every ``interval`` seconds until cancelled.

    Core NATS: nothing is stored, a summary nobody listens to costs nothing. A failed publish
    (a reconnecting connection) is logged and the next one tries again: serving never depends on it.
    """
    subject = release_subject(Subject.MODEL_STATS, figures.release)
    while True:
        await asyncio.sleep(interval)
        try:
            await nc.publish(subject, figures.summary().model_dump_json().encode())
        except Exception as exc:
            log.warning("could not publish live figures of release %s: %s", figures.release, exc)

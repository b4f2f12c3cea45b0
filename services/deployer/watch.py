"""The post-promotion watch: judge a new revision's live figures against the revision it replaced.

The model servers publish their own figures per revision (:class:`~tweakline.proto.messages.ModelStats`,
cumulative since each revision went live there). For ``deploy.watch.window`` after a promotion the
deployer keeps the latest summary of every server of the release, adds the replicas up, and
compares the new revision with the previous one — the Flagger/Argo analysis step, for models:

* error rate: the new revision's minus the previous one's, against ``max_error_rate_increase``;
* latency: the p95 ratio against ``max_latency_ratio`` (a rise under ``min_latency_increase_ms``
  is noise, never a regression);
* prediction shift: how far each revision's live predictions are from the probe set's targets
  (total-variation distance, binned by the probe set's classes or target deciles); the rise over
  the previous revision's distance, against ``max_prediction_shift``. A better model that replaces
  a majority-class one moves its predictions a lot, but towards the probe set: no regression.

No verdict before the new revision has ``min_requests`` answers. Without figures of the previous
revision (a restarted server, a first release) the error rate is judged against zero and the
other figures are not judged. The logic here has no broker in it; the deployer's handlers drive it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from tweakline.proto.messages import LATENCY_BUCKETS_MS, ModelStats, RevisionFigures
from tweakline.proto.tweakfile import WatchSpec

# Summaries older than this many publishing intervals are a server that went away; a generous
# bound in seconds, since the interval is the server's setting, not ours.
STALE_S = 300.0
MAX_INSTANCES = 64  # servers per release whose summaries are kept
MAX_RELEASES = 1000
REGRESSION_SHIFT_BINS = 10


class Outcome(StrEnum):
    """A watch's verdict so far."""

    PENDING = "pending"  # too few requests yet
    PASSED = "passed"  # nothing regressed (so far)
    REGRESSED = "regressed"


@dataclass
class Verdict:
    """What the comparison found, with the figures that decided it."""

    outcome: Outcome
    reason: str
    figures: dict[str, float] = field(default_factory=dict)


def merge(parts: list[RevisionFigures]) -> RevisionFigures | None:
    """The figures of one revision added up over servers (replicas); ``None`` if there are none."""
    if not parts:
        return None
    total = RevisionFigures(revision=parts[0].revision, latency_counts=[0] * (len(LATENCY_BUCKETS_MS) + 1))
    for part in parts:
        total.requests += part.requests
        total.errors += part.errors
        total.predictions += part.predictions
        total.max_latency_ms = max(total.max_latency_ms, part.max_latency_ms)
        if list(part.latency_buckets_ms) == list(LATENCY_BUCKETS_MS):  # another layout cannot be added up
            for i, count in enumerate(part.latency_counts[: len(total.latency_counts)]):
                total.latency_counts[i] += count
        for label, count in part.labels.items():
            total.labels[label] = total.labels.get(label, 0) + count
        total.sample.extend(part.sample)
    return total


def error_rate(figures: RevisionFigures) -> float:
    """Failed answers per answer."""
    return figures.errors / figures.requests if figures.requests else 0.0


def latency_quantile(figures: RevisionFigures, q: float = 0.95) -> float | None:
    """The ``q`` latency in ms, as the upper bound of the bucket it falls in (the slowest answer beyond the last)."""
    counts = figures.latency_counts
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        seen += count
        if seen >= rank and count:
            return LATENCY_BUCKETS_MS[i] if i < len(LATENCY_BUCKETS_MS) else figures.max_latency_ms
    return figures.max_latency_ms


def _bins(probe: dict[str, Any]) -> tuple[str, Any] | None:
    """How predictions are binned: the probe set's classes, or the deciles of its targets."""
    targets = probe.get("targets") or []
    if not targets:
        return None
    if probe.get("task") == "classification":
        return "classes", sorted({str(t) for t in targets})
    values = np.asarray(targets, dtype=float)
    return "edges", np.unique(np.quantile(values, np.linspace(0, 1, REGRESSION_SHIFT_BINS + 1)[1:-1]))


def _normalised(counts: list[float]) -> np.ndarray | None:
    total = float(sum(counts))
    return None if total == 0 else np.asarray(counts, dtype=float) / total


def _binned(labels: dict[str, int], sample: list[float], bins: tuple[str, Any]) -> np.ndarray | None:
    kind, how = bins
    if kind == "classes":
        counts = [labels.get(c, 0) for c in how]
        counts.append(sum(v for k, v in labels.items() if k not in set(how)))  # values the probe set never has
        return _normalised(counts)
    if not sample:
        return None
    return _normalised(np.bincount(np.searchsorted(how, np.asarray(sample)), minlength=len(how) + 1).tolist())


def prediction_shift(figures: RevisionFigures, probe: dict[str, Any]) -> float | None:
    """Total-variation distance (0: same, 1: disjoint) of a revision's live predictions from the probe set's targets.

    A model that predicts what the probe set holds scores near 0 whatever its traffic; one that
    predicts one class for everything scores high. Both revisions see the same traffic, so the
    rise from the previous revision's shift is the new revision's own.
    """
    bins = _bins(probe)
    if bins is None:
        return None
    kind, how = bins
    targets = probe["targets"]
    if kind == "classes":
        expected = _binned({c: sum(str(t) == c for t in targets) for c in how}, [], bins)
    else:
        expected = _binned({}, [float(t) for t in targets], bins)
    live = _binned(figures.labels, figures.sample, bins)
    if expected is None or live is None:
        return None
    return float(0.5 * np.abs(live - expected).sum())


def judge(
    new: RevisionFigures | None, old: RevisionFigures | None, spec: WatchSpec, probe: dict[str, Any] | None = None
) -> Verdict:
    """Compare the new revision's live figures with the previous revision's (see the module docstring)."""
    answered = new.requests if new is not None else 0
    if new is None or answered < spec.min_requests:
        return Verdict(Outcome.PENDING, f"{answered} live requests of the {spec.min_requests} needed for a verdict")
    baseline = old if old is not None and old.requests >= spec.min_requests else None
    rate, before = error_rate(new), error_rate(baseline) if baseline is not None else 0.0
    figures: dict[str, float] = {"requests": answered, "error_rate": rate, "previous_error_rate": before}
    against = f"revision {baseline.revision}" if baseline is not None else "no figures of the previous revision: against 0"
    if rate - before > spec.max_error_rate_increase:
        return Verdict(
            Outcome.REGRESSED,
            f"live error rate {rate:.1%} ({new.errors} of {answered} requests) vs {before:.1%} ({against}): "
            f"a rise of {rate - before:.1%}, above the allowed {spec.max_error_rate_increase:.1%}",
            figures,
        )
    parts = [f"error rate {rate:.1%} vs {before:.1%}"]
    if baseline is not None:
        p95, p95_before = latency_quantile(new), latency_quantile(baseline)
        if p95 is not None and p95_before is not None:
            figures |= {"p95_ms": p95, "previous_p95_ms": p95_before}
            limit = max(p95_before * spec.max_latency_ratio, p95_before + spec.min_latency_increase_ms)
            if p95 > limit:
                return Verdict(
                    Outcome.REGRESSED,
                    f"live p95 latency {p95:g} ms vs {p95_before:g} ms (revision {baseline.revision}): "
                    f"{p95 / max(p95_before, 1e-9):.1f}x, above the allowed {spec.max_latency_ratio:g}x "
                    f"(and +{spec.min_latency_increase_ms:g} ms)",
                    figures,
                )
            parts.append(f"p95 {p95:g} ms vs {p95_before:g} ms")
        if spec.max_prediction_shift is not None and probe is not None:
            shift, shift_before = prediction_shift(new, probe), prediction_shift(baseline, probe)
            if shift is not None and shift_before is not None:
                figures |= {"prediction_shift": shift, "previous_prediction_shift": shift_before}
                if shift - shift_before > spec.max_prediction_shift:
                    return Verdict(
                        Outcome.REGRESSED,
                        f"live predictions {shift:.2f} away from the probe set's targets vs {shift_before:.2f} "
                        f"(revision {baseline.revision}; total variation): a rise of {shift - shift_before:.2f}, "
                        f"above the allowed {spec.max_prediction_shift:g}",
                        figures,
                    )
                parts.append(f"prediction shift from the probe set {shift:.2f} vs {shift_before:.2f}")
    else:
        parts.append("no figures of the previous revision for latency and predictions")
    return Verdict(Outcome.PASSED, f"{answered} live requests: " + ", ".join(parts), figures)


@dataclass
class Watch:
    """One release's watch: which revision, against which, until when."""

    release: str
    revision: int
    previous: int | None
    spec: WatchSpec
    probe: dict[str, Any] | None
    deadline: float  # time.monotonic()
    concluded: bool = False


class LiveBook:
    """The latest summary of every model server, per release (bounded, stale ones forgotten)."""

    def __init__(self) -> None:
        self._latest: dict[str, dict[str, tuple[float, ModelStats]]] = {}

    def add(self, stats: ModelStats) -> None:
        """Keep ``stats`` as its server's latest."""
        servers = self._latest.get(stats.release)
        if servers is None:
            if len(self._latest) >= MAX_RELEASES:
                self._latest.pop(next(iter(self._latest)))
            servers = self._latest[stats.release] = {}
        if stats.instance not in servers and len(servers) >= MAX_INSTANCES:
            servers.pop(min(servers, key=lambda k: servers[k][0]))
        servers[stats.instance] = (time.monotonic(), stats)

    def figures(self, release: str, revision: int | None) -> RevisionFigures | None:
        """``revision``'s figures added up over the release's servers heard from recently."""
        if revision is None:
            return None
        now = time.monotonic()
        parts = [
            f
            for seen, stats in self._latest.get(release, {}).values()
            if now - seen <= STALE_S
            for f in stats.revisions
            if f.revision == revision
        ]
        return merge(parts)

    def judge(self, watch: Watch) -> Verdict:
        """The watch's verdict on what the servers said last."""
        return judge(
            self.figures(watch.release, watch.revision), self.figures(watch.release, watch.previous), watch.spec, watch.probe
        )

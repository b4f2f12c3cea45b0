"""The post-promotion watch's comparison: every threshold trips, a good revision passes, too few requests wait."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.factories import make_spec
from tweakline.deployer.watch import LiveBook, Outcome, Watch, judge, latency_quantile, merge, prediction_shift
from tweakline.model_server.stats import LiveFigures
from tweakline.proto.messages import ModelStats, RevisionFigures
from tweakline.proto.tweakfile import WatchSpec

SPEC = WatchSpec(min_requests=20)
CLASSES = {"task": "classification", "targets": [0, 1, 2, 0, 1, 2]}


def figures(revision: int, *, ok: int = 100, errors: int = 0, ms: float = 4.0, labels: dict | None = None) -> RevisionFigures:
    """Figures as a model server counts them: ``ok`` good answers and ``errors`` failed ones, each taking ``ms``."""
    live = LiveFigures("r", "test")
    spread = labels or {0: 1, 1: 1, 2: 1}
    values = [v for v, n in spread.items() for _ in range(n)]
    for i in range(ok):
        live.record(revision, ok=True, seconds=ms / 1000, predictions=[values[i % len(values)]])
    for _ in range(errors):
        live.record(revision, ok=False, seconds=ms / 1000)
    return live.summary().revisions[0]


def test_a_good_revision_passes_with_its_figures() -> None:
    verdict = judge(figures(2, ok=99, ms=4.5), figures(1, ok=99, ms=4.0), SPEC, CLASSES)  # 99: a third per class
    assert verdict.outcome is Outcome.PASSED, verdict.reason
    assert verdict.figures["error_rate"] == 0.0 and verdict.figures["p95_ms"] == 5.0
    assert verdict.figures["prediction_shift"] == pytest.approx(0.0, abs=0.01)
    assert verdict.reason == (
        "99 live requests: error rate 0.0% vs 0.0%, p95 5 ms vs 5 ms, prediction shift from the probe set 0.00 vs 0.00"
    )


def test_too_few_requests_is_no_verdict_yet() -> None:
    verdict = judge(figures(2, ok=10, errors=9), figures(1), SPEC, CLASSES)
    assert verdict.outcome is Outcome.PENDING
    assert verdict.reason == "19 live requests of the 20 needed for a verdict"
    assert judge(None, figures(1), SPEC).outcome is Outcome.PENDING


def test_an_error_rate_rise_above_the_threshold_regresses() -> None:
    old = figures(1, ok=98, errors=2)  # 2%
    within = judge(figures(2, ok=94, errors=6), old, SPEC, CLASSES)  # 6%: +4 points, allowed 5
    assert within.outcome is Outcome.PASSED, within.reason
    worse = judge(figures(2, ok=90, errors=10), old, SPEC, CLASSES)  # 10%: +8 points
    assert worse.outcome is Outcome.REGRESSED
    assert worse.reason == (
        "live error rate 10.0% (10 of 100 requests) vs 2.0% (revision 1): a rise of 8.0%, above the allowed 5.0%"
    )
    assert worse.figures["error_rate"] == pytest.approx(0.1) and worse.figures["previous_error_rate"] == pytest.approx(0.02)


def test_without_figures_of_the_previous_revision_errors_are_judged_against_zero() -> None:
    verdict = judge(figures(2, ok=80, errors=20), None, SPEC, CLASSES)
    assert verdict.outcome is Outcome.REGRESSED
    assert "vs 0.0% (no figures of the previous revision: against 0)" in verdict.reason
    calm = judge(figures(2, ms=900), figures(1, ok=5), SPEC, CLASSES)  # a baseline of 5 requests is no baseline
    assert calm.outcome is Outcome.PASSED and "no figures of the previous revision for latency" in calm.reason


def test_a_latency_rise_above_the_ratio_regresses_but_small_rises_are_noise() -> None:
    slow = judge(figures(2, ms=400), figures(1, ms=40), SPEC, CLASSES)
    assert slow.outcome is Outcome.REGRESSED
    assert slow.reason == ("live p95 latency 500 ms vs 50 ms (revision 1): 10.0x, above the allowed 2x (and +50 ms)")
    # 1 ms -> 5 ms is five times slower, but 4 ms is under min_latency_increase_ms: noise.
    assert judge(figures(2, ms=4.5), figures(1, ms=0.8), SPEC, CLASSES).outcome is Outcome.PASSED
    strict = SPEC.model_copy(update={"min_latency_increase_ms": 0.0})
    assert judge(figures(2, ms=4.5), figures(1, ms=0.8), strict, CLASSES).outcome is Outcome.REGRESSED


def test_predictions_moving_away_from_the_probe_set_regress_and_towards_it_do_not() -> None:
    good = figures(1, ok=99, labels={0: 1, 1: 1, 2: 1})  # the probe set's own mix of classes
    constant = figures(2, labels={2: 1})  # always class 2
    verdict = judge(constant, good, SPEC, CLASSES)
    assert verdict.outcome is Outcome.REGRESSED
    assert verdict.figures["prediction_shift"] == pytest.approx(2 / 3, abs=0.01)
    assert verdict.figures["previous_prediction_shift"] == pytest.approx(0.0, abs=0.01)
    assert verdict.reason.startswith("live predictions 0.67 away from the probe set's targets vs 0.00 (revision 1")
    assert "a rise of 0.67, above the allowed 0.3" in verdict.reason
    # The other way round (a good model replacing a majority-class one) is a big move, but towards the probe set.
    better = judge(figures(3, ok=99, labels={0: 1, 1: 1, 2: 1}), constant, SPEC, CLASSES)
    assert better.outcome is Outcome.PASSED and "prediction shift from the probe set 0.00 vs 0.67" in better.reason
    off = SPEC.model_copy(update={"max_prediction_shift": None})
    assert judge(constant, good, off, CLASSES).outcome is Outcome.PASSED


def test_the_shift_of_a_regression_is_binned_by_the_probe_targets() -> None:
    probe = {"task": "regression", "targets": [float(v) for v in range(100)]}
    spread = RevisionFigures(revision=1, sample=[float(v) + 0.5 for v in range(100)])
    low = RevisionFigures(revision=2, sample=[float(v) for v in range(50)])
    assert prediction_shift(spread, probe) == pytest.approx(0.0, abs=0.05)
    assert prediction_shift(low, probe) == pytest.approx(0.5, abs=0.05)
    assert prediction_shift(RevisionFigures(revision=3), probe) is None  # no numeric predictions heard
    assert judge(figures(2, labels={0: 1}), figures(1), SPEC, {"task": "classification", "targets": []}).outcome is Outcome.PASSED


def test_replicas_add_up_and_stale_or_other_releases_do_not_count() -> None:
    book = LiveBook()
    for instance, errors in (("a", 15), ("b", 0)):
        live = LiveFigures("wine", instance)
        for _ in range(50):
            live.record(2, ok=True, seconds=0.003, predictions=[1])
        for _ in range(errors):
            live.record(2, ok=False, seconds=0.003)
        book.add(live.summary())
    book.add(ModelStats(release="other", instance="a", revisions=[figures(2, ok=0, errors=100)]))
    total = book.figures("wine", 2)
    assert total is not None and (total.requests, total.errors) == (115, 15)
    assert latency_quantile(total) == 5.0
    watch = Watch("wine", 2, None, SPEC, None, deadline=0.0)
    assert book.judge(watch).outcome is Outcome.REGRESSED  # 13% against 0
    assert merge([]) is None and book.figures("wine", None) is None


def test_the_server_keeps_a_bounded_record() -> None:
    live = LiveFigures("wine", "x")
    for revision in range(1, 8):
        live.record(revision, ok=True, seconds=0.001, predictions=[f"label-{i}" for i in range(200)])
    summary = ModelStats.model_validate_json(live.summary().model_dump_json())  # what the deployer accepts
    assert [f.revision for f in summary.revisions] == [4, 5, 6, 7]
    assert len(summary.revisions[-1].labels) == 64 and summary.revisions[-1].predictions == 200
    big = live.summary().model_dump()
    big["revisions"][0]["sample"] = [1.0] * 1000
    with pytest.raises(ValidationError, match="sample"):
        ModelStats.model_validate(big)


def test_the_tweak_file_reads_the_watch_settings() -> None:
    spec = make_spec(deploy={"release": "wine", "watch": {"window": "2m", "min_requests": 5, "max_prediction_shift": None}})
    assert spec.deploy is not None
    watch = spec.deploy.watch
    assert (watch.enabled, watch.window, watch.min_requests, watch.max_prediction_shift) == (True, 120.0, 5, None)
    assert (watch.max_error_rate_increase, watch.max_latency_ratio) == (0.05, 2.0)
    with pytest.raises(ValidationError, match="max_latency_ratio"):
        make_spec(deploy={"release": "wine", "watch": {"max_latency_ratio": 0.5}})

"""One experiment's stuck evaluation never delays another's decision, and is itself failed with the reason.

The evaluator runs as its app (in this process) against the real mTLS nats-server. The stuck
evaluation is an injected delay where a real one gets stuck: its refit blocks a worker thread
(as a huge production model loading, or a long fit, does) until the test ends.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.factories import make_tweak
from tweakline.evaluator import handlers
from tweakline.evaluator.app import create_app as evaluator_app
from tweakline.proto.messages import (
    Decision,
    EvaluationCompleted,
    ExperimentCompleted,
    ExperimentStatus,
    TrialRecord,
    TrialStatus,
    utcnow,
)
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, all_of, subject_for
from tweakline.runtime.bus import connect

STUCK_C = 0.4242  # the best params that make the injected refit hang
TIME_LIMIT_S = 8.0


@pytest.fixture
def stuck_refit(monkeypatch: pytest.MonkeyPatch):
    """Refits of ``C=STUCK_C`` block their thread until the test ends; the others run for real."""
    release = threading.Event()
    real = handlers.refit_and_score

    def refit(split, spec, params, allowed, task):
        if params.get("C") == STUCK_C:
            release.wait(120)
        return real(split, spec, params, allowed, task)

    monkeypatch.setattr(handlers, "refit_and_score", refit)
    yield release
    release.set()


@pytest.fixture
async def evaluator(nats, stuck_refit: threading.Event) -> AsyncIterator[None]:
    app = evaluator_app(nats.settings(Identity.EVALUATOR, evaluation_timeout_s=TIME_LIMIT_S, evaluator_concurrency=2))
    await app.start()
    try:
        yield
    finally:
        stuck_refit.set()  # a thread cannot be killed: let the abandoned refit end with the test
        await app.stop()


def _completed(exp_id: str, c: float) -> ExperimentCompleted:
    best = TrialRecord(number=0, params={"C": c}, status=TrialStatus.OK, score=0.9)
    tweak = make_tweak("stuck-evaluation", objective={"metric": "accuracy", "cv": 2})
    return ExperimentCompleted(
        experiment_id=exp_id, tweak=tweak, status=ExperimentStatus.COMPLETED, trials=[best], best=best, started_at=utcnow()
    )


async def test_a_stuck_evaluation_does_not_delay_another_experiments_decision(nats, evaluator) -> None:
    run = uuid.uuid4().hex[:6]
    stuck, quick = f"stuck-{run}", f"quick-{run}"
    nc = await connect(nats.settings(Identity.ADMIN), "test-stuck-evaluation")
    decisions: dict[str, tuple[float, EvaluationCompleted]] = {}
    both = asyncio.Event()

    async def on_decision(msg) -> None:
        evaluation = EvaluationCompleted.model_validate_json(msg.data)
        if evaluation.experiment_id in (stuck, quick):
            decisions.setdefault(evaluation.experiment_id, (time.monotonic(), evaluation))
            if len(decisions) == 2:
                both.set()

    await nc.subscribe(all_of(Subject.EVALUATION_COMPLETED), cb=on_decision)
    try:
        js = nc.jetstream()
        started = time.monotonic()
        for exp_id, c in ((stuck, STUCK_C), (quick, 1.0)):  # the stuck one first
            await js.publish(
                subject_for(Subject.EXPERIMENT_COMPLETED, exp_id),
                _completed(exp_id, c).model_dump_json().encode(),
                stream=Stream.EVENTS.value,
            )
        await asyncio.wait_for(both.wait(), 120)
    finally:
        await nc.close()

    quick_at, quick_decision = decisions[quick]
    stuck_at, stuck_decision = decisions[stuck]
    print(f"quick decision after {quick_at - started:.1f} s, stuck one failed after {stuck_at - started:.1f} s")
    # The other experiment was decided while the stuck one still hung, not after it.
    assert quick_decision.decision in (Decision.PROMOTE, Decision.REJECT), quick_decision.reasons
    assert quick_at < stuck_at
    assert quick_at - started < TIME_LIMIT_S
    # The stuck one is failed at its time limit, with the reason, as a decision ERROR.
    assert stuck_decision.decision is Decision.ERROR
    assert stuck_decision.reasons == [f"evaluation exceeded its time limit of {TIME_LIMIT_S:g}s (TWEAKLINE_EVALUATION_TIMEOUT_S)"]
    assert stuck_at - started >= TIME_LIMIT_S

"""Rollback because the live model is worse: the post-deploy probe scores the served predictions
below the gate, and the deployer rolls back by itself, on the real local stack.

1. A good SVC on wine is tuned, judged and promoted as revision 1 (gate: accuracy >= 0.9), and a
   real ``tweakline serve`` follows the release under a steady stream of requests.
2. A degraded artifact (a constant predictor) arrives as a promotion with the same gate, the same
   probe rows and post-deploy check — what a model whose stored artifact is not the model that was
   judged looks like to the deployer. The deployer makes it live; the server swaps to it; the
   probe's live accuracy misses the gate, and the deployer rolls back to revision 1 at once.
3. The history says why (``auto_rolled_back`` with the live metric and the gate), the server
   serves revision 1 again, and not one request failed during either swap.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sklearn.datasets import load_wine
from sklearn.dummy import DummyClassifier

from tests.e2e.stories import run_story
from tests.model_server.serving import hammer, rows, start_server_on
from tests.waiting import until
from tweakline.client.follow import Outcome, follow, submit
from tweakline.deployer.control import releases
from tweakline.ml.artifacts import dump_model
from tweakline.proto.messages import Decision, ReleaseAction, Source, msg_id
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, subject_for
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import put_artifact
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e

RELEASE = "wine-quality"
GOOD = TweakFile.model_validate(
    {
        "apiVersion": "tweakline/v1",
        "kind": "Experiment",
        "metadata": {"name": "svc-quality"},
        "spec": {
            "dataset": {"source": "sklearn:wine", "test_size": 0.25, "seed": 0},
            "model": {"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.preprocessing.StandardScaler"]},
            "search": {"algorithm": "random", "seed": 0, "space": {"C": {"type": "categorical", "choices": [10.0]}}},
            "objective": {"metric": "accuracy", "cv": 2},
            "budget": {"max_trials": 1, "parallelism": 1},
            "gate": {"thresholds": {"accuracy": 0.9}},
            "deploy": {"target": "local", "release": RELEASE, "verify": {"timeout": "60s"}},
        },
    }
)


def test_a_live_model_worse_than_the_gate_is_rolled_back_automatically(tmp_path: Path) -> None:
    run_story(tmp_path, _story)


async def _story(stack: LocalStack, state: Path, tmp_path: Path) -> None:
    nc = await connect(stack.settings_for(Identity.ADMIN), "test")
    server = None
    try:
        exp_id = await submit(nc, GOOD, Source(trigger="test"))
        first = await follow(nc, Outcome(experiment_id=exp_id, tweak=GOOD), timeout=240, alive=stack.check)
        assert first.evaluation.decision is Decision.PROMOTE, first.evaluation.reasons
        assert first.deployment.revision == 1 and first.evaluation.probe is not None

        server = start_server_on(stack.url, state, RELEASE, tmp_path, timeout=120)  # a loaded machine
        await server.wait_for_revision(1)
        stop = asyncio.Event()
        answers: list[tuple[int, int | None]] = []
        # ~30 requests a second, not a busy loop: enough to see both swaps (the degraded revision is live
        # for the length of its probe), without taking a core from the deployer and evaluator.
        load = asyncio.create_task(hammer(server, stop, {"rows": rows(5)}, pause=0.02, seen=answers))

        # The degraded artifact: always class 2 (about a third of wine), far below the gate's 0.9.
        wine = load_wine()
        degraded = DummyClassifier(strategy="constant", constant=2).fit(wine.data, wine.target)
        js = nc.jetstream()
        artifact = await put_artifact(js, "models/degraded.skops", dump_model(degraded)[0])
        promotion = first.evaluation.model_copy(
            update={"experiment_id": "degraded-1", "artifact": artifact, "reasons": ["degraded artifact (test)"]}
        )
        await js.publish(
            subject_for(Subject.EVALUATION_COMPLETED, "degraded-1"),
            promotion.model_dump_json().encode(),
            stream=Stream.EVENTS.value,
            headers={"Nats-Msg-Id": msg_id("evaluation", "degraded-1"), "content-type": "application/json"},
        )

        store = await releases(js)

        async def rolled_back():
            found = await store.get(RELEASE)
            history = found[0] if found else None
            if history is None:
                return None
            done = [e for e in history.events if e.action is ReleaseAction.AUTO_ROLLED_BACK]
            return (history, done[0]) if done else None

        history, event = await until(rolled_back, "the deployer to roll the degraded revision back", timeout=120)
        assert history.current == 1 and event.revision == 1 and event.previous == 2
        assert "post-deploy check failed" in event.reason
        assert "live metrics on" in event.reason and "below the gate" in event.reason and "accuracy" in event.reason
        await server.wait_for_revision(1)
        # A request in flight at the swap may still be answered by the old revision: stop once one has seen it.
        await until(lambda: answers and answers[-1][1] == 1, "the requests to reach revision 1 again", timeout=60)
        stop.set()
        seen = await load
        assert {code for code, _ in seen} == {200}, [s for s in seen if s[0] != 200][:5]
        served = [rev for _, rev in seen]
        assert [b for a, b in zip(served, served[1:]) if a != b] == [2, 1]  # it was live, then swapped back
    finally:
        if server is not None:
            await server.close()
        await nc.close()

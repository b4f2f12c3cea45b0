"""The post-promotion watch on the real local stack: a good revision is left alone after its window,
a revision whose live error rate regresses is rolled back by the deployer on its own.

1. A good SVC on wine is tuned (1 trial), judged and promoted as revision 1; a real ``tweakline
   serve`` follows the release and publishes its live figures every 0.5 s, under steady traffic
   of two kinds of rows: wine rows, and wine rows with a negative first feature (valid input).
2. The same model is promoted again as revision 2: its watch (a 6 s window) sees the same error
   rate, latency and predictions as revision 1's and records that it passed; revision 2 stays.
3. A model that passes the post-deploy probe (wine rows only) but cannot predict rows with a
   negative value (a square root before the scaler) is promoted as revision 3. Live, half the
   requests fail; the watch compares that with revision 2's 0% and rolls back to revision 2,
   the error rates in the recorded reason.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from sklearn.datasets import load_wine
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

from tests.e2e.stories import run_story
from tests.model_server.serving import RunningServer, rows, start_server_on
from tests.waiting import until
from tweakline.client.follow import Outcome, follow, submit
from tweakline.deployer.control import releases
from tweakline.ml.artifacts import dump_model
from tweakline.proto.messages import DeadLetter, Decision, EvaluationCompleted, ReleaseAction, Source, msg_id
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, release_subject, subject_for
from tweakline.proto.tweakfile import TweakFile
from tweakline.runtime.bus import connect
from tweakline.runtime.objects import put_artifact
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e

RELEASE = "wine-watched"
TWEAK = TweakFile.model_validate(
    {
        "apiVersion": "tweakline/v1",
        "kind": "Experiment",
        "metadata": {"name": "svc-watched"},
        "spec": {
            "dataset": {"source": "sklearn:wine", "test_size": 0.25, "seed": 0},
            "model": {"estimator": "sklearn.svm.SVC", "pipeline": ["sklearn.preprocessing.StandardScaler"]},
            "search": {"algorithm": "random", "seed": 0, "space": {"C": {"type": "categorical", "choices": [10.0]}}},
            "objective": {"metric": "accuracy", "cv": 2},
            "budget": {"max_trials": 1, "parallelism": 1},
            "gate": {"thresholds": {"accuracy": 0.9}},
            "deploy": {
                "target": "local",
                "release": RELEASE,
                "verify": {"timeout": "60s"},
                "watch": {"window": "6s", "min_requests": 10},
            },
        },
    }
)


def test_the_watch_rolls_back_a_live_regression_and_leaves_a_good_revision_alone(tmp_path: Path) -> None:
    run_story(tmp_path, _story)


async def _traffic(server: RunningServer, stop: asyncio.Event, payload: dict, seen: list[tuple[int, int | None]]) -> None:
    while not stop.is_set():
        response = await server.client.post("/predict", json=payload)
        seen.append((response.status_code, response.json().get("revision")))
        await asyncio.sleep(0.01)


async def _story(stack: LocalStack, state: Path, tmp_path: Path) -> None:
    nc = await connect(stack.settings_for(Identity.ADMIN), "test")
    server = None
    stop = asyncio.Event()
    seen: list[tuple[int, int | None]] = []
    load: list[asyncio.Task[None]] = []
    mark = 0
    try:
        exp_id = await submit(nc, TWEAK, Source(trigger="test"))
        first = await follow(nc, Outcome(experiment_id=exp_id, tweak=TWEAK), timeout=240, alive=stack.check)
        assert first.evaluation.decision is Decision.PROMOTE, first.evaluation.reasons
        assert first.deployment.revision == 1

        server = start_server_on(stack.url, state, RELEASE, tmp_path, {"TWEAKLINE_STATS_INTERVAL_S": "0.5"}, timeout=120)
        await server.wait_for_revision(1)
        negative = rows(5, start=40)
        for row in negative:
            row[next(iter(row))] = -1.0  # valid input; only a model taking square roots refuses it
        load += [
            asyncio.create_task(_traffic(server, stop, {"rows": rows(5)}, seen)),
            asyncio.create_task(_traffic(server, stop, {"rows": negative}, seen)),
        ]
        await until(lambda: sum(rev == 1 for _, rev in seen) >= 30 or None, "traffic on revision 1", timeout=60)

        js = nc.jetstream()
        store = await releases(js)

        async def promote(experiment_id: str, evaluation: EvaluationCompleted) -> None:
            await js.publish(
                subject_for(Subject.EVALUATION_COMPLETED, experiment_id),
                evaluation.model_dump_json().encode(),
                stream=Stream.EVENTS.value,
                headers={"Nats-Msg-Id": msg_id("evaluation", experiment_id), "content-type": "application/json"},
            )

        async def event_of(revision: int, action: ReleaseAction, start: str):
            history = (await store.get(RELEASE))[0]
            found = [e for e in history.events if e.action is action and e.revision == revision and e.reason.startswith(start)]
            return (history, found[0]) if found else None

        # 2. The same good model again: watched for 6 s, found no worse, left live.
        again = first.evaluation.model_copy(update={"experiment_id": "good-2", "reasons": ["the same model (test)"]})
        await promote("good-2", again)
        history, passed = await until(
            lambda: event_of(2, ReleaseAction.VERIFIED, "post-promotion watch passed"), "revision 2's watch to pass", timeout=90
        )
        print("revision 2:", passed.reason)
        assert history.current == 2
        assert "live requests: error rate 0.0% vs 0.0%" in passed.reason
        shift = re.search(r"prediction shift from the probe set (\d\.\d\d) vs (\d\.\d\d)", passed.reason)
        assert shift is not None and abs(float(shift.group(1)) - float(shift.group(2))) < 0.1  # the same model

        # Bad summaries (not JSON; a sample over its bound) are dead-lettered; the deployer carries on.
        stats_subject = release_subject(Subject.MODEL_STATS, RELEASE)
        oversized = {"release": RELEASE, "instance": "x", "revisions": [{"revision": 3, "sample": [1.0] * 1000}]}
        await nc.publish(stats_subject, b"not json {")
        await nc.publish(stats_subject, json.dumps(oversized).encode())
        letters = await js.pull_subscribe(f"{Subject.DEAD_LETTER.value}.deployer", stream=Stream.DEAD_LETTERS.value)

        dead: list[DeadLetter] = []

        async def refused() -> list[DeadLetter] | None:
            try:
                batch = await letters.fetch(10, timeout=1)
            except NatsTimeoutError:
                batch = []
            dead.extend(d for d in (DeadLetter.model_validate_json(m.data) for m in batch) if d.subject == stats_subject)
            return dead if len(dead) >= 2 else None

        await until(refused, "the two bad summaries to be dead-lettered", timeout=30)
        assert {d.service for d in dead} == {"deployer"}
        assert any("sample" in d.reason for d in dead), [d.reason for d in dead]

        # 3. A model that passes the probe but fails live on rows with a negative value.
        wine = load_wine()
        fragile = make_pipeline(FunctionTransformer(np.sqrt), StandardScaler(), SVC(C=10)).fit(wine.data, wine.target)
        artifact = await put_artifact(js, "models/fragile.skops", dump_model(fragile)[0])
        bad = first.evaluation.model_copy(
            update={"experiment_id": "fragile-3", "artifact": artifact, "reasons": ["fragile artifact (test)"]}
        )
        await promote("fragile-3", bad)
        history, rolled = await until(
            lambda: event_of(2, ReleaseAction.AUTO_ROLLED_BACK, "post-promotion watch: revision 3 regressed"),
            "the watch to roll revision 3 back",
            timeout=90,
        )
        print("revision 3:", rolled.reason)
        assert history.current == 2 and rolled.previous == 3 and rolled.by == "deployer"
        assert "live error rate" in rolled.reason and "vs 0.0% (revision 2)" in rolled.reason
        assert "above the allowed 5.0%" in rolled.reason
        verified = [e for e in history.events if e.action is ReleaseAction.VERIFIED and e.revision == 3]
        assert verified and verified[0].reason.startswith("post-deploy check passed")  # the probe alone let it through
        await server.wait_for_revision(2)
        mark = len(seen)
        await until(lambda: len(seen) >= mark + 10 or None, "traffic after the rollback", timeout=30)
    finally:
        stop.set()
        failures = [r for r in await asyncio.gather(*load, return_exceptions=True) if r is not None]
        if server is not None:
            await server.close()
        await nc.close()
    assert not failures, failures  # no request failed to get an answer (a refused connection, say)
    codes = {code for code, _ in seen}
    assert codes == {200, 422}, codes  # only the fragile revision ever failed a request
    assert all(code == 200 and rev == 2 for code, rev in seen[mark + 2 :]), seen[mark:][:10]

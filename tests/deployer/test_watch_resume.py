"""A restarted deployer picks up the post-promotion watches still inside their window (from the release history)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from types import SimpleNamespace

from tests.model_server.serving import FEATURES
from tweakline.deployer.control import releases
from tweakline.deployer.handlers import WATCH_MARK, Deployer
from tweakline.deployer.releases import record_event, record_promotion
from tweakline.proto.messages import (
    ArtifactRef,
    Decision,
    EvaluationCompleted,
    ReleaseAction,
    ReleaseEvent,
    ReleaseHistory,
    utcnow,
)
from tweakline.proto.permissions import Identity
from tweakline.proto.tweakfile import DeploySpec
from tweakline.runtime.bus import connect

ARTIFACT = ArtifactRef(bucket="tweakline-artifacts", name="models/x.skops", sha256="0" * 64, size=1)


async def _promote(store, release: str, number: int, watch: dict) -> None:
    evaluation = EvaluationCompleted(
        experiment_id=f"{release}-{number}",
        decision=Decision.PROMOTE,
        artifact=ARTIFACT,
        release=release,
        target="local",
        features=FEATURES,
        deploy=DeploySpec(release=release, watch=watch),
    )
    await record_promotion(store, release, "local", evaluation, "SVC")


async def test_watches_inside_their_window_and_without_a_verdict_are_resumed(nats) -> None:
    tag = uuid.uuid4().hex[:6]
    names = {k: f"resume-{k}-{tag}" for k in ("open", "judged", "off", "closed", "rolled")}
    nc = await connect(nats.settings(Identity.DEPLOYER), "test-deployer")
    deployer = Deployer(SimpleNamespace(js=nc.jetstream(), settings=nats.settings(Identity.DEPLOYER)))
    try:
        store = await releases(nc.jetstream())
        await _promote(store, names["open"], 1, {"window": "1h"})
        await _promote(store, names["open"], 2, {"window": "1h"})
        await _promote(store, names["judged"], 1, {"window": "1h"})
        event = ReleaseEvent(action=ReleaseAction.VERIFIED, revision=1, reason=f"{WATCH_MARK} passed after 3600s: ...")
        await record_event(store, names["judged"], event)
        await _promote(store, names["off"], 1, {"enabled": False})
        await _promote(store, names["closed"], 1, {"window": "10m"})

        def long_ago(history: ReleaseHistory | None) -> ReleaseHistory:
            assert history is not None
            events = [e.model_copy(update={"at": utcnow() - timedelta(hours=1)}) for e in history.events]
            return history.model_copy(update={"events": events})

        await store.mutate(names["closed"], long_ago)
        await _promote(store, names["rolled"], 1, {"window": "1h"})
        await _promote(store, names["rolled"], 2, {"window": "1h"})
        back = ReleaseEvent(action=ReleaseAction.AUTO_ROLLED_BACK, revision=1, previous=2, reason="post-deploy check failed")
        await store.mutate(names["rolled"], lambda h: h.model_copy(update={"current": 1, "events": [*h.events, back]}))

        deployer.store = store
        await deployer.resume_watches()
        resumed = {n: w for n, w in deployer.watches.items() if n in names.values()}
        assert set(resumed) == {names["open"]}
        watch = resumed[names["open"]]
        assert (watch.revision, watch.previous, watch.spec.window, watch.probe) == (2, 1, 3600.0, None)
        left = watch.deadline - asyncio.get_running_loop().time()
        assert 3500 < left <= 3600
    finally:
        for task in list(deployer._tasks):
            task.cancel()
        await nc.close()

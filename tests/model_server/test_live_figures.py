"""The model server's live figures per revision (what the post-promotion watch judges), and their publishing."""

from __future__ import annotations

import asyncio

import httpx
import nats
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from tests.waiting import until
from tweakline.model_server.api import ServerMetrics, create_http_app
from tweakline.model_server.model import LoadedModel, ModelSlot
from tweakline.model_server.stats import LiveFigures, publish_periodically
from tweakline.proto.messages import PROBE_HEADER, ArtifactRef, ModelStats
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Subject, release_subject
from tweakline.runtime.bus import connect

FEATURES = ("a", "b")
ARTIFACT = ArtifactRef(bucket="b", name="m.skops", sha256="0" * 64, size=1)


def _models() -> tuple[object, object]:
    X = np.random.default_rng(0).uniform(1, 2, size=(60, 2))
    y = (X[:, 0] > 1.5).astype(int)
    plain = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    fragile = make_pipeline(FunctionTransformer(np.sqrt), StandardScaler(), LogisticRegression()).fit(X, y)
    return plain, fragile


def _serving(model: object) -> tuple[ModelSlot, LiveFigures, object]:
    """A model server's app serving ``model`` as revision 1 of release ``r``, with its live figures."""
    slot, figures = ModelSlot(), LiveFigures("r", "test")
    slot.swap(LoadedModel("r", 1, "e-1", "LogisticRegression", FEATURES, ARTIFACT, model))
    return slot, figures, create_http_app(slot, ServerMetrics(), "r", figures=figures)


async def test_answers_are_counted_per_revision_and_input_errors_are_not() -> None:
    plain, fragile = _models()
    slot, figures, app = _serving(plain)
    good = {"rows": [{"a": 1.2, "b": 1.0}, {"a": 1.9, "b": 1.0}]}
    negative = {"rows": [{"a": -1.0, "b": 1.0}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as client:
        assert (await client.post("/predict", json=good)).status_code == 200
        assert (await client.post("/predict", json=negative)).status_code == 200
        assert (await client.post("/predict", json={"rows": [{"a": 1.0}]})).status_code == 422  # the client's error
        slot.swap(LoadedModel("r", 2, "e-2", "LogisticRegression", FEATURES, ARTIFACT, fragile))
        assert (await client.post("/predict", json=good)).status_code == 200
        refused = await client.post("/predict", json=negative)
        assert refused.status_code == 422 and "cannot predict" in refused.json()["error"]  # the model's failure
    summary = figures.summary()
    assert summary.revision == 2
    one, two = summary.revisions
    assert (one.revision, one.requests, one.errors, one.predictions, one.labels) == (1, 2, 0, 3, {"0": 2, "1": 1})
    assert (two.revision, two.requests, two.errors, two.predictions, two.labels) == (2, 2, 1, 2, {"0": 1, "1": 1})
    assert sum(one.latency_counts) == 2 and one.max_latency_ms > 0 and sorted(one.sample) == [0.0, 0.0, 1.0]


async def test_the_deployers_probe_requests_are_answered_but_not_counted() -> None:
    plain, _ = _models()
    _, figures, app = _serving(plain)
    good = {"rows": [{"a": 1.2, "b": 1.0}, {"a": 1.9, "b": 1.0}]}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as client:
        probe = await client.post("/predict", json=good, headers={PROBE_HEADER: "post-deploy-check"})
        assert probe.status_code == 200 and len(probe.json()["predictions"]) == 2
        assert (await client.post("/predict", json=good)).status_code == 200
    (one,) = figures.summary().revisions
    assert (one.revision, one.requests, one.predictions) == (1, 1, 2)  # the traffic's request only


async def test_figures_are_published_on_the_release_subject_as_model_server(nats) -> None:
    figures = LiveFigures("wine", "replica-1")
    figures.record(3, ok=True, seconds=0.002, predictions=[1, 2])
    server = await connect(nats.settings(Identity.MODEL_SERVER), "test-model-server")
    listener = await connect(nats.settings(Identity.DEPLOYER), "test-deployer")
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_message(msg: nats.aio.msg.Msg) -> None:
        await got.put(msg.data)

    await listener.subscribe(release_subject(Subject.MODEL_STATS, "wine"), cb=on_message)
    await listener.flush()
    publishing = asyncio.create_task(publish_periodically(server, figures, 0.05))
    try:
        stats = ModelStats.model_validate_json(await asyncio.wait_for(got.get(), 30))
        assert stats.release == "wine" and stats.instance == "replica-1"
        assert [(f.revision, f.requests, f.labels) for f in stats.revisions] == [(3, 1, {"1": 1, "2": 1})]
    finally:
        publishing.cancel()
        await server.close()
        await listener.close()
    await until(lambda: publishing.done(), "the publisher to stop")

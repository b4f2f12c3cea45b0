"""The model server against a real nats-server: API, input validation, hot swap on promotion and rollback."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from tests.model_server.serving import FEATURES, hammer, predictions_of, promote, rows, start_server, wine_models
from tweakline.deployer.control import rollback
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect


async def test_serves_validates_and_hot_swaps_without_a_failed_request(nats, tmp_path: Path) -> None:
    release = f"srv-{uuid.uuid4().hex[:6]}"
    models = wine_models()
    assert await promote(nats, release, f"{release}-a", models["dummy"]) == 1
    server = start_server(nats, release, tmp_path)
    try:
        first = await server.wait_for_revision(1)
        assert first["release"] == release and first["features"] == FEATURES
        assert (await server.client.get("/healthz")).status_code == 200
        assert (await server.client.get("/readyz")).json() == {"ready": True, "revision": 1}
        r = await server.client.post("/predict", json={"rows": rows(5)})
        assert r.status_code == 200
        assert r.json() == {"release": release, "revision": 1, "predictions": predictions_of(models["dummy"])}

        # input validation names the field
        bad = rows(2)
        del bad[1]["alcohol"]
        r = await server.client.post("/predict", json={"rows": bad})
        assert r.status_code == 422 and r.json()["field"] == "rows[1].alcohol"
        assert "missing feature" in r.json()["error"]
        bad = rows(1)
        bad[0]["colour"] = 1.0
        r = await server.client.post("/predict", json={"rows": bad})
        assert r.status_code == 422 and r.json()["field"] == "rows[0].colour" and "unknown feature" in r.json()["error"]
        bad = rows(1)
        bad[0]["magnesium"] = "high"
        r = await server.client.post("/predict", json={"rows": bad})
        assert r.status_code == 422 and r.json()["field"] == "rows[0].magnesium"
        assert r.json()["error"] == "rows[0].magnesium: expected a number, got 'high'"
        r = await server.client.post("/predict", content=b"{not json")
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = await server.client.post("/predict", json=[1, 2])
        assert r.status_code == 422 and r.json()["field"] == "rows"

        # promotion: hot swap while requests keep coming
        stop = asyncio.Event()
        load = asyncio.create_task(hammer(server, stop, {"rows": rows(5)}))
        await asyncio.sleep(0.3)
        assert await promote(nats, release, f"{release}-b", models["svc"]) == 2
        await server.wait_for_revision(2)
        await asyncio.sleep(0.3)
        # rollback: the previous model comes back, again without a failed request
        nc = await connect(nats.settings(Identity.ADMIN), "test")
        try:
            done = await rollback(nc.jetstream(), nats.settings(), release, to=None, reason="test rollback", by="test")
        finally:
            await nc.close()
        assert done.revision.revision == 1
        await server.wait_for_revision(1)
        await asyncio.sleep(0.3)
        stop.set()
        seen = await load
        codes = {code for code, _ in seen}
        revisions = [rev for _, rev in seen]
        assert codes == {200}, f"failed requests during the swaps: {[s for s in seen if s[0] != 200][:5]}"
        assert 2 in revisions and revisions[0] == 1 and revisions[-1] == 1
        # the order of what was served follows the swaps: 1..1 2..2 1..1
        changes = [b for a, b in zip(revisions, revisions[1:]) if a != b]
        assert changes == [2, 1]
        r = await server.client.post("/predict", json={"rows": rows(5)})
        assert r.json()["predictions"] == predictions_of(models["dummy"])

        metrics = (await server.client.get("/metrics")).text
        assert "tweakline_model_swaps_total 2.0" in metrics
        assert 'tweakline_model_requests_total{code="422",endpoint="predict"}' in metrics
        assert "tweakline_model_revision 1.0" in metrics
    finally:
        await server.close()


async def test_tampered_artifact_is_refused_and_the_previous_model_kept(nats, tmp_path: Path) -> None:
    release = f"srv-{uuid.uuid4().hex[:6]}"
    models = wine_models()
    await promote(nats, release, f"{release}-a", models["dummy"])
    server = start_server(nats, release, tmp_path)
    try:
        await server.wait_for_revision(1)
        # revision 2's object is replaced by another (valid skops) model after its hash was recorded
        await promote(nats, release, f"{release}-b", models["svc"], tamper_with=models["dummy"])
        deadline = asyncio.get_running_loop().time() + 30
        while "last_error" not in (body := await server.version()):
            assert asyncio.get_running_loop().time() < deadline, body
            await asyncio.sleep(0.1)
        assert body["revision"] == 1
        assert "revision 2" in body["last_error"] and "refusing to load" in body["last_error"]
        assert "tweakline_model_load_failures_total 1.0" in (await server.client.get("/metrics")).text
        r = await server.client.post("/predict", json={"rows": rows(3)})
        assert r.status_code == 200 and r.json()["revision"] == 1
    finally:
        await server.close()


async def test_pinned_sha256_that_differs_from_the_record_is_refused(nats, tmp_path: Path) -> None:
    release = f"srv-{uuid.uuid4().hex[:6]}"
    await promote(nats, release, f"{release}-a", wine_models()["dummy"])
    server = start_server(nats, release, tmp_path, extra_env={"TWEAKLINE_MODEL_SHA256": "cd" * 32})
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while "refusing" not in (body := (await server.client.get("/readyz")).json()).get("reason", ""):
            assert asyncio.get_running_loop().time() < deadline, body
            await asyncio.sleep(0.1)
        assert body["ready"] is False and "refusing to serve it" in body["reason"]
    finally:
        await server.close()


async def test_server_without_a_release_is_alive_but_not_ready(nats, tmp_path: Path) -> None:
    server = start_server(nats, f"none-{uuid.uuid4().hex[:6]}", tmp_path)
    try:
        assert (await server.client.get("/healthz")).status_code == 200
        ready = await server.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        r = await server.client.post("/predict", json={"rows": rows(1)})
        assert r.status_code == 503 and "no model loaded" in r.json()["error"]
    finally:
        await server.close()

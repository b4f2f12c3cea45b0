"""The post-deploy check against a real running model server (and a server that errors)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.model_server.serving import FEATURES, WINE, promote, start_server, wine_models
from tweakline.deployer.verify import verify_live
from tweakline.proto.tweakfile import GateSpec, VerifySpec


def probe(n: int = 30) -> dict:
    return {
        "task": "classification",
        "features": FEATURES,
        "rows": [dict(zip(FEATURES, map(float, x))) for x in WINE.data[:n]],
        "targets": [int(v) for v in WINE.target[:n]],
    }


async def test_live_metrics_below_the_gate_fail_and_good_ones_pass(nats, tmp_path: Path) -> None:
    release = f"ver-{uuid.uuid4().hex[:6]}"
    models = wine_models()
    await promote(nats, release, f"{release}-a", models["dummy"])  # always predicts class 2
    server = start_server(nats, release, tmp_path)
    try:
        await server.wait_for_revision(1)
        gate = GateSpec(thresholds={"accuracy": 0.9, "roc_auc": 0.99})  # roc_auc needs scores: not checked live
        bad = await verify_live(server.url, probe(), gate, VerifySpec(), revision=1)
        assert not bad.ok and bad.requests == 3 and bad.errors == 0
        assert bad.reason.startswith("live metrics on 30 probe rows below the gate: accuracy 0.0000 >= 0.9000 does not hold")
        stale = await verify_live(server.url, probe(), gate, VerifySpec(timeout=1), revision=2)
        assert not stale.ok and stale.reason == "revision 2 did not become live within 1s (the server reports 1)"
        await promote(nats, release, f"{release}-b", models["svc"])
        good = await verify_live(server.url, probe(), gate, VerifySpec(), revision=2)
        assert good.ok, good.reason
        assert good.metrics == {"accuracy": 1.0} and "post-deploy check passed on 30 probe rows" in good.reason
    finally:
        await server.close()


async def test_a_server_that_errors_fails_the_check() -> None:
    async def version(_):
        return JSONResponse({"revision": 4})

    async def predict(_):
        return JSONResponse({"error": "model exploded"}, status_code=500)

    app = Starlette(routes=[Route("/version", version), Route("/predict", predict, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        result = await verify_live(f"http://127.0.0.1:{port}", probe(20), None, VerifySpec(), revision=4)
        assert not result.ok and result.errors == 2
        assert result.reason == "2 of 2 probe requests failed (allowed 0%): ValueError: HTTP 500: model exploded"
    finally:
        server.should_exit = True
        await task


def test_probe_json_round_trip() -> None:
    assert json.loads(json.dumps(probe(2)))["targets"] == [0, 0]

"""``/predict`` against a hostile corpus: every body gets a 4xx with a JSON reason, the connection
is never dropped, alone and mixed with valid traffic, and ``/metrics`` counts every status.

The app is served by a real uvicorn on 127.0.0.1 and called over HTTP with httpx; the model is a
small fitted pipeline in the slot (following a release is tested in ``test_serve.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import re
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import uvicorn
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tests.waiting import until
from tweakline.model_server.api import ServerMetrics, create_http_app
from tweakline.model_server.model import LoadedModel, ModelSlot
from tweakline.proto.messages import ArtifactRef

FEATURES = ("a", "b", "c")
LIMIT = 256 * 1024  # the server's body limit in this test (8 MiB by default)


def _valid(n: int = 3) -> bytes:
    return json.dumps({"rows": [{"a": i, "b": i / 2, "c": -i} for i in range(n)]}).encode()


def hostile_bodies() -> dict[str, bytes]:
    """name -> body; each must be refused with a 4xx and a JSON reason."""
    deep = b"[" * 100_000 + b"]" * 100_000
    return {
        "empty": b"",
        "whitespace": b"  \n ",
        "not-json": b"rows=1",
        "binary": bytes(range(256)),
        "not-utf8": b'{"rows": [{"a": "\xff"}]}',
        "truncated": _valid()[:-3],
        "nan": b'{"rows": [{"a": NaN, "b": 1, "c": 1}]}',
        "infinity": b'{"rows": [{"a": Infinity, "b": 1, "c": 1}]}',
        "minus-infinity": b'{"rows": [{"a": -Infinity, "b": 1, "c": 1}]}',
        "float-overflow": b'{"rows": [{"a": 1e400, "b": 1, "c": 1}]}',
        "huge-magnitude": b'{"rows": [{"a": 1e300, "b": 1, "c": 1}]}',
        "int-400-digits": b'{"rows": [{"a": ' + b"9" * 400 + b', "b": 1, "c": 1}]}',
        "int-5000-digits": b'{"rows": [{"a": ' + b"9" * 5000 + b', "b": 1, "c": 1}]}',
        "long-float": b'{"rows": [{"a": 1.' + b"1" * 500 + b', "b": 1, "c": 1}]}',
        "deep-array": deep,
        "deep-in-rows": b'{"rows": [{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b', "b": 1, "c": 1}]}',
        "deep-object": b'{"x":' * 50_000 + b"1" + b"}" * 50_000,
        "deep-40": b"[" * 40 + b"]" * 40,
        "unbalanced": b"[" * 5000,
        "array": b"[]",
        "object": b"{}",
        "string": b'"rows"',
        "number": b"5",
        "null": b"null",
        "rows-empty": b'{"rows": []}',
        "rows-object": b'{"rows": {}}',
        "rows-of-lists": b'{"rows": [[1, 2, 3]]}',
        "rows-null": b'{"rows": [null]}',
        "string-value": b'{"rows": [{"a": "1", "b": 1, "c": 1}]}',
        "bool-value": b'{"rows": [{"a": true, "b": 1, "c": 1}]}',
        "missing-feature": b'{"rows": [{"a": 1, "b": 1}]}',
        "extra-feature": b'{"rows": [{"a": 1, "b": 1, "c": 1, "d": 1}]}',
        "extra-field": b'{"rows": [{"a": 1, "b": 1, "c": 1}], "x": 1}',
        "too-many-rows": _valid(10_001),
        "long-key": b'{"rows": [{"' + b"k" * 100_000 + b'": 1}]}',
        "over-the-limit": b'{"rows": [' + b'{"a": 1, "b": 1, "c": 1},' * (LIMIT // 20) + b"]}",
    }


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, ServerMetrics, ModelSlot]]:
    X = np.random.default_rng(0).normal(size=(60, 3))
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, (X[:, 0] > 0).astype(int))
    slot, metrics = ModelSlot(), ServerMetrics()
    artifact = ArtifactRef(bucket="b", name="m.skops", sha256="0" * 64, size=1)
    slot.swap(LoadedModel("r", 1, "e-1", "LogisticRegression", FEATURES, artifact, model))
    app = create_http_app(slot, metrics, "r", max_body_bytes=LIMIT)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="critical", access_log=False, lifespan="off")
    uv = uvicorn.Server(config)
    task = asyncio.create_task(uv.serve())
    await until(lambda: uv.started or task.done(), "the model server to listen", timeout=60)
    port = uv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", metrics, slot
    finally:
        uv.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)


def counted(text: str) -> Counter[str]:
    """``code -> count`` of /predict in the Prometheus text."""
    found: Counter[str] = Counter()
    for code, value in re.findall(r'tweakline_model_requests_total\{code="(\d+)",endpoint="predict"\} ([0-9.e+]+)', text):
        found[code] += int(float(value))
    return found


def _refused(response: httpx.Response) -> str | None:
    """Why a response is not a proper refusal (None when it is one)."""
    if not 400 <= response.status_code < 500:
        return f"status {response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return "not JSON"
    return None if isinstance(body, dict) and body.get("error") else f"no reason: {body}"


async def test_every_hostile_body_gets_a_4xx_with_a_reason(server: tuple[str, ServerMetrics, ModelSlot]) -> None:
    url, _, _ = server
    wrong = {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for name, body in hostile_bodies().items():
            response = await client.post("/predict", content=body, headers={"content-type": "application/json"})
            if (why := _refused(response)) is not None:
                wrong[name] = f"{why}: {response.text[:200]}"
        assert (await client.post("/predict", content=_valid())).status_code == 200  # still serving
    assert not wrong, wrong


async def test_a_streamed_body_over_the_limit_is_refused_without_reading_it_all(
    server: tuple[str, ServerMetrics, ModelSlot],
) -> None:
    # A raw HTTP/1.1 client sending a chunked body (no Content-Length) and watching for the answer
    # after each chunk, as curl does: the 413 must come while the body is still being sent.
    from tweakline.model_server.api import MAX_DRAIN_BYTES

    url, _, _ = server
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /predict HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b" " * 65536
    sent, first = 0, b""
    try:
        while sent < 1024 * 1024 * 1024 and not first:  # the client would send 1 GB
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            sent += len(chunk)
            with contextlib.suppress(TimeoutError):
                first = await asyncio.wait_for(reader.read(1), 0.001)
    except ConnectionError:
        pass  # closed after answering: the answer is in the buffer
    head = first + await asyncio.wait_for(reader.read(65536), 30)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b'"error"' in head and b"exceeds" in head
    assert sent <= LIMIT + MAX_DRAIN_BYTES + 4 * 1024 * 1024, sent  # answered long before 1 GB

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        declared = await client.post("/predict", content=b"x" * (LIMIT + 1))
        assert declared.status_code == 413  # refused by its Content-Length
        assert (await client.post("/predict", content=_valid())).status_code == 200


async def test_hostile_and_valid_traffic_together_and_metrics_count_every_status(
    server: tuple[str, ServerMetrics, ModelSlot],
) -> None:
    url, _, _ = server
    bodies = [(name, body) for name, body in hostile_bodies().items()] * 3 + [("valid", _valid(5))] * 100
    random.Random(1).shuffle(bodies)
    sem = asyncio.Semaphore(16)
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        before = counted((await client.get("/metrics")).text)

        async def one(name: str, body: bytes) -> tuple[str, httpx.Response | Exception]:
            async with sem:
                try:
                    return name, await client.post("/predict", content=body)
                except Exception as exc:  # a dropped connection is a failure of the test
                    return name, exc

        results = await asyncio.gather(*(one(n, b) for n, b in bodies))
        after = counted((await client.get("/metrics")).text)
    dropped = [(n, repr(r)) for n, r in results if isinstance(r, Exception)]
    assert not dropped, dropped
    wrong = {n: _refused(r) for n, r in results if n != "valid" and _refused(r) is not None}  # type: ignore[arg-type]
    assert not wrong, wrong
    assert all(r.status_code == 200 for n, r in results if n == "valid")  # type: ignore[union-attr]
    sent = Counter(str(r.status_code) for _, r in results)  # type: ignore[union-attr]
    assert after - before == sent, (after - before, sent)  # every status counted, once


class _Broken:
    def predict(self, X: object) -> object:
        raise RuntimeError("a bug in the model")


async def test_a_failing_model_is_a_counted_json_500_and_unknown_paths_share_a_label(
    server: tuple[str, ServerMetrics, ModelSlot],
) -> None:
    url, _, slot = server
    assert slot.current is not None
    slot.swap(dataclasses.replace(slot.current, model=_Broken()))
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        failed = await client.post("/predict", content=_valid())
        assert failed.status_code == 500 and failed.json()["error"] == "internal error: RuntimeError"
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/also/nowhere")).status_code == 404
        text = (await client.get("/metrics")).text
    assert counted(text) == Counter({"500": 1})
    assert 'tweakline_model_requests_total{code="404",endpoint="other"} 2.0' in text

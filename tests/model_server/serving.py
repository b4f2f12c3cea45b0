"""Helpers to run a real ``tweakline serve`` next to a real nats-server, and to promote models into its release."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from sklearn.datasets import load_wine
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from tests.waiting import until
from tweakline.deployer.control import releases
from tweakline.deployer.releases import record_promotion
from tweakline.ml.artifacts import dump_model
from tweakline.proto.messages import Decision, EvaluationCompleted
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect
from tweakline.runtime.endpoints import registration_path
from tweakline.runtime.objects import put_artifact

WINE = load_wine()
FEATURES = [str(n) for n in WINE.feature_names]


def wine_models() -> dict[str, object]:
    """A constant predictor and a good SVC: their predictions differ on most rows."""
    X, y = WINE.data, WINE.target
    return {
        "dummy": DummyClassifier(strategy="constant", constant=2).fit(X, y),
        "svc": make_pipeline(StandardScaler(), SVC(C=10)).fit(X, y),
    }


def rows(n: int = 5, start: int = 0) -> list[dict[str, float]]:
    return [dict(zip(FEATURES, map(float, x))) for x in WINE.data[start : start + n]]


async def promote(
    nats,
    release: str,
    experiment_id: str,
    model: object,
    *,
    sha256: str | None = None,
    tamper_with: object = None,
    features: list[str] | None = None,
) -> int:
    """Store ``model`` and record it as the new live revision of ``release`` (what evaluator + deployer do).

    ``tamper_with``: after the artifact is stored (and its hash recorded), overwrite the object
    with this other model's skops bytes, as an attacker with write access to the store would.
    """
    nc = await connect(nats.settings(Identity.ADMIN), "test-promote")
    try:
        js = nc.jetstream()
        data, _ = dump_model(model)
        ref = await put_artifact(js, f"models/{experiment_id}.skops", data)
        if sha256 is not None:
            ref = ref.model_copy(update={"sha256": sha256})
        if tamper_with is not None:
            store = await js.object_store(ref.bucket)
            await store.put(ref.name, dump_model(tamper_with)[0])
        evaluation = EvaluationCompleted(
            experiment_id=experiment_id,
            decision=Decision.PROMOTE,
            reasons=["test"],
            artifact=ref,
            release=release,
            target="local",
            features=features or FEATURES,
            candidate_metrics={"accuracy": 0.9},
        )
        _, revision = await record_promotion(await releases(js), release, "local", evaluation, type(model).__name__)
        return revision.revision
    finally:
        await nc.close()


@dataclass
class RunningServer:
    """A ``tweakline serve`` subprocess and its URL."""

    process: subprocess.Popen
    url: str
    log: Path
    client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.AsyncClient(base_url=self.url, timeout=10)

    async def version(self) -> dict:
        return (await self.client.get("/version")).json()

    async def wait_for_revision(self, revision: int, timeout: float = 30) -> dict:
        """Poll /version until ``revision`` is served (fails with the server's log after ``timeout``)."""

        async def served() -> dict | None:
            body = (await self.client.get("/version")).json()
            return body if body.get("revision") == revision else None

        return await until(served, f"revision {revision} to be served (log: {self.log})", timeout, interval=0.1)

    async def close(self) -> None:
        await self.client.aclose()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_server(nats, release: str, tmp: Path, extra_env: dict[str, str] | None = None, timeout: float = 150) -> RunningServer:
    """Start ``tweakline serve RELEASE --port 0`` on the ``nats`` fixture's server."""
    return start_server_on(nats.url, nats.pki.parent, release, tmp, extra_env, timeout)


def start_server_on(
    url: str, state: Path, release: str, tmp: Path, extra_env: dict[str, str] | None = None, timeout: float = 150
) -> RunningServer:
    """Start ``tweakline serve RELEASE --port 0`` and wait until it has registered its URL."""
    reg = registration_path(state, release)
    reg.unlink(missing_ok=True)
    log = tmp / f"serve-{release}.log"
    env = dict(os.environ)
    env.update({"TWEAKLINE_NATS_URL": url, "TWEAKLINE_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1"})
    env.update(extra_env or {})
    handle = open(log, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tweakline", "serve", release, "--port", "0"], stdout=handle, stderr=subprocess.STDOUT, env=env
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tweakline serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            info = json.loads(reg.read_text())
            if info["pid"] == process.pid:
                return RunningServer(process, info["url"], log)
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"tweakline serve did not start within {timeout}s:\n{log.read_text()}")


async def hammer(
    server: RunningServer,
    stop: asyncio.Event,
    payload: dict,
    pause: float = 0.0,
    seen: list[tuple[int, int | None]] | None = None,
) -> list[tuple[int, int | None]]:
    """POST /predict in a loop until ``stop``: (status code, revision served) of every request.

    ``pause``: seconds between requests (a steady trickle rather than a busy loop on a shared machine).
    ``seen``: the list to append to, to watch the answers while the loop runs.
    """
    seen = [] if seen is None else seen
    while not stop.is_set():
        try:
            r = await server.client.post("/predict", json=payload)
            seen.append((r.status_code, r.json().get("revision")))
        except httpx.HTTPError as exc:  # a refused connection is a failed request too
            seen.append((-1, None))
            print("request failed:", exc)
        await asyncio.sleep(pause)
    return seen


def predictions_of(model: object, n: int = 5) -> list:
    return np.asarray(model.predict(WINE.data[:n])).tolist()

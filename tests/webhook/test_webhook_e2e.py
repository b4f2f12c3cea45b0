"""The whole loop on the embedded platform: a signed push reaches 'tweakline service webhook' (its own
process, configured only by environment variables and a mounted secret file), the experiment runs
on the real services, and the decision comes back to "Bitbucket" as a build status."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.waiting import until
from tests.webhook.bitbucket_fake import FakeBitbucket
from tests.webhook.test_webhook import IRIS, REPO, SECRET, TOKEN, branch_change, commit, push_payload, sign
from tweakline.proto.permissions import Identity
from tweakline.stack.local import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    local = LocalStack(tmp_path_factory.mktemp("platform"), runners=1)
    local.start()
    yield local
    local.stop()


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process, timeout: float = 60.0) -> None:
    async with httpx.AsyncClient() as client:

        async def healthy() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"webhook exited with {proc.returncode}")
            try:
                return (await client.get(url)).status_code == 200
            except httpx.TransportError:
                return False

        await until(healthy, f"the webhook to answer {url}", timeout, 0.1)


async def test_push_to_decision_through_the_webhook_process(stack: LocalStack, tmp_path: Path) -> None:
    bitbucket = FakeBitbucket()
    await bitbucket.start()
    new, old = commit(), commit()
    tweak = IRIS.replace("max_trials: 4", "max_trials: 3") + "  gate: {thresholds: {accuracy: 0.5}}\n"
    bitbucket.files[(REPO, new, "iris.tweak.yaml")] = tweak.encode()
    bitbucket.diffstats[(REPO, f"{new}..{old}")] = [("modified", "iris.tweak.yaml")]
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(SECRET)
    token_file = tmp_path / "bitbucket-token"
    token_file.write_text(TOKEN)
    port = 20000 + uuid.uuid4().int % 20000
    env = dict(os.environ) | {
        "TWEAKLINE_NATS_URL": stack.url or "",
        "TWEAKLINE_IDENTITY": Identity.WEBHOOK.value,
        "TWEAKLINE_STATE_DIR": str(stack.layout.root),
        "TWEAKLINE_WEBHOOK_PORT": str(port),
        "TWEAKLINE_WEBHOOK_SECRET_FILE": str(secret_file),
        "TWEAKLINE_BITBUCKET_TOKEN_FILE": str(token_file),
        "TWEAKLINE_BITBUCKET_API_URL": f"{bitbucket.url}/2.0",
    }
    log = tmp_path / "webhook.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tweakline", "service", "webhook", env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        await _wait_healthy(f"http://127.0.0.1:{port}/healthz", proc)
        body = push_payload(branch_change("main", new, old))
        import json

        raw = json.dumps(body).encode()
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(
                f"http://127.0.0.1:{port}/webhooks/bitbucket",
                content=raw,
                headers={
                    "X-Event-Key": "repo:push",
                    "X-Request-UUID": str(uuid.uuid4()),
                    "X-Hub-Signature": sign(raw),
                    "Content-Type": "application/json",
                },
            )
        assert response.status_code == 202, response.text
        [started, finished] = await bitbucket.wait_for(f"/commit/{new}/statuses/build", "POST", count=2, timeout=180)
        assert started.json["state"] == "INPROGRESS"
        assert finished.json["state"] == "SUCCESSFUL", finished.json
        assert finished.json["description"].startswith("accuracy ")
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 20)
            assert code == 0, log.read_text()
        await bitbucket.stop()
    text = log.read_text()
    assert SECRET not in text and TOKEN not in text

"""Process lifecycle through the real command line: Ctrl-C on 'tweakline run', and 'up' / 'status' / 'down'."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run_cli
from tests.e2e.test_run import leftover_processes
from tests.fault.conftest import tweak
from tests.waiting import wait_until
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Stream, Subject, all_of, subject_for
from tweakline.runtime.bus import connect
from tweakline.runtime.settings import Settings

pytestmark = pytest.mark.fault

ENV = {
    "PYTHONPATH": str(REPO),
    "TWEAKLINE_ALLOWED_ESTIMATORS": '["sklearn.", "tests.fault."]',
    "TWEAKLINE_SHUTDOWN_GRACE_S": "2",
}


def wait_for_file(path: Path, process: subprocess.Popen, timeout: float = 240) -> dict:
    """The JSON in ``path`` once the stack wrote it (fails early if ``process`` died)."""

    def written() -> dict | None:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    return wait_until(written, f"{path} to appear", timeout, interval=0.2)


async def first_progress(state: Path, url: str, timeout: float = 240) -> None:
    settings = Settings(nats_url=url, identity=Identity.ADMIN, state_dir=state)
    nc = await connect(settings, "fault-test-cli")
    got = asyncio.Event()

    async def on_progress(_msg) -> None:
        got.set()

    await nc.subscribe(all_of(Subject.TRIAL_PROGRESS), cb=on_progress)
    try:
        await asyncio.wait_for(got.wait(), timeout)
    finally:
        await nc.close()


async def test_ctrl_c_on_run_stops_everything_it_started(tmp_path: Path) -> None:
    state = tmp_path / "state"
    tweak_file = tmp_path / "slow.tweak.yaml"
    tf = tweak("ctrl-c", [2.0], max_trials=4, parallelism=2)  # Ctrl-C lands after a first fold, ~6 s before the end
    tweak_file.write_text(yaml.safe_dump(tf.model_dump(mode="json", by_alias=True, exclude_none=True)))
    env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "tweakline", "run", str(tweak_file), "--state-dir", str(state), "--runners", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        info = await asyncio.to_thread(wait_for_file, state / "run" / "stack.json", cli)
        await first_progress(state, info["url"])  # a trial is mid-way in a runner's training process
        assert leftover_processes(state)  # (the check below can see the stack's processes)
        cli.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(cli.wait, 120)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert code == 130, cli.stderr.read().decode()
    assert "interrupted" in cli.stderr.read().decode()
    assert not leftover_processes(state)


async def poison_and_wait(state: Path, url: str) -> None:
    """Publish one undecodable submission and wait for its dead letter."""
    nc = await connect(Settings(nats_url=url, identity=Identity.ADMIN, state_dir=state), "fault-test-status")
    got = asyncio.Event()

    async def on_letter(_msg) -> None:
        got.set()

    try:
        await nc.subscribe(all_of(Subject.DEAD_LETTER), cb=on_letter)
        await nc.jetstream().publish(subject_for(Subject.EXPERIMENT_SUBMITTED, "not-json"), b"{oops", stream=Stream.EVENTS.value)
        await asyncio.wait_for(got.wait(), 120)
    finally:
        await nc.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def test_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # runner pools: one runner of the default pool and one of pool "large" (through the supervisor's argv)
    up = run_cli("up", "--state-dir", str(state), "--runners", "default=1,large=1", env=ENV, timeout=300)
    try:
        assert up.code == 0, up.stderr
        assert "TWEAKLINE_NATS_URL=tls://127.0.0.1:" in up.stdout
        # The web console comes up with the stack, on loopback, behind a login.
        console = up.stderr.split("console: ", 1)[1].split()[0]
        assert console.startswith("http://127.0.0.1:") and (state / "console" / "credentials.json").stat().st_mode & 0o077 == 0
        wait_until(lambda: _answers(console + "healthz"), "the stack's console to answer")
        ask = urllib.request.Request(console, headers={"Accept": "text/html"})
        with urllib.request.urlopen(ask, timeout=30) as page:  # follows the redirect to the login form
            assert page.url.startswith(console + "login") and 'id="login-form"' in page.read().decode()
        again = run_cli("up", "--state-dir", str(state), env=ENV)
        assert again.code == 0 and "already up" in again.stderr

        url = up.stdout.split("TWEAKLINE_NATS_URL=", 1)[1].split()[0]
        asyncio.run(poison_and_wait(state, url))

        status = run_cli("status", "--state-dir", str(state), "--json", env=ENV)
        assert status.code == 0, status.stderr
        report = status.json()
        services = report["stack"]["services"]
        assert set(services) == {"scheduler", "evaluator", "deployer", "trial-runner-0", "trial-runner-large-1", "console"}
        assert services["trial-runner-0"]["pool"] == "default" and services["trial-runner-large-1"]["pool"] == "large"
        assert set(report["runners"]["pools"]) == {"default", "large"}
        assert all(proc["alive"] for proc in report["stack"]["services"].values())
        assert report["experiments"] == []
        assert report["dead_letters"]["total"] == 1
        [letter] = report["dead_letters"]["recent"]
        assert letter["service"] == "scheduler" and letter["subject"].endswith(".not-json")
        assert letter["reason"].startswith("not a valid ExperimentSubmitted")
        human = run_cli("status", "--state-dir", str(state), env={**ENV, "COLUMNS": "200"})
        assert human.code == 0 and "not a valid ExperimentSubmitted" in human.stdout
        assert {"queued", "training", "idle_pulls", "redelivered"} <= report["runners"].keys()
    finally:
        down = run_cli("down", "--state-dir", str(state), env=ENV, timeout=120)
    assert down.code == 0, down.stderr
    assert not leftover_processes(state)
    gone = run_cli("status", "--state-dir", str(state), env={**ENV, "TWEAKLINE_NATS_URL": "tls://127.0.0.1:1"})
    assert gone.code == 2 and "cannot reach NATS" in gone.stderr and "Traceback" not in gone.stderr

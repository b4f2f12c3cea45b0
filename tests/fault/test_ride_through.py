"""A ``tweakline up`` stack rides through the loss of its nats-server: the supervisor restarts it,
and a ``submit --wait`` following an experiment resumes and still gets the decision and exit code."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_cli
from tests.e2e.test_run import leftover_processes
from tests.factories import tweak_dict
from tests.fault.test_cli_lifecycle import ENV
from tests.waiting import wait_until
from tweakline.proto.messages import TrialCompleted
from tweakline.proto.permissions import Identity
from tweakline.proto.subjects import Subject, all_of
from tweakline.runtime.bus import connect
from tweakline.runtime.settings import Settings

pytestmark = pytest.mark.fault

EXIT_CODES = {"promote": 0, "reject": 1, "error": 2}


def _tweak_file(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            tweak_dict(
                "ride-through",
                model={"estimator": "sklearn.tree.DecisionTreeClassifier"},
                search={"algorithm": "random", "seed": 1, "space": {"max_depth": {"type": "int", "low": 1, "high": 6}}},
                budget={"max_trials": 8, "parallelism": 1},
            )
        )
    )
    return path


async def first_result(state: Path, url: str, timeout: float = 240) -> None:
    nc = await connect(Settings(nats_url=url, identity=Identity.ADMIN, state_dir=state), "fault-test-ride")
    got = asyncio.Event()

    async def on_result(msg) -> None:
        TrialCompleted.model_validate_json(msg.data)
        got.set()

    await nc.subscribe(all_of(Subject.TRIAL_COMPLETED), cb=on_result)
    try:
        await asyncio.wait_for(got.wait(), timeout)
    finally:
        await nc.close()


def _info(state: Path) -> dict:
    return json.loads((state / "run" / "stack.json").read_text())


def test_nats_server_sigkilled_under_submit_wait(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = run_cli("up", "--state-dir", str(state), "--runners", "1", env=ENV, timeout=300)
    submit = None
    try:
        assert up.code == 0, up.stderr
        info = _info(state)
        env = {**os.environ, **ENV, "PYTHONUNBUFFERED": "1"}
        env.pop("TWEAKLINE_NATS_URL", None)  # --state-dir alone must find the stack's address
        submit = subprocess.Popen(
            [sys.executable, "-m", "tweakline", "submit", str(_tweak_file(tmp_path / "t.yaml")), "--wait", "--json"]
            + ["--state-dir", str(state)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        asyncio.run(first_result(state, info["url"]))
        assert submit.poll() is None, "the kill below must happen while submit --wait follows"
        os.kill(info["server"], signal.SIGKILL)
        # The supervisor notices and starts nats-server again (a new pid), and says so in status.
        wait_until(lambda: _info(state).get("server") not in (None, info["server"]), "nats-server to be restarted", 120, 0.2)
        status = run_cli("status", "--state-dir", str(state), "--json", env=ENV)
        assert status.code == 0, status.stderr
        servers = status.json()["stack"]["servers"]
        assert servers["nats-server"]["alive"] and servers["nats-server"]["restarts"] == 1
        out, err = submit.communicate(timeout=400)
        result = json.loads(out)
        assert result["decision"] in EXIT_CODES, result
        assert submit.returncode == EXIT_CODES[result["decision"]], err
        assert result["trials"]["ok"] + result["trials"].get("failed", 0) + result["trials"].get("pruned", 0) == 8
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
        down = run_cli("down", "--state-dir", str(state), env=ENV, timeout=120)
    assert down.code == 0, down.stderr
    assert not leftover_processes(state)

"""The Python client and the CLI built on it, on the real stack: the documented example runs as written."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO, run_cli
from tests.fault.conftest import make_stack, tweak  # noqa: F401 (make_stack is a fixture)
from tweakline.client import TweaklineClient
from tweakline.proto.messages import ExperimentStatus
from tweakline.proto.permissions import Identity
from tweakline.runtime.bus import connect

DOC = REPO / "docs" / "operations.md"


def documented_example() -> str:
    """The Python block of the day-2 guide's client section."""
    section = DOC.read_text().split("## From Python", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert block, "docs/operations.md shows a client example"
    return block.group(1)


@pytest.mark.e2e
async def test_the_documented_example_runs_and_the_cli_lists_what_it_did(make_stack, capsys) -> None:  # noqa: F811
    stack = await make_stack(runners=1)
    namespace: dict = {"__name__": "operations_example"}
    exec(compile(documented_example(), str(DOC), "exec"), namespace)  # the block, exactly as documented
    # Trials of half a second, one at a time: the cancel after the first lands with many left.
    tf = tweak("client-example", [0.5], max_trials=20, parallelism=1)
    exp_id = await namespace["main"](stack.settings_for(Identity.SUBMITTER), tf)

    printed = capsys.readouterr().out
    assert re.search(r"^trial 0: ok score=", printed, flags=re.MULTILINE), printed
    assert f"{exp_id} cancelled: one trial is enough for this example" in printed
    assert re.search(rf"^{exp_id} cancelled \d+/20 ", printed, flags=re.MULTILINE), printed

    nc = await connect(stack.settings_for(Identity.SUBMITTER), "client-test")
    try:
        state = await TweaklineClient(nc).state(exp_id)
        assert state.status is ExperimentStatus.CANCELLED and len(state.results) < 20
        assert state.message == "cancelled by submitter: one trial is enough for this example"
    finally:
        await nc.close()

    # The CLI is the same client: list with filters, show, refuse to cancel what is not running.
    settings = stack.settings_for(Identity.SUBMITTER)
    env = {
        "TWEAKLINE_NATS_URL": settings.nats_url,
        "TWEAKLINE_TLS_DIR": str(settings.tls_path()),
        "TWEAKLINE_IDENTITY": "submitter",
    }
    listed = run_cli("experiments", "--status", "cancelled", "--json", env=env, timeout=120)
    assert listed.code == 0, listed.stderr
    rows = listed.json()["experiments"]
    assert [r["experiment_id"] for r in rows] == [exp_id]
    assert rows[0]["status"] == "cancelled" and rows[0]["progress"].endswith("/20") and rows[0]["best_score"] is not None
    assert run_cli("experiments", "--status", "running", "--json", env=env, timeout=120).json() == {"experiments": []}
    shown = run_cli("experiments", "show", exp_id, "--json", env=env, timeout=120)
    assert shown.code == 0 and shown.json()["status"] == "cancelled"
    table = run_cli("experiments", env=env | {"COLUMNS": "160"}, timeout=120)
    assert table.code == 0 and exp_id in table.stdout and "cancelled" in table.stdout
    again = run_cli("cancel", exp_id, env=env, timeout=120)
    assert again.code == 2 and "is cancelled, not running: nothing to cancel" in again.stderr
    assert "Traceback" not in again.stderr
    missing = run_cli("experiments", "show", "no-such-id", env=env, timeout=120)
    assert missing.code == 2 and "no experiment with id 'no-such-id'" in missing.stderr
    bogus = run_cli("experiments", "--status", "paused", env=env, timeout=120)
    assert bogus.code == 2 and "status: 'paused' is not a status" in bogus.stderr

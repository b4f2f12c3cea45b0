"""``tweakline console`` as a user types it, where nothing runs yet."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_cli


def test_console_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    done = run_cli("console", "--port", "0", "--state-dir", str(tmp_path / "state"), env={"TWEAKLINE_NATS_URL": ""}, timeout=120)
    assert done.code == 2 and "no local stack is running" in done.stderr and "tweakline up" in done.stderr
    assert "Traceback" not in done.stderr

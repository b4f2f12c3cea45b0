"""A local stack's start can be abandoned from another thread (`tweakline run` refusing the file meanwhile)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tweakline.errors import StackError
from tweakline.stack.local import LocalStack


def test_an_abandoned_start_stops_what_it_started_and_raises(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "state", runners=1)
    stack.abandon()
    with pytest.raises(StackError, match="abandoned"):
        stack.start()
    assert stack.pids() == [] and stack.services == [] and stack.server is None
    assert not stack.layout.info.exists()
    # The state directory's lock was released: another stack may take it.
    other = LocalStack(tmp_path / "state", runners=1)
    other._acquire_lock()
    other._release_lock()

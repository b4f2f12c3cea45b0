"""One local stack per state directory: a second one is refused with what to do instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from tweakline.errors import StackError
from tweakline.stack.local import LocalStack


def test_a_second_stack_on_a_state_directory_is_told_how_to_use_the_first(tmp_path: Path) -> None:
    first = LocalStack(tmp_path / "state", runners=1)
    first._acquire_lock()
    try:
        with pytest.raises(StackError) as refused:
            LocalStack(tmp_path / "state", runners=1)._acquire_lock()
        message = str(refused.value)
        assert str(tmp_path / "state") in message
        assert f"tweakline submit --wait FILE --state-dir {tmp_path / 'state'}" in message
        assert "tweakline down" in message
    finally:
        first._release_lock()
    # Released: the directory can be taken again.
    again = LocalStack(tmp_path / "state", runners=1)
    again._acquire_lock()
    again._release_lock()

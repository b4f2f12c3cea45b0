"""The frame of the release stories: one local stack with one runner, a story run on it, the stack stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from tweakline.stack.local import LocalStack

Story = Callable[[LocalStack, Path, Path], Awaitable[None]]


def run_story(tmp_path: Path, story: Story) -> Path:
    """Run ``story(stack, state_dir, tmp_path)`` on a fresh one-runner stack in ``tmp_path/state``; the state directory."""
    state = tmp_path / "state"
    stack = LocalStack(state, runners=1)
    stack.start()
    try:
        asyncio.run(story(stack, state, tmp_path))
    finally:
        stack.stop()
    return state

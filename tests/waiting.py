"""Waiting on events with a deadline, for every test: poll a condition, fail with what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    check: Callable[[], T | None] | Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0, interval: float = 0.05
) -> T:
    """Await ``check()`` (sync or async) until it returns something truthy, and return it.

    Raises ``AssertionError`` naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


def wait_until(check: Callable[[], T | None], what: str, timeout: float = 30.0, interval: float = 0.05) -> T:
    """The blocking form of :func:`until`, for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)

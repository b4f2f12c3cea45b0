"""A read from the object store is bounded by its progress: stuck reads end with the reason, slow ones go on.

The read itself is nats-py's; these drive the watchdog around it with reads that stall or trickle
(a real stall needs a server that withholds flow control: the permission matrix and
``tests/e2e/test_large_models.py`` cover the grant that prevents it).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tweakline.errors import ArtifactError
from tweakline.runtime.objects import _progressing, _Sink


async def test_a_read_that_stops_receiving_chunks_ends_with_how_far_it_got() -> None:
    sink = _Sink()
    cancelled = asyncio.Event()

    async def stuck() -> None:
        await asyncio.to_thread(sink.write, b"x" * 1000)
        try:
            await asyncio.Event().wait()  # the rest never arrives
        except asyncio.CancelledError:
            cancelled.set()
            raise

    started = time.monotonic()
    with pytest.raises(ArtifactError, match=r"reading models/m stalled: 1000 of 5000 bytes arrived, then nothing for 0.3 s"):
        await _progressing(stuck(), sink, 0.3, "models/m", 5000)
    assert time.monotonic() - started < 5
    await asyncio.wait_for(cancelled.wait(), 5)  # nats-py's read is stopped, not left running


async def test_a_slow_read_that_keeps_receiving_chunks_is_not_cut() -> None:
    sink = _Sink()

    async def trickle() -> None:
        for _ in range(8):  # 0.8 s in all, far beyond the 0.3 s allowed between two chunks
            await asyncio.sleep(0.1)
            await asyncio.to_thread(sink.write, b"y" * 100)

    await _progressing(trickle(), sink, 0.3, "models/slow", 800)
    assert sink.getvalue() == b"y" * 800


async def test_a_read_error_is_the_reads_own() -> None:
    async def failing() -> None:
        raise LookupError("gone")

    with pytest.raises(LookupError, match="gone"):
        await _progressing(failing(), _Sink(), 5, "models/x", 1)

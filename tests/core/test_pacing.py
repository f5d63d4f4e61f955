from __future__ import annotations

import asyncio
import time

from core.pacing import Pacer


async def test_rate_is_respected() -> None:
    pacer = Pacer(rate_per_second=50, concurrency=10)
    start = time.monotonic()
    for _ in range(100):
        await pacer.acquire()
    elapsed = time.monotonic() - start
    # 50 tokens of burst, then 50 more at 50/s: about one second.
    assert 0.8 <= elapsed <= 2.0


async def test_pause_holds_every_sender() -> None:
    pacer = Pacer(rate_per_second=None, concurrency=10)
    pacer.pause(0.3)
    start = time.monotonic()
    await asyncio.gather(*(pacer.acquire() for _ in range(5)))
    assert time.monotonic() - start >= 0.28

"""In-process pacing per (channel, sender): a token bucket for rate and a semaphore for
concurrency. Prefect's own limits cost 20-220 ms a call, so messages are paced here."""

from __future__ import annotations

import asyncio
import time


class Pacer:
    """Async token bucket (`rate` per second, burst = max(1, rate)) plus a concurrency cap."""

    def __init__(self, rate_per_second: float | None, concurrency: int) -> None:
        self.rate = rate_per_second if rate_per_second and rate_per_second > 0 else None
        self.capacity = max(1.0, self.rate or 1.0)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self.paused_until = 0.0
        self.semaphore = asyncio.Semaphore(max(1, concurrency))
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        """Stop every sender of this pacer for `seconds` (the provider said Retry-After)."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def acquire(self) -> None:
        """Wait for a send slot under the rate and any pause."""
        while True:
            now = time.monotonic()
            if now < self.paused_until:
                await asyncio.sleep(self.paused_until - now)
                continue
            if self.rate is None:
                return
            async with self._lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            await asyncio.sleep(wait)


_pacers: dict[tuple[int, str, str], Pacer] = {}


def pacer_for(channel: str, sender: str, rate: float | None, concurrency: int) -> Pacer:
    """The shared pacer of a (channel, sender) within this event loop."""
    loop_id = id(asyncio.get_running_loop())
    key = (loop_id, channel, sender)
    pacer = _pacers.get(key)
    if pacer is None or pacer.rate != (rate if rate and rate > 0 else None):
        pacer = _pacers[key] = Pacer(rate, concurrency)
    return pacer

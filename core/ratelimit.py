"""Per-account token bucket for the HTTP API."""

from __future__ import annotations

import math
import threading
import time


class TokenBuckets:
    """One bucket per key: `rate` tokens a second up to `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token; returns 0 if allowed, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, updated = self._state.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
            if tokens >= 1:
                self._state[key] = (tokens - 1, now)
                return 0.0
            self._state[key] = (tokens, now)
            return (1 - tokens) / self.rate if self.rate > 0 else 60.0

    @staticmethod
    def retry_after_header(wait: float) -> int:
        """Whole seconds, at least 1, as Retry-After wants them."""
        return max(1, math.ceil(wait))

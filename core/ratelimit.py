"""Per-account token bucket for the HTTP API."""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Protocol


class Buckets(Protocol):
    def take(self, key: str) -> float:
        """0 if allowed, else the seconds to wait."""
        ...


def retry_after_header(wait: float) -> int:
    """Whole seconds, at least 1, as Retry-After wants them."""
    return max(1, math.ceil(wait))


class TokenBuckets:
    """One bucket per key: `rate` tokens a second up to `burst` (in this process: one machine,
    one API process, as on SQLite)."""

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


class DbTokenBuckets:
    """The same bucket shared by every API process on one PostgreSQL: one row per account,
    refilled and taken in one atomic UPDATE on the database clock."""

    REFILL = (
        "LEAST(CAST(:burst AS double precision), tokens + "
        "(EXTRACT(EPOCH FROM clock_timestamp()) - updated) * CAST(:rate AS double precision))"
    )

    def __init__(self, engine: Any, rate: float, burst: int) -> None:
        self.engine = engine
        self.rate = rate
        self.burst = max(1, burst)

    def take(self, key: str) -> float:
        """Take one token; returns 0 if allowed, else the seconds until one is available."""
        from sqlalchemy import text

        params = {"k": key, "burst": float(self.burst), "rate": float(self.rate)}
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO rate_buckets (account_id, tokens, updated) VALUES "
                    "(:k, :burst, EXTRACT(EPOCH FROM clock_timestamp())) ON CONFLICT (account_id) DO NOTHING"
                ),
                params,
            )
            taken = conn.execute(
                text(
                    f"UPDATE rate_buckets SET tokens = {self.REFILL} - 1, "
                    "updated = EXTRACT(EPOCH FROM clock_timestamp()) "
                    f"WHERE account_id = :k AND {self.REFILL} >= 1 RETURNING tokens"
                ),
                params,
            ).first()
            if taken is not None:
                return 0.0
            level = conn.execute(
                text(f"SELECT {self.REFILL} FROM rate_buckets WHERE account_id = :k"), params
            ).scalar_one()
        return (1 - float(level)) / self.rate if self.rate > 0 else 60.0

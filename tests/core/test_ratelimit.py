from __future__ import annotations

from sqlalchemy import Engine

from core.ids import new_id
from core.ratelimit import DbTokenBuckets, TokenBuckets, retry_after_header


def test_memory_buckets() -> None:
    buckets = TokenBuckets(rate=1, burst=2)
    assert [buckets.take("a"), buckets.take("a")] == [0, 0]
    wait = buckets.take("a")
    assert 0 < wait <= 1 and retry_after_header(wait) == 1
    assert buckets.take("b") == 0  # per key


def test_postgres_buckets_are_shared_by_every_api_process(pg_engine: Engine) -> None:
    first, second = DbTokenBuckets(pg_engine, rate=0.5, burst=3), DbTokenBuckets(pg_engine, rate=0.5, burst=3)
    key = new_id("acc")
    waits = [first.take(key), second.take(key), first.take(key), second.take(key)]
    assert waits[:3] == [0, 0, 0]
    assert 1 < waits[3] <= 2  # one token at 0.5/s
    assert first.take(new_id("acc")) == 0

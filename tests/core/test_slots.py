"""Per-sender slots: one holder at a time, nothing held by the dead (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import Engine, update

from core import slots
from core.db import session_scope
from core.timeutil import utcnow
from models import SenderSlot


def _try(db: Engine, name: str, holder: str) -> bool:
    with session_scope(db) as session:
        return slots.try_acquire(session, name=name, holder=holder)


def test_one_holder_at_a_time_and_the_holder_takes_its_own_back(db: Engine) -> None:
    name = slots.slot_name("sms", "SHOP " + utcnow().isoformat())
    assert _try(db, name, "cmp_a")
    assert not _try(db, name, "cmp_b")
    assert _try(db, name, "cmp_a")  # a resumed run of the same campaign, after a crash
    with session_scope(db) as session:
        slots.release(session, name=name, holder="cmp_a")
    assert _try(db, name, "cmp_b")


def test_a_dead_holders_slot_expires(db: Engine) -> None:
    """Regression: a Prefect global concurrency slot held at a `kill -9` of the whole tree was
    never released (its lease lived in the Prefect server's memory); every later campaign on
    that sender waited forever. A slot that is not renewed expires."""
    name = slots.slot_name("sms", "DEAD " + utcnow().isoformat())
    assert _try(db, name, "cmp_dead")
    with session_scope(db) as session:  # its holder stopped renewing long ago
        session.execute(
            update(SenderSlot)
            .where(SenderSlot.name == name)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert _try(db, name, "cmp_next")
    with session_scope(db) as session:
        assert not slots.renew(session, name=name, holder="cmp_dead")
        assert slots.renew(session, name=name, holder="cmp_next")


async def test_hold_waits_for_the_slot_and_releases_it(db: Engine) -> None:
    name = slots.slot_name("sms", "WAIT " + utcnow().isoformat())
    order: list[str] = []

    async def campaign(holder: str, seconds: float) -> None:
        async with slots.hold(db, name=name, holder=holder):
            order.append(f"{holder} in")
            await asyncio.sleep(seconds)
            order.append(f"{holder} out")

    first = asyncio.create_task(campaign("cmp_1", 0.5))
    await asyncio.sleep(0.1)
    await asyncio.gather(first, campaign("cmp_2", 0.0))
    assert order == ["cmp_1 in", "cmp_1 out", "cmp_2 in", "cmp_2 out"]
    with session_scope(db) as session:
        assert session.get(SenderSlot, name) is None

"""Per-sender slots: one campaign at a time sends through a (channel, sender), across every
worker, so that together they keep the provider's limits.

A slot is a lease in the app database (`sender_slots`), held by a campaign and renewed while it
sends. Nothing outlives its holder: a campaign whose processes were killed stops renewing and
its slot expires (`SLOT_TTL_S`), also across restarts of every server (a Prefect global
concurrency slot kept in the Prefect server's memory was never released after a `kill -9`).
The same campaign takes its own slot back at once when its run is resumed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy import Engine, delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from core.db import in_session
from core.timeutil import utcnow
from models import SenderSlot

log = logging.getLogger("campaigns.slots")
SLOT_TTL_S = 30.0
RENEW_S = 5.0
WAIT_S = 1.0


def slot_name(channel: str, sender: str) -> str:
    """The slot's name for a channel and sender value."""
    return f"{channel}:" + re.sub(r"[^A-Za-z0-9_.@+-]", "_", sender)[:180]


def try_acquire(session: Session, *, name: str, holder: str) -> bool:
    """Take the slot if it is free, expired or already ours (then the lease is extended)."""
    now = utcnow()
    expires = now + timedelta(seconds=SLOT_TTL_S)
    taken = session.execute(
        update(SenderSlot)
        .where(
            col(SenderSlot.name) == name,
            (col(SenderSlot.holder) == holder) | (col(SenderSlot.expires_at) < now),
        )
        .values(holder=holder, acquired_at=now, expires_at=expires)
    )
    if taken.rowcount == 1:  # type: ignore[attr-defined]
        return True
    if session.get(SenderSlot, name, populate_existing=True) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(SenderSlot(name=name, holder=holder, acquired_at=now, expires_at=expires))
    except IntegrityError:  # another worker created it first
        return False
    return True


def renew(session: Session, *, name: str, holder: str) -> bool:
    """Extend our lease; False if the slot is no longer ours."""
    result = session.execute(
        update(SenderSlot)
        .where(col(SenderSlot.name) == name, col(SenderSlot.holder) == holder)
        .values(expires_at=utcnow() + timedelta(seconds=SLOT_TTL_S))
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, *, name: str, holder: str) -> None:
    """Give the slot up."""
    session.execute(delete(SenderSlot).where(col(SenderSlot.name) == name, col(SenderSlot.holder) == holder))


def release_all(session: Session, *, holder: str) -> int:
    """Give up every slot a campaign holds (it stopped for good or paused)."""
    result = session.execute(delete(SenderSlot).where(col(SenderSlot.holder) == holder))
    return int(result.rowcount)  # type: ignore[attr-defined]


def reap_expired(session: Session) -> int:
    """Delete the slots whose holder stopped renewing them."""
    result = session.execute(delete(SenderSlot).where(col(SenderSlot.expires_at) < utcnow()))
    return int(result.rowcount)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def hold(engine: Engine, *, name: str, holder: str) -> AsyncIterator[None]:
    """Wait for the slot, keep it renewed while the body runs, then release it."""
    waited = False
    while not await in_session(engine, try_acquire, name=name, holder=holder):
        if not waited:
            log.info("%s waits for sender slot %s", holder, name)
            waited = True
        await asyncio.sleep(WAIT_S)

    async def keep() -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            try:
                if not await in_session(engine, renew, name=name, holder=holder):
                    log.warning("sender slot %s was taken from %s (lease expired)", name, holder)
            except Exception as exc:  # a missed renewal is retried; the lease has 6 renewals of slack
                log.warning("could not renew sender slot %s: %s", name, exc)

    renewer = asyncio.create_task(keep())
    try:
        yield
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        with contextlib.suppress(Exception):  # an unreleased slot expires on its own
            await in_session(engine, release, name=name, holder=holder)

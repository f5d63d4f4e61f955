"""Delivery tracking: apply provider status updates (never backwards) and poll for receipts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, or_, select, update
from sqlmodel import Session, col

from channels.base import Channel, StatusUpdate
from core import webhooks
from core.db import in_session, session_scope
from core.timeutil import utcnow
from models import Campaign, ErrorCode, Message, MessageStatus, StatusEvent
from models.enums import FINAL_CAMPAIGN_STATUSES, MESSAGE_STATUS_RANK

POLL_BATCH = 1000
# Where the provider pushes receipts (Twilio with CAMPAIGNS_PUBLIC_URL), a message is looked up
# only once its callback is this late: carriers' delivery reports take seconds, rarely minutes.
CALLBACK_OVERDUE_S = 120.0
POLL_CONCURRENCY = 32
EVENT_TTL = timedelta(days=7)


def _lower_statuses(status: str) -> list[str]:
    rank = MESSAGE_STATUS_RANK[MessageStatus(status)]
    return [s.value for s, r in MESSAGE_STATUS_RANK.items() if r < rank]


def apply_updates(session: Session, updates: Sequence[StatusUpdate], *, keep_unmatched: bool = False) -> int:
    """Apply provider updates by provider_message_id; an update never moves a message backwards
    and a repeated update changes nothing. Returns the number of rows changed.

    With `keep_unmatched`, updates for ids no message carries yet (a webhook that beat the
    sender's own bookkeeping) are kept as StatusEvents and replayed later."""
    if keep_unmatched and updates:
        ids = list({u.provider_message_id for u in updates})
        known = set(
            session.execute(
                select(col(Message.provider_message_id)).where(col(Message.provider_message_id).in_(ids))
            ).scalars()
        )
        now = utcnow()
        session.add_all(
            StatusEvent(
                provider_message_id=u.provider_message_id,
                status=u.status,
                error_code=u.error_code,
                error_message=u.error_message,
                received_at=now,
            )
            for u in updates
            if u.provider_message_id not in known
        )
    table = Message.__table__  # type: ignore[attr-defined]
    changed = 0
    now = utcnow()
    by_status: dict[str, list[dict[str, Any]]] = {}
    for u in updates:
        by_status.setdefault(u.status, []).append(
            {"b_pid": u.provider_message_id, "b_code": u.error_code, "b_msg": u.error_message}
        )
    for status, params in by_status.items():
        stmt = (
            update(table)
            .where(
                table.c.provider_message_id == bindparam("b_pid"),
                # no IN (...): expanding parameters cannot be used with executemany
                or_(*(table.c.status == s for s in _lower_statuses(status))),
            )
            .values(
                status=status,
                error_code=bindparam("b_code"),
                error_message=bindparam("b_msg"),
                updated_at=now,
            )
        )
        result = session.connection().execute(stmt, params)
        changed += max(int(result.rowcount), 0)
    failing = [u.provider_message_id for u in updates if u.status in webhooks.FAILED_STATUSES]
    if failing:  # not gated on `changed`: some drivers report no rowcount for executemany
        webhooks.report_failures(
            session, col(Message.provider_message_id).in_(failing), col(Message.updated_at) == now
        )
    return changed


def changing(session: Session, updates: Sequence[StatusUpdate]) -> list[StatusUpdate]:
    """The updates that could change something (read only): those for a provider id no message
    carries yet (kept for replay) and those above the message's status. A provider's echo of
    what we know (Twilio's `sent` callback after its 201) then costs no write transaction."""
    if not updates:
        return []
    ids = list({u.provider_message_id for u in updates})
    current: dict[str, int] = {}
    for pid, status in session.execute(
        select(col(Message.provider_message_id), col(Message.status)).where(
            col(Message.provider_message_id).in_(ids)
        )
    ).all():
        rank = MESSAGE_STATUS_RANK[MessageStatus(status)]
        current[pid] = min(rank, current.get(pid, rank))
    return [
        u
        for u in updates
        if u.provider_message_id not in current
        or MESSAGE_STATUS_RANK[MessageStatus(u.status)] > current[u.provider_message_id]
    ]


def replay_events(
    session: Session, *, provider_ids: Sequence[str] | None = None, campaign_id: str | None = None
) -> int:
    """Apply kept StatusEvents whose message now has its provider id; returns rows changed."""
    query = select(StatusEvent).order_by(col(StatusEvent.id))
    if provider_ids is not None:
        if not provider_ids:
            return 0
        query = query.where(col(StatusEvent.provider_message_id).in_(list(provider_ids)))
    if campaign_id is not None:
        query = query.where(
            col(StatusEvent.provider_message_id).in_(
                select(col(Message.provider_message_id)).where(
                    col(Message.campaign_id) == campaign_id, col(Message.provider_message_id).is_not(None)
                )
            )
        )
    events = list(session.execute(query.limit(10_000)).scalars())
    if not events:
        return 0
    changed = 0
    for event in events:  # in arrival order, each never moving a message backwards
        changed += apply_updates(
            session,
            [StatusUpdate(event.provider_message_id, event.status, event.error_code, event.error_message)],
        )
    session.execute(delete(StatusEvent).where(col(StatusEvent.id).in_([e.id for e in events])))
    session.execute(delete(StatusEvent).where(col(StatusEvent.received_at) < utcnow() - EVENT_TTL))
    return changed


def nonfinal_count(session: Session, campaign_id: str) -> int:
    """Messages of a campaign not yet in a final status."""
    return int(
        session.execute(
            select(func.count())
            .select_from(Message)
            .where(
                col(Message.campaign_id) == campaign_id,
                col(Message.status).in_([MessageStatus.pending, MessageStatus.sending, MessageStatus.sent]),
            )
        ).scalar_one()
    )


async def poll_once(engine: Engine, channel: Channel, campaign_id: str) -> int:
    """Ask the provider about every `sent` message once (where it pushes receipts: only those
    whose callback is overdue); returns how many became final."""
    if not channel.supports_status_lookup:
        return 0
    overdue = []
    if getattr(channel, "receipts_pushed", False):
        overdue = [col(Message.sent_at) < utcnow() - timedelta(seconds=CALLBACK_OVERDUE_S)]
    last_seq = -1
    resolved = 0
    semaphore = asyncio.Semaphore(POLL_CONCURRENCY)

    def _page(after: int) -> list[Any]:
        with session_scope(engine) as session:
            return list(
                session.execute(
                    select(col(Message.seq), col(Message.provider_message_id), col(Message.sent_at))
                    .where(
                        col(Message.campaign_id) == campaign_id,
                        col(Message.status) == MessageStatus.sent,
                        col(Message.seq) > after,
                        *overdue,
                    )
                    .order_by(col(Message.seq))
                    .limit(POLL_BATCH)
                ).all()
            )

    async def _one(pid: str, sent_at: Any) -> StatusUpdate | None:
        async with semaphore:
            return await channel.fetch_status(pid, sent_at)

    def _apply(updates: list[StatusUpdate]) -> int:
        with session_scope(engine) as session:
            return apply_updates(session, updates)

    while True:
        rows = await asyncio.to_thread(_page, last_seq)
        if not rows:
            return resolved
        last_seq = rows[-1][0]
        results = await asyncio.gather(*(_one(r[1], r[2]) for r in rows if r[1]))
        updates = [u for u in results if u is not None]
        if updates:
            resolved += await asyncio.to_thread(_apply, updates)


def _campaign_status(session: Session, campaign_id: str) -> str | None:
    return session.execute(select(col(Campaign.status)).where(col(Campaign.id) == campaign_id)).scalar()


async def await_final(
    engine: Engine,
    channel: Channel,
    campaign_id: str,
    *,
    dispatched_at: datetime,
    timeout_s: float,
    poll_interval_s: float,
) -> dict[str, int]:
    """Poll the provider until every message is final, the campaign ends, or `timeout_s` after
    `dispatched_at` passes; what is still not final then fails with status_timeout."""
    deadline = dispatched_at.timestamp() + timeout_s
    polls = 0
    while True:
        remaining = await in_session(engine, nonfinal_count, campaign_id)
        if (
            remaining == 0
            or await in_session(engine, _campaign_status, campaign_id) in FINAL_CAMPAIGN_STATUSES
        ):
            return {"polls": polls, "expired": 0}
        if time.time() >= deadline:
            return {"polls": polls, "expired": await in_session(engine, expire, campaign_id=campaign_id)}
        await in_session(engine, replay_events, campaign_id=campaign_id)
        await poll_once(engine, channel, campaign_id)
        polls += 1
        if await in_session(engine, nonfinal_count, campaign_id):
            await asyncio.sleep(poll_interval_s)


def expire(session: Session, *, campaign_id: str) -> int:
    """Fail what is still not final after the receipt timeout (error_code status_timeout)."""
    now = utcnow()
    result = session.execute(
        update(Message)
        .where(
            col(Message.campaign_id) == campaign_id,
            col(Message.status) == MessageStatus.sent,
        )
        .values(
            status=MessageStatus.failed,
            error_code=ErrorCode.status_timeout,
            error_message="no final status from the provider before the timeout",
            updated_at=now,
        )
    )
    expired = int(result.rowcount)  # type: ignore[attr-defined]
    if expired:
        webhooks.report_failures(
            session, col(Message.campaign_id) == campaign_id, col(Message.updated_at) == now
        )
    return expired

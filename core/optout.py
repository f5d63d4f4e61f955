"""Inbound opt-out keywords: STOP and friends unsubscribe a phone, START subscribes it again.

A STOP sets `unsubscribed_at` (out of everything, SPEC §2) and records a `sms` channel opt-out
beside it: that row is how START tells an opt-out it may undo (the phone's own STOP) from one
it must not (an operator's or the API's `subscribed: false`, another channel's unsubscribe)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from core.timeutil import utcnow
from models import ChannelOptOut, Contact, SenderId, SenderIdStatus

# Twilio's standard opt-out and opt-in keywords (error 21610 docs).
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP", "YES"})
# The channel of the opt-out row a STOP records.
STOP_CHANNEL = "sms"


def keyword(body: str) -> str:
    """The first word of an inbound message, upper-cased."""
    words = body.strip().split()
    return words[0].upper().strip(".!") if words else ""


def _owners(session: Session, to: str) -> list[str]:
    """Accounts with an approved sms sender ID equal to `to` (a pending or rejected
    registration claims nothing: anyone can register any value)."""
    return list(
        session.exec(
            select(SenderId.account_id)
            .where(
                SenderId.channel == "sms",
                SenderId.value == to,
                SenderId.status == SenderIdStatus.approved,
            )
            .distinct()
        ).all()
    )


def handle_inbound_sms(session: Session, *, from_phone: str, to: str, body: str) -> int:
    """Apply an inbound SMS: opt the sender's phone out (or back in) in every account that owns
    an sms sender ID equal to `to`, or in every account when `to` matches none. Returns the
    number of contacts changed."""
    word = keyword(body)
    if word not in STOP_WORDS and word not in START_WORDS:
        return 0
    owners = _owners(session, to)
    phone = select(col(Contact.id)).where(col(Contact.phone) == from_phone)
    if owners:
        phone = phone.where(col(Contact.account_id).in_(owners))
    if word in STOP_WORDS:
        return _stop(session, list(session.exec(phone.where(col(Contact.unsubscribed_at).is_(None))).all()))
    stopped = select(col(ChannelOptOut.contact_id)).where(col(ChannelOptOut.channel) == STOP_CHANNEL)
    return _start(
        session,
        list(
            session.exec(
                phone.where(col(Contact.unsubscribed_at).is_not(None), col(Contact.id).in_(stopped))
            ).all()
        ),
    )


def _stop(session: Session, contact_ids: list[str]) -> int:
    if not contact_ids:
        return 0
    now = utcnow()
    session.execute(
        update(Contact).where(col(Contact.id).in_(contact_ids)).values(unsubscribed_at=now, updated_at=now)
    )
    marked = set(
        session.exec(
            select(col(ChannelOptOut.contact_id)).where(
                col(ChannelOptOut.contact_id).in_(contact_ids), col(ChannelOptOut.channel) == STOP_CHANNEL
            )
        ).all()
    )
    session.add_all(
        ChannelOptOut(contact_id=cid, channel=STOP_CHANNEL, created_at=now)
        for cid in contact_ids
        if cid not in marked
    )
    session.flush()
    return len(contact_ids)


def _start(session: Session, contact_ids: list[str]) -> int:
    if not contact_ids:
        return 0
    session.execute(
        update(Contact)
        .where(col(Contact.id).in_(contact_ids))
        .values(unsubscribed_at=None, updated_at=utcnow())
    )
    session.execute(
        delete(ChannelOptOut).where(
            col(ChannelOptOut.contact_id).in_(contact_ids), col(ChannelOptOut.channel) == STOP_CHANNEL
        )
    )
    return len(contact_ids)


def leave_channel(session: Session, *, channel: str, contact_ids: Sequence[str]) -> int:
    """Opt contacts out of one channel only (an email unsubscribe, a bounce or spam report, a
    blocked bot): they stay active on every other channel. Idempotent, also when two requests
    race (INSERT … ON CONFLICT DO NOTHING); returns rows added."""
    wanted = list(dict.fromkeys(contact_ids))
    if not wanted:
        return 0
    now = utcnow()
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = ChannelOptOut.__table__  # type: ignore[attr-defined]
    added = session.execute(
        insert(table)
        .values([{"contact_id": cid, "channel": channel, "created_at": now} for cid in wanted])
        .on_conflict_do_nothing(index_elements=["contact_id", "channel"])
        .returning(table.c.contact_id)
    ).scalars()
    new = list(added)
    if new:
        session.execute(update(Contact).where(col(Contact.id).in_(new)).values(updated_at=now))
    session.flush()
    return len(new)

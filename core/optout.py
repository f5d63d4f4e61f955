"""Inbound opt-out keywords: STOP and friends unsubscribe a phone, START subscribes it again."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import Session, col, select

from core.timeutil import utcnow
from models import Contact, SenderId

# Twilio's standard opt-out and opt-in keywords (error 21610 docs).
STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP", "YES"})


def keyword(body: str) -> str:
    """The first word of an inbound message, upper-cased."""
    words = body.strip().split()
    return words[0].upper().strip(".!") if words else ""


def handle_inbound_sms(session: Session, *, from_phone: str, to: str, body: str) -> int:
    """Apply an inbound SMS: opt the sender's phone out (or back in) in every account that owns
    an sms sender ID equal to `to`, or in every account when `to` matches none. Returns the
    number of contacts changed."""
    word = keyword(body)
    if word not in STOP_WORDS and word not in START_WORDS:
        return 0
    owners = list(
        session.exec(
            select(SenderId.account_id).where(SenderId.channel == "sms", SenderId.value == to).distinct()
        ).all()
    )
    stmt = update(Contact).where(col(Contact.phone) == from_phone)
    if owners:
        stmt = stmt.where(col(Contact.account_id).in_(owners))
    if word in STOP_WORDS:
        stmt = stmt.where(col(Contact.unsubscribed_at).is_(None)).values(
            unsubscribed_at=utcnow(), updated_at=utcnow()
        )
    else:
        stmt = stmt.where(col(Contact.unsubscribed_at).is_not(None)).values(
            unsubscribed_at=None, updated_at=utcnow()
        )
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]

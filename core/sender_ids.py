"""Sender IDs: registered per account and channel, approved by an operator."""

from __future__ import annotations

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, or_, select

from core.errors import Conflict, NotFound
from core.ids import new_id
from core.timeutil import utcnow
from core.validation import check_sender_value
from models import SenderId, SenderIdStatus


def register(
    session: Session, *, account_id: str, channel: str, value: str, approved: bool = False
) -> SenderId:
    """Register a sender ID (pending unless `approved`)."""
    check_sender_value(channel, value)
    sender = SenderId(
        id=new_id("sid"),
        account_id=account_id,
        channel=channel,
        value=value,
        status=SenderIdStatus.approved if approved else SenderIdStatus.pending,
        created_at=utcnow(),
    )
    try:
        with session.begin_nested():
            session.add(sender)
            session.flush()
    except IntegrityError:
        raise Conflict(f"sender ID {value!r} is already registered for {channel}") from None
    return sender


def set_status(session: Session, *, sender_id: str, status: SenderIdStatus) -> SenderId:
    """Approve or reject a sender ID (operator action)."""
    sender = session.get(SenderId, sender_id)
    if sender is None:
        raise NotFound(f"sender ID {sender_id} not found")
    sender.status = status
    session.add(sender)
    session.flush()
    return sender


def find_for_campaign(session: Session, *, account_id: str, channel: str, ref: str) -> SenderId | None:
    """The account's sender ID for `channel` matching an id (`sid_…`) or a value."""
    return session.exec(
        select(SenderId).where(
            SenderId.account_id == account_id,
            SenderId.channel == channel,
            or_(col(SenderId.id) == ref, col(SenderId.value) == ref),
        )
    ).first()


def list_sender_ids(
    session: Session, *, account_id: str, page: int, per_page: int
) -> tuple[list[SenderId], int]:
    """A page of the account's sender IDs, newest first."""
    rows = session.exec(
        select(SenderId)
        .where(SenderId.account_id == account_id)
        .order_by(col(SenderId.created_at).desc(), col(SenderId.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    total = session.exec(
        select(func.count()).select_from(SenderId).where(SenderId.account_id == account_id)
    ).one()
    return list(rows), int(total)

"""SendGrid event webhook batches → message statuses and email opt-outs (SPEC §10).

An event names its message twice: `sg_message_id` up to its first dot is the X-Message-Id the
send stored as provider_message_id, and our `campaigns_message_id` custom arg is the message's
own id. The second still finds a message whose events beat the sender's bookkeeping (no
provider id yet): its update is kept and replayed once the id is recorded. Events naming no
message of ours (other mail on the same SendGrid account) are ignored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlmodel import Session, col

from channels.base import StatusUpdate
from channels.email_sendgrid import MESSAGE_ID_ARG, provider_id
from core import optout, tracking
from models import Message, MessageStatus

CHANNEL = "email"
BOUNCE = "bounce"
DROPPED = "dropped"
# The recipient asked for no more mail (besides a hard bounce, which makes more mail pointless).
OPT_OUT_EVENTS = frozenset({"spamreport", "unsubscribe", "group_unsubscribe"})
# Longest id a message stores (Message.provider_message_id, Message.id).
MAX_ID = 128


@dataclass(frozen=True, slots=True)
class EmailEvent:
    """One SendGrid event, reduced to what it changes for its message."""

    provider_message_id: str | None
    message_id: str | None
    status: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    opt_out: bool = False


@dataclass(frozen=True, slots=True)
class Applied:
    """What one batch changed: messages whose status moved, contacts that left email."""

    applied: int
    opted_out: int


def _short(value: object) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID else None


def _text(raw: dict[str, Any], default: str) -> str:
    """The event's `reason`, with its enhanced `status` code when the reason does not hold it."""
    reason, status = (str(raw.get(k) or "").strip() for k in ("reason", "status"))
    text = reason or status or default
    if reason and status and status not in reason:
        text = f"{reason} ({status})"
    return text[:1000]


def read_event(raw: dict[str, Any]) -> EmailEvent | None:
    """One event object → what it means for its message (None for events that change nothing:
    processed, deferred, open, click, or an event naming no message)."""
    kind = raw.get("event")
    pid, mid = _short(provider_id(raw.get("sg_message_id"))), _short(raw.get(MESSAGE_ID_ARG))
    if pid is None and mid is None:
        return None
    if kind == "delivered":
        return EmailEvent(pid, mid, MessageStatus.delivered)
    if kind == "bounce":
        # `blocked` is a soft bounce (the receiver refused this one message, e.g. for reputation):
        # the message is lost, the address is not.
        blocked = raw.get("type") == "blocked"
        text = _text(raw, "bounced")
        return EmailEvent(
            pid, mid, MessageStatus.undelivered, BOUNCE, f"blocked: {text}" if blocked else text, not blocked
        )
    if kind == "dropped":
        return EmailEvent(pid, mid, MessageStatus.undelivered, DROPPED, _text(raw, "dropped"))
    if kind in OPT_OUT_EVENTS:
        return EmailEvent(pid, mid, opt_out=True)
    return None


def read_events(payload: Any) -> list[EmailEvent]:
    """The events of a webhook body (a JSON array) that change something; other items are ignored."""
    if not isinstance(payload, list):
        return []
    return [e for e in (read_event(item) for item in payload if isinstance(item, dict)) if e is not None]


def _messages(session: Session, events: Sequence[EmailEvent]) -> list[Any]:
    pids = list({e.provider_message_id for e in events if e.provider_message_id})
    mids = list({e.message_id for e in events if e.message_id})
    return list(
        session.execute(
            select(col(Message.id), col(Message.provider_message_id), col(Message.contact_id)).where(
                or_(col(Message.provider_message_id).in_(pids), col(Message.id).in_(mids))
            )
        ).all()
    )


def apply_events(session: Session, events: Sequence[EmailEvent]) -> Applied:
    """Apply a batch: statuses never move backwards (tracking.apply_updates); hard-bounced and
    complaining recipients leave the email channel."""
    rows = _messages(session, events) if events else []
    by_pid = {row.provider_message_id: row for row in rows if row.provider_message_id}
    by_id = {row.id: row for row in rows}
    updates: list[StatusUpdate] = []
    leaving: list[str] = []
    for event in events:
        row = by_pid.get(event.provider_message_id) or by_id.get(event.message_id)
        if row is None:
            continue
        if event.opt_out:
            leaving.append(row.contact_id)
        # The stored id when there is one; before the send is recorded, the event's own (kept
        # by apply_updates and replayed when the sender records that id).
        pid = row.provider_message_id or event.provider_message_id
        if event.status is not None and pid:
            updates.append(StatusUpdate(pid, event.status, event.error_code, event.error_message))
    changed = tracking.apply_updates(session, updates, keep_unmatched=True) if updates else 0
    opted_out = optout.leave_channel(session, channel=CHANNEL, contact_ids=leaving) if leaving else 0
    return Applied(changed, opted_out)

"""Who a campaign reaches: the active contacts of its list with an address for its channel."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html import escape
from typing import Any

from sqlalchemy import and_, func, insert, select
from sqlalchemy.orm import InstrumentedAttribute
from sqlmodel import Session, col

from core.ids import new_id
from core.render import (
    UNSUBSCRIBE_PLACEHOLDER,
    UNSUBSCRIBE_URL,
    contact_values,
    message_cost,
    render,
    render_template,
    template_texts,
)
from core.timeutil import utcnow
from core.zones import recipient_zone
from models import ChannelOptOut, Contact, ListMembership, Message

ADDRESS_COLUMN: dict[str, InstrumentedAttribute[Any]] = {
    "sms": Contact.phone,  # type: ignore[dict-item]
    "whatsapp": Contact.phone,  # type: ignore[dict-item]
    "email": Contact.email,  # type: ignore[dict-item]
    "telegram": Contact.telegram_chat_id,  # type: ignore[dict-item]
    "slack": Contact.slack_user_id,  # type: ignore[dict-item]
}
BATCH = 5000


@dataclass(frozen=True)
class Audience:
    recipients: int
    skipped: int
    cost: int


@dataclass(frozen=True, slots=True)
class Recipient:
    contact_id: str
    address: str
    name: str
    phone: str
    email: str | None
    attributes: dict[str, Any]
    timezone: str | None = None


def _member_filter(account_id: str, list_id: str) -> Any:
    return and_(
        col(Contact.account_id) == account_id,
        col(Contact.id).in_(
            select(col(ListMembership.contact_id)).where(col(ListMembership.list_id) == list_id)
        ),
    )


def _reachable(channel: str) -> Any:
    address = ADDRESS_COLUMN[channel]
    opted_out = select(col(ChannelOptOut.contact_id)).where(col(ChannelOptOut.channel) == channel)
    return and_(
        col(Contact.unsubscribed_at).is_(None),
        address.is_not(None),
        address != "",
        col(Contact.id).not_in(opted_out),
    )


def iter_recipients(session: Session, *, account_id: str, list_id: str, channel: str) -> Iterator[Recipient]:
    """Stream the reachable contacts in a stable order (oldest contact first)."""
    address = ADDRESS_COLUMN[channel]
    query = (
        select(
            col(Contact.id),
            address,
            col(Contact.name),
            col(Contact.phone),
            col(Contact.email),
            col(Contact.attributes),
            col(Contact.timezone),
        )
        .where(_member_filter(account_id, list_id), _reachable(channel))
        .order_by(col(Contact.created_at), col(Contact.id))
        .execution_options(yield_per=BATCH)
    )
    for row in session.execute(query):
        yield Recipient(row[0], str(row[1]), row[2], row[3], row[4], row[5] or {}, row[6])


@dataclass(frozen=True)
class Content:
    """What a campaign sends; the personalized parts are rendered per recipient at the snapshot
    and stored with each message, so that the provider gets exactly the text that was priced."""

    body: str | None = None
    subject: str | None = None
    template: dict[str, Any] | None = None
    html: str | None = None

    def personalized_fields(self) -> tuple[str, ...]:
        """The fields with placeholders."""
        fields = [name for name in ("body", "subject", "html") if "{{" in (getattr(self, name) or "")]
        if self.template and any("{{" in p["text"] for p in template_texts(self.template)):
            fields.append("template")
        return tuple(fields)

    def rendered(self, fields: tuple[str, ...], recipient: Recipient) -> dict[str, Any] | None:
        """The personalized fields for one recipient (None when nothing is personalized)."""
        if not fields:
            return None
        values = contact_values(recipient.name, recipient.phone, recipient.email, recipient.attributes)
        # The unsubscribe link is signed and filled in at send time (core/unsubscribe.py).
        values[UNSUBSCRIBE_URL] = UNSUBSCRIBE_PLACEHOLDER
        out: dict[str, Any] = {}
        for name in fields:
            if name == "template":
                assert self.template is not None
                out[name] = render_template(self.template, values)
            elif name == "html":
                assert self.html is not None
                out[name] = render(self.html, {k: escape(v, quote=True) for k, v in values.items()})
            else:
                out[name] = render(getattr(self, name), values)
        return out


def per_message_cost(channel: str, body: str | None, recipient: Recipient) -> int:
    """Credits one recipient's message costs, after personalization."""
    if channel != "sms" or body is None:
        return 1
    values = contact_values(recipient.name, recipient.phone, recipient.email, recipient.attributes)
    return message_cost(channel, render(body, values))


def estimate(session: Session, *, account_id: str, list_id: str, channel: str, body: str | None) -> Audience:
    """Count recipients and skipped members, and price the campaign."""
    members = session.execute(
        select(func.count()).select_from(Contact).where(_member_filter(account_id, list_id))
    ).scalar_one()
    count = session.execute(
        select(func.count())
        .select_from(Contact)
        .where(_member_filter(account_id, list_id), _reachable(channel))
    ).scalar_one()
    if channel == "sms" and body is not None and "{{" in body:
        # Personalized SMS: price each rendered body, streamed (no list of recipients in memory).
        recipients = iter_recipients(session, account_id=account_id, list_id=list_id, channel=channel)
        cost = sum(per_message_cost(channel, body, recipient) for recipient in recipients)
    else:
        cost = count * message_cost(channel, body) if channel == "sms" else count
    return Audience(recipients=int(count), skipped=int(members) - int(count), cost=int(cost))


def snapshot(
    session: Session,
    *,
    campaign_id: str,
    account_id: str,
    list_id: str,
    channel: str,
    content: Content,
    sink: Callable[[list[dict[str, Any]]], None] | None = None,
    zoned: bool = False,
    default_zone: str = "UTC",
) -> Audience:
    """One pending message row per recipient (seq 0..n-1) with its personalized content and its
    price, handed to `sink` in batches (default: inserted through `session`); `zoned` (the
    campaign has a send window) fixes each recipient's time zone on its row."""
    members = session.execute(
        select(func.count()).select_from(Contact).where(_member_filter(account_id, list_id))
    ).scalar_one()
    now = utcnow()
    rows: list[dict[str, Any]] = []
    count = cost = 0
    table = Message.__table__  # type: ignore[attr-defined]

    def insert_here(batch: list[dict[str, Any]]) -> None:
        session.execute(insert(table), batch)

    write = sink or insert_here
    fields = content.personalized_fields()
    same_price = message_cost(channel, content.body) if "body" not in fields else 0
    for recipient in iter_recipients(session, account_id=account_id, list_id=list_id, channel=channel):
        frozen = content.rendered(fields, recipient)
        price = message_cost(channel, frozen["body"]) if frozen and "body" in frozen else same_price
        rows.append(
            {
                "id": new_id("msg"),
                "campaign_id": campaign_id,
                "contact_id": recipient.contact_id,
                "seq": count,
                "to_address": recipient.address,
                "status": "pending",
                "cost": price,
                "content": frozen,
                "zone": recipient_zone(recipient.timezone, recipient.phone, default_zone) if zoned else None,
                "retryable": False,
                "attempts": 0,
                "updated_at": now,
            }
        )
        count += 1
        cost += price
        if len(rows) >= BATCH:
            write(rows)
            rows = []
    if rows:
        write(rows)
    return Audience(recipients=count, skipped=int(members) - count, cost=cost)

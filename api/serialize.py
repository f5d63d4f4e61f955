"""Domain rows → API objects (timestamps as ISO 8601 with Z)."""

from __future__ import annotations

from typing import Any

from core.objects import campaign_object, message_object
from core.timeutil import iso_z
from models import Campaign, Contact, ContactList, Message, SenderId


def campaign_out(c: Campaign, counts: dict[str, int]) -> dict[str, Any]:
    """The campaign object with live counts from its messages."""
    return campaign_object(c, counts)


def message_out(m: Message) -> dict[str, Any]:
    """One per-recipient record."""
    return message_object(m.model_dump())


def contact_out(c: Contact, lists: list[str], opted_out_channels: list[str]) -> dict[str, Any]:
    """A contact with its list ids and the channels it left one by one."""
    return {
        "id": c.id,
        "name": c.name,
        "phone": c.phone,
        "email": c.email,
        "telegram_chat_id": c.telegram_chat_id,
        "slack_user_id": c.slack_user_id,
        "attributes": c.attributes or {},
        "timezone": c.timezone,
        "lists": lists,
        "subscribed": c.unsubscribed_at is None,
        "opted_out_channels": opted_out_channels,
        "unsubscribed_at": iso_z(c.unsubscribed_at),
        "created_at": iso_z(c.created_at),
        "updated_at": iso_z(c.updated_at),
    }


def list_out(lst: ContactList, count: int) -> dict[str, Any]:
    """A contact list with its size."""
    return {"id": lst.id, "name": lst.name, "contact_count": count, "created_at": iso_z(lst.created_at)}


def sender_out(s: SenderId) -> dict[str, Any]:
    """A sender ID."""
    return {
        "id": s.id,
        "value": s.value,
        "channel": s.channel,
        "status": s.status,
        "created_at": iso_z(s.created_at),
    }

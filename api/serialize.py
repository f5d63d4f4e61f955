"""Domain rows → API objects (timestamps as ISO 8601 with Z)."""

from __future__ import annotations

from typing import Any

from core.timeutil import iso_z
from models import Campaign, Contact, ContactList, Message, SenderId


def campaign_out(c: Campaign, counts: dict[str, int]) -> dict[str, Any]:
    """The campaign object with live counts from its messages."""
    delivered = counts.get("delivered", 0)
    failed = counts.get("failed", 0) + counts.get("undelivered", 0)
    return {
        "id": c.id,
        "name": c.name,
        "status": c.status,
        "channel": c.channel,
        "contact_list_id": c.contact_list_id,
        "sender_id": c.sender_id,
        "sender_value": c.sender_value,
        "body": c.body,
        "template": c.template,
        "subject": c.subject,
        "total_recipients": c.total_recipients,
        "delivered_count": delivered,
        "failed_count": failed,
        "skipped_count": c.skipped_count,
        "sent_count": counts.get("sent", 0),
        "pending_count": counts.get("pending", 0) + counts.get("sending", 0),
        "credits_reserved": c.credits_reserved,
        "credits_used": c.credits_used,
        "scheduled_at": iso_z(c.scheduled_at),
        "paused_at": iso_z(c.paused_at),
        "retry_of": c.retry_of,
        "schedule_id": c.schedule_id,
        "created_at": iso_z(c.created_at),
        "started_at": iso_z(c.started_at),
        "dispatched_at": iso_z(c.dispatched_at),
        "completed_at": iso_z(c.completed_at),
        "cancelled_at": iso_z(c.cancelled_at),
        "failure_reason": c.failure_reason,
        "flow_run_id": c.flow_run_id,
    }


def message_out(m: Message) -> dict[str, Any]:
    """One per-recipient record."""
    return {
        "id": m.id,
        "contact_id": m.contact_id,
        "to": m.to_address,
        "status": m.status,
        "provider_message_id": m.provider_message_id,
        "error_code": m.error_code,
        "error_message": m.error_message,
        "attempts": m.attempts,
        "sent_at": iso_z(m.sent_at),
        "updated_at": iso_z(m.updated_at),
    }


def contact_out(c: Contact, lists: list[str]) -> dict[str, Any]:
    """A contact with its list ids."""
    return {
        "id": c.id,
        "name": c.name,
        "phone": c.phone,
        "email": c.email,
        "telegram_chat_id": c.telegram_chat_id,
        "slack_user_id": c.slack_user_id,
        "attributes": c.attributes or {},
        "lists": lists,
        "subscribed": c.unsubscribed_at is None,
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

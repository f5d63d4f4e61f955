"""The objects the API returns and events carry: rows → JSON (timestamps ISO 8601 with Z).
One definition, used by `api/serialize.py` and by the webhook outbox."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.timeutil import iso_z
from models import Campaign


def campaign_object(c: Campaign, counts: Mapping[str, int]) -> dict[str, Any]:
    """The API's campaign object."""
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
        "html": c.html,
        "send_window": c.send_window,
        "total_recipients": c.total_recipients,
        "delivered_count": counts.get("delivered", 0),
        "failed_count": counts.get("failed", 0) + counts.get("undelivered", 0),
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


def message_object(m: Mapping[str, Any]) -> dict[str, Any]:
    """The API's per-recipient record, from a `messages` row."""
    return {
        "id": m["id"],
        "contact_id": m["contact_id"],
        "to": m["to_address"],
        "status": m["status"],
        "provider_message_id": m["provider_message_id"],
        "error_code": m["error_code"],
        "error_message": m["error_message"],
        "attempts": m["attempts"],
        "sent_at": iso_z(m["sent_at"]),
        "updated_at": iso_z(m["updated_at"]),
    }

"""Event webhooks (SPEC §9): an account's endpoints, and the outbox their events wait in.

Invariant: an event's outbox rows (`webhook_deliveries`, one per subscribed endpoint) are
inserted in the transaction of the change they report, so every committed change is reported
and a rolled-back one never is. A row holds the exact payload text that is signed and sent, with
its event's `evt_` id, on every attempt. Sending them is `core.webhook_delivery`'s.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, insert, select, update
from sqlmodel import Session, col

from core.counts import campaign_counts
from core.errors import NotFound, ValidationFailed
from core.ids import new_id
from core.objects import campaign_object, message_object
from core.timeutil import iso_z, utcnow
from models import Campaign, Message, MessageStatus, WebhookDelivery, WebhookEndpoint
from models.webhooks_public import WebhookEventType

EventType = WebhookEventType
FAILED_STATUSES = (MessageStatus.failed, MessageStatus.undelivered)
# Messages per payload-building batch when a write fails many at once (a cancelled campaign).
BATCH = 500


# -- endpoints --


def create_endpoint(
    session: Session, *, account_id: str, url: str, events: Sequence[str], allow_private: bool
) -> WebhookEndpoint:
    """A new endpoint with a fresh secret; a literal private address or localhost is refused
    (422) unless `allow_private` (host names are checked when delivering)."""
    host = urlsplit(url).hostname or ""
    if not allow_private and literal_private_host(host):
        raise ValidationFailed(
            "url must not point at a loopback, private or link-local address", {"field": "url"}
        )
    endpoint = WebhookEndpoint(
        id=new_id("whe"),
        account_id=account_id,
        url=url,
        events=list(dict.fromkeys(str(e) for e in events)),
        secret="whsec_" + secrets.token_hex(32),
        created_at=utcnow(),
    )
    session.add(endpoint)
    session.flush()
    return endpoint


def list_endpoints(
    session: Session, *, account_id: str, page: int, per_page: int
) -> tuple[list[WebhookEndpoint], int]:
    """A page of the account's endpoints, newest first."""
    mine = col(WebhookEndpoint.account_id) == account_id
    rows = session.execute(
        select(WebhookEndpoint)
        .where(mine)
        .order_by(col(WebhookEndpoint.created_at).desc(), col(WebhookEndpoint.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).scalars()
    total = session.execute(select(func.count()).select_from(WebhookEndpoint).where(mine)).scalar_one()
    return list(rows), int(total)


def delete_endpoint(session: Session, *, account_id: str, endpoint_id: str) -> None:
    """Delete an endpoint of the account (NotFound otherwise); what it still had to receive
    is given up."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.account_id != account_id:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    now = utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.endpoint_id) == endpoint_id,
            col(WebhookDelivery.delivered_at).is_(None),
            col(WebhookDelivery.failed_at).is_(None),
        )
        .values(failed_at=now, last_error="endpoint deleted")
    )
    session.delete(endpoint)


def endpoint_object(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """An endpoint as the API shows it (never its secret)."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events,
        "created_at": iso_z(endpoint.created_at),
    }


# -- target addresses --


def private_address(address: str) -> bool:
    """True for anything but a public unicast address: loopback, private, link-local,
    unspecified, shared, reserved, multicast (an IPv4-mapped IPv6 address counts as IPv4)."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def literal_private_host(host: str) -> bool:
    """A URL host that is a private address by itself, without DNS: `localhost` (and
    `*.localhost`) or a private IP literal, including the legacy forms `127.1`, `2130706433`."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return private_address(name)
    except ValueError:
        pass
    try:
        packed = socket.inet_aton(name)
    except OSError:
        return False
    return private_address(socket.inet_ntoa(packed))


# -- the outbox --


def subscribers(session: Session, account_id: str, event_type: str) -> list[str]:
    """Ids of the account's endpoints that take `event_type` (one indexed query)."""
    rows = session.execute(
        select(col(WebhookEndpoint.id), col(WebhookEndpoint.events)).where(
            col(WebhookEndpoint.account_id) == account_id
        )
    ).all()
    return [endpoint_id for endpoint_id, events in rows if event_type in (events or [])]


def enqueue(
    session: Session,
    account_id: str,
    type: EventType,
    *,
    campaign: Campaign,
    message: Message | Mapping[str, Any] | None = None,
) -> int:
    """Put one event in the outbox of every endpoint of the account subscribed to it, in the
    caller's transaction; returns the rows inserted (none, and no payload built, when none
    subscribes)."""
    endpoints = subscribers(session, account_id, type)
    if not endpoints:
        return 0
    data: dict[str, Any] = {"campaign": _campaign_now(session, campaign)}
    if message is not None:
        data["message"] = message_object(message.model_dump() if isinstance(message, Message) else message)
    return _insert(session, account_id, campaign.id, type, endpoints, [data])


def report_failures(session: Session, *conditions: Any) -> int:
    """Put `message.failed` in the outbox for the messages matching `conditions` that are failed
    or undelivered, where their account subscribes; returns the rows inserted. The caller passes
    the conditions of the write that has just failed them (with its `updated_at` stamp, so only
    its own rows match). One query when no account concerned has an endpoint."""
    found = session.execute(
        select(col(Message.id), col(Message.campaign_id), col(Campaign.account_id))
        .join(Campaign, col(Campaign.id) == col(Message.campaign_id))
        .where(
            *conditions,
            col(Message.status).in_(FAILED_STATUSES),
            col(Campaign.account_id).in_(select(col(WebhookEndpoint.account_id))),
        )
        .order_by(col(Message.campaign_id), col(Message.seq))
    ).all()
    # Only accounts with an endpoint for message.failed pay for the rows and the counts.
    wanted: dict[str, list[str]] = {}
    for account_id in {row[2] for row in found}:
        endpoints = subscribers(session, account_id, EventType.message_failed)
        if endpoints:
            wanted[account_id] = endpoints
    ids = [row[0] for row in found if row[2] in wanted]
    inserted = 0
    seen: dict[str, tuple[Campaign, dict[str, Any]]] = {}
    for start in range(0, len(ids), BATCH):
        for campaign_id, rows in _messages_by_campaign(session, ids[start : start + BATCH]).items():
            if campaign_id not in seen:
                campaign = session.get(Campaign, campaign_id, populate_existing=True)
                assert campaign is not None
                seen[campaign_id] = (campaign, _campaign_now(session, campaign))
            campaign, shown = seen[campaign_id]
            events = [{"campaign": shown, "message": message_object(row)} for row in rows]
            inserted += _insert(
                session,
                campaign.account_id,
                campaign_id,
                EventType.message_failed,
                wanted[campaign.account_id],
                events,
            )
    return inserted


def _messages_by_campaign(session: Session, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    table = Message.__table__  # type: ignore[attr-defined]
    out: dict[str, list[dict[str, Any]]] = {}
    for row in session.execute(select(table).where(table.c.id.in_(ids)).order_by(table.c.seq)).mappings():
        out.setdefault(row["campaign_id"], []).append(dict(row))
    return out


def _campaign_now(session: Session, campaign: Campaign) -> dict[str, Any]:
    return campaign_object(campaign, campaign_counts(session, [campaign])[campaign.id])


def _insert(
    session: Session,
    account_id: str,
    campaign_id: str,
    event_type: str,
    endpoints: list[str],
    events: list[dict[str, Any]],
) -> int:
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for data in events:
        event_id = new_id("evt")
        body = {"id": event_id, "type": str(event_type), "created_at": iso_z(now), "data": data}
        payload = json.dumps(body, separators=(",", ":"))
        rows.extend(
            {
                "event_id": event_id,
                "endpoint_id": endpoint_id,
                "account_id": account_id,
                "campaign_id": campaign_id,
                "type": str(event_type),
                "payload": payload,
                "created_at": now,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for endpoint_id in endpoints
        )
    if rows:
        session.execute(insert(WebhookDelivery.__table__), rows)  # type: ignore[attr-defined]
    return len(rows)

"""Retry of a finished campaign's failures (POST /v1/campaigns/{id}/retry): a new campaign
whose recipients are the original's messages that failed for a reason another try may pass."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, insert, or_, select
from sqlmodel import Session, col

from core import credits, lifecycle
from core.campaigns import get_campaign
from core.errors import Conflict, ValidationFailed
from core.ids import new_id
from core.timeutil import utcnow
from models import Campaign, CampaignStatus, ChannelOptOut, Contact, Message, MessageStatus

RETRYABLE_FROM = (CampaignStatus.completed, CampaignStatus.failed, CampaignStatus.cancelled)


def _selection(campaign: Campaign, error_codes: list[str] | None) -> Any:
    """Which of the original's messages are retried."""
    if error_codes:
        return and_(
            col(Message.status).in_([MessageStatus.failed, MessageStatus.undelivered]),
            col(Message.error_code).in_(error_codes),
        )
    # Transient failures past the retry window, outages, cancelled, unresolved outcome_unknown
    # (all recorded retryable), and what a failed run never sent.
    return or_(
        and_(col(Message.status) == MessageStatus.failed, col(Message.retryable).is_(True)),
        col(Message.status) == MessageStatus.pending,
    )


def _reachable(channel: str) -> Any:
    # Contacts deleted or opted out since are skipped (inner join on an active contact).
    opted_out = select(col(ChannelOptOut.contact_id)).where(col(ChannelOptOut.channel) == channel)
    return and_(col(Contact.unsubscribed_at).is_(None), col(Contact.id).not_in(opted_out))


def create_retry(
    session: Session, *, account_id: str, campaign_id: str, error_codes: list[str] | None
) -> Campaign:
    """The retry campaign, its messages (same text and price as the original's) and its hold."""
    original = get_campaign(session, account_id=account_id, campaign_id=campaign_id)
    if original.status not in RETRYABLE_FROM:
        raise Conflict(
            f"campaign {campaign_id} is {original.status}; only completed, failed or cancelled "
            "campaigns can be retried",
            {"status": original.status},
        )
    rows = session.execute(
        select(
            col(Message.contact_id),
            col(Message.to_address),
            col(Message.cost),
            col(Message.content),
            col(Message.zone),
        )
        .join(Contact, col(Contact.id) == col(Message.contact_id))
        .where(
            col(Message.campaign_id) == campaign_id,
            _selection(original, error_codes),
            _reachable(original.channel),
        )
        .order_by(col(Message.seq))
    ).all()
    if not rows:
        raise ValidationFailed(
            f"campaign {campaign_id} has no failed messages to retry",
            {"error_codes": error_codes} if error_codes else None,
        )
    retry_number = 1 + int(
        session.execute(select(func.count()).where(col(Campaign.retry_of) == campaign_id)).scalar_one()
    )
    now = utcnow()
    retry = Campaign(
        id=new_id("cmp"),
        account_id=account_id,
        name=f"{original.name} (retry {retry_number})"[:200],
        channel=original.channel,
        contact_list_id=original.contact_list_id,
        sender_id=original.sender_id,
        sender_value=original.sender_value,
        body=original.body,
        template=original.template,
        subject=original.subject,
        html=original.html,
        send_window=original.send_window,
        status=CampaignStatus.draft,
        created_at=now,
        retry_of=original.id,
        total_recipients=len(rows),
        snapshot_at=now,  # the audience is fixed here, not re-read from the list
    )
    session.add(retry)
    session.flush()
    session.execute(
        insert(Message.__table__),  # type: ignore[attr-defined]
        [
            {
                "id": new_id("msg"),
                "campaign_id": retry.id,
                "contact_id": contact_id,
                "seq": seq,
                "to_address": to_address,
                "status": MessageStatus.pending,
                "cost": cost,
                "content": content,
                "zone": zone,
                "retryable": False,
                "attempts": 0,
                "updated_at": now,
            }
            for seq, (contact_id, to_address, cost, content, zone) in enumerate(rows)
        ],
    )
    credits.hold(session, account_id=account_id, campaign_id=retry.id, amount=sum(int(r[2]) for r in rows))
    return lifecycle.load(session, retry.id)

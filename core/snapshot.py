"""The recipient snapshot of a running campaign, and the credit hold that matches its cost."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, func, insert, update
from sqlmodel import Session, col, select

from core import audience, credits
from core.db import session_scope
from core.lifecycle import load
from core.timeutil import utcnow
from models import Campaign, CampaignStatus, Message


def content_of(campaign: Campaign) -> audience.Content:
    """What the campaign sends, before personalization."""
    return audience.Content(
        body=campaign.body, subject=campaign.subject, template=campaign.template, html=campaign.html
    )


def _snapshot(
    reader: Session, campaign: Campaign, sink: Any = None, default_zone: str = "UTC"
) -> audience.Audience:
    return audience.snapshot(
        reader,
        campaign_id=campaign.id,
        account_id=campaign.account_id,
        list_id=campaign.contact_list_id,
        channel=campaign.channel,
        content=content_of(campaign),
        sink=sink,
        zoned=campaign.send_window is not None,
        default_zone=default_zone,
    )


def take_snapshot(session: Session, *, campaign_id: str, default_zone: str = "UTC") -> Campaign:
    """Freeze the recipients into message rows, once; a re-run keeps the first snapshot."""
    campaign = load(session, campaign_id)
    if campaign.snapshot_at is not None:
        return campaign
    return _record_snapshot(session, campaign_id, _snapshot(session, campaign, default_zone=default_zone))


def _record_snapshot(session: Session, campaign_id: str, result: audience.Audience) -> Campaign:
    session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign_id)
        .values(snapshot_at=utcnow(), total_recipients=result.recipients, skipped_count=result.skipped)
    )
    return load(session, campaign_id)


def take_snapshot_in_batches(
    engine: Engine, read_engine: Engine, *, campaign_id: str, default_zone: str = "UTC"
) -> Campaign:
    """take_snapshot for big lists: recipients are streamed from a read-only session and written
    in batches of their own transactions, so a million-row snapshot never holds the (SQLite)
    write lock for long. A run that died mid-snapshot starts it over: nothing is sent before
    `snapshot_at` is set, so its partial rows can go."""
    with session_scope(engine) as session:
        campaign = load(session, campaign_id)
        if campaign.snapshot_at is not None:
            return campaign
        session.execute(delete(Message).where(col(Message.campaign_id) == campaign_id))
    table = Message.__table__  # type: ignore[attr-defined]

    def write(rows: list[dict[str, Any]]) -> None:
        with session_scope(engine) as batch_session:
            batch_session.execute(insert(table), rows)

    with session_scope(read_engine) as reader:
        result = _snapshot(reader, campaign, write, default_zone)
    with session_scope(engine) as session:
        return _record_snapshot(session, campaign_id, result)


def adjust_hold(session: Session, *, campaign_id: str) -> int:
    """Make the campaign's reservation equal the cost of its unpaid messages; returns it.

    Raises InsufficientCredits if the snapshot costs more than the account can cover. A campaign
    that stopped meanwhile (cancelled during its snapshot) is settled already: nothing is held."""
    campaign = load(session, campaign_id)
    if campaign.settled_at is not None or campaign.status != CampaignStatus.processing:
        return campaign.credits_reserved
    total_cost = int(
        session.exec(
            select(func.coalesce(func.sum(Message.cost), 0)).where(Message.campaign_id == campaign_id)
        ).one()
    )
    target = max(total_cost - campaign.credits_used, 0)
    delta = target - campaign.credits_reserved
    if delta > 0:
        credits.hold(session, account_id=campaign.account_id, campaign_id=campaign_id, amount=delta)
    elif delta < 0:
        credits.release(session, account_id=campaign.account_id, campaign_id=campaign_id, amount=-delta)
    return target

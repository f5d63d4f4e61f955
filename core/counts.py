"""Messages per status: counted live for small campaigns, stored for big ones."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from core.timeutil import utcnow
from models import Campaign, Message

# Up to this many recipients, counts are computed live on every read (exact, and cheap).
LIVE_COUNT_LIMIT = 50_000


def message_counts(session: Session, campaign_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Messages per status for each campaign, in one grouped query."""
    out: dict[str, dict[str, int]] = {cid: {} for cid in campaign_ids}
    if campaign_ids:
        rows = session.exec(
            select(Message.campaign_id, Message.status, func.count())
            .where(col(Message.campaign_id).in_(campaign_ids))
            .group_by(col(Message.campaign_id), col(Message.status))
        ).all()
        for campaign_id, status, n in rows:
            out[campaign_id][status] = int(n)
    return out


def campaign_counts(session: Session, rows: Sequence[Campaign]) -> dict[str, dict[str, int]]:
    """Messages per status for each campaign: live for small ones, stored for big ones (counting
    a million rows per GET is too slow; the running flow refreshes them every second)."""
    live = [c.id for c in rows if c.total_recipients <= LIVE_COUNT_LIMIT or c.status_counts is None]
    out = message_counts(session, live)
    for c in rows:
        if c.id not in out:
            out[c.id] = dict(c.status_counts or {})
    return out


def store_counts(session: Session, *, campaign_id: str, counts: dict[str, int]) -> None:
    """Store messages-per-status counted elsewhere (e.g. on a read-only connection)."""
    session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign_id)
        .values(status_counts=counts, counts_at=utcnow())
    )


def refresh_counts(session: Session, *, campaign_id: str) -> dict[str, int]:
    """Count and store the current messages-per-status of a campaign."""
    counts = message_counts(session, [campaign_id])[campaign_id]
    store_counts(session, campaign_id=campaign_id, counts=counts)
    return counts

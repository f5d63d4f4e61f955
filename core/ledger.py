"""The message ledger: who holds which message, and what became of it.

Invariants (SPEC §3, §7):
- A message leaves `pending` only by a claim of a live send attempt (`pending → sending`,
  `claim_token` = the attempt's id), committed before its provider request.
- An attempt holds a lease (`send_attempts`) that it renews several times a second. Its rows are
  its own while the lease lives: no other attempt, and no finalization, touches them, and its
  outcome writes (guarded by its id) always land.
- Rows `sending` under an expired or ended lease are orphans: their request may or may not have
  reached the provider. They are adopted by the next attempt on their range and resolved by the
  provider's lookup where one exists (found: take its id; not found: back to `pending`, sent
  once), otherwise failed `outcome_unknown` (charged, never resent).
- Claimed rows an attempt did not send go back to `pending` when it stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlmodel import Session, col

from core import credits, optout, tracking, webhooks, zones
from core.attempts import has_live_attempts, live_filter
from core.counts import refresh_counts
from core.timeutil import utcnow
from models import (
    Campaign,
    CampaignStatus,
    ChannelOptOut,
    Contact,
    ErrorCode,
    Message,
    MessageStatus,
    SendAttempt,
)

SENDING_STATUSES = (CampaignStatus.processing, CampaignStatus.sent)


@dataclass(slots=True)
class Outcome:
    """What happened to one claimed message."""

    message_id: str
    contact_id: str
    status: str
    provider_message_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    opt_out: bool = False
    retryable: bool = False


# -- claims and outcomes --


def _zone_filter(zones: Sequence[str] | None) -> list[Any]:
    """Rows of recipients in these time zones (a row without one counts as UTC)."""
    if zones is None:
        return []
    wanted = col(Message.zone).in_(list(zones))
    return [or_(wanted, col(Message.zone).is_(None)) if "UTC" in zones else wanted]


def claim(
    session: Session,
    *,
    attempt_id: str,
    campaign_id: str,
    start: int,
    end: int,
    limit: int,
    channel: str,
    zones: Sequence[str] | None = None,
) -> list[dict[str, Any]] | None:
    """Claim up to `limit` pending rows of the range for the attempt (with `zones`: only rows
    of recipients in those time zones, the ones inside their send window); None if the
    campaign is not sending. Rows carry what sending needs: the frozen content and the
    opt-out state."""
    status = session.execute(select(col(Campaign.status)).where(col(Campaign.id) == campaign_id)).scalar()
    if status not in SENDING_STATUSES:
        return None
    if zones is not None and not zones:
        return []
    in_zones = _zone_filter(zones)
    ids = (
        select(col(Message.id))
        .where(
            col(Message.campaign_id) == campaign_id,
            col(Message.seq) >= start,
            col(Message.seq) < end,
            col(Message.status) == MessageStatus.pending,
            *in_zones,
        )
        .order_by(col(Message.seq))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        ids = ids.with_for_update(skip_locked=True)
    claimed = session.execute(
        update(Message)
        .where(col(Message.id).in_(ids.scalar_subquery()))
        .values(
            status=MessageStatus.sending,
            claim_token=attempt_id,
            attempts=Message.attempts + 1,
            updated_at=utcnow(),
        )
        .returning(col(Message.id))
        .execution_options(synchronize_session=False)
    ).scalars()
    return _claimed_rows(session, attempt_id, channel, list(claimed))


def _claimed_rows(
    session: Session, attempt_id: str, channel: str, message_ids: list[str] | None = None
) -> list[dict[str, Any]]:
    if message_ids is not None and not message_ids:
        return []
    only = [col(Message.id).in_(message_ids)] if message_ids is not None else []
    rows = session.execute(
        select(
            col(Message.id),
            col(Message.contact_id),
            col(Message.to_address),
            col(Message.content),
            col(Message.zone),
            col(Message.updated_at),
            col(Contact.unsubscribed_at),
            col(ChannelOptOut.created_at).label("channel_opt_out"),
        )
        .outerjoin(Contact, col(Contact.id) == col(Message.contact_id))
        .outerjoin(
            ChannelOptOut,
            (col(ChannelOptOut.contact_id) == col(Message.contact_id))
            & (col(ChannelOptOut.channel) == channel),
        )
        .where(col(Message.claim_token) == attempt_id, col(Message.status) == MessageStatus.sending, *only)
        .order_by(col(Message.seq))
    ).mappings()
    return [dict(r) for r in rows]


def unclaim(session: Session, *, attempt_id: str, message_ids: list[str]) -> None:
    """Hand claimed rows that never went out back to `pending`."""
    session.execute(
        update(Message)
        .where(
            col(Message.id).in_(message_ids),
            col(Message.status) == MessageStatus.sending,
            col(Message.claim_token) == attempt_id,
        )
        .values(status=MessageStatus.pending, claim_token=None, updated_at=utcnow())
    )


def record(session: Session, *, attempt_id: str, channel: str, outcomes: list[Outcome]) -> None:
    """Write the outcomes of an attempt's messages in bulk (only rows it still holds), replay
    statuses that arrived before them, and apply the opt-outs the provider reported."""
    now = utcnow()
    table = Message.__table__  # type: ignore[attr-defined]
    stmt = (
        update(table)
        .where(
            table.c.id == bindparam("b_id"),
            table.c.status == MessageStatus.sending,
            table.c.claim_token == attempt_id,
        )
        .values(
            status=bindparam("b_status"),
            provider_message_id=bindparam("b_pid"),
            error_code=bindparam("b_code"),
            error_message=bindparam("b_msg"),
            retryable=bindparam("b_retry"),
            sent_at=bindparam("b_sent"),
            updated_at=now,
            claim_token=None,
        )
    )
    params = [
        {
            "b_id": o.message_id,
            "b_status": o.status,
            "b_pid": o.provider_message_id,
            "b_code": o.error_code,
            "b_msg": o.error_message,
            "b_retry": o.retryable,
            "b_sent": now if o.provider_message_id else None,
        }
        for o in outcomes
    ]
    if params:
        session.connection().execute(stmt, params)
    failed = [o.message_id for o in outcomes if o.status == MessageStatus.failed]
    if failed:
        webhooks.report_failures(session, col(Message.id).in_(failed), col(Message.updated_at) == now)
    tracking.replay_events(
        session, provider_ids=[o.provider_message_id for o in outcomes if o.provider_message_id]
    )
    opted_out = list(dict.fromkeys(o.contact_id for o in outcomes if o.opt_out))
    if opted_out:
        _opt_out(session, channel, opted_out, now)


def _opt_out(session: Session, channel: str, contact_ids: list[str], now: datetime) -> None:
    if channel == "sms":
        # An SMS opt-out (Twilio 21610) is a STOP: the contact is unsubscribed everywhere.
        session.execute(
            update(Contact)
            .where(col(Contact.id).in_(contact_ids), col(Contact.unsubscribed_at).is_(None))
            .values(unsubscribed_at=now)
        )
        return
    # Blocked the bot, stopped marketing messages: out of this channel only.
    optout.leave_channel(session, channel=channel, contact_ids=contact_ids)


# -- orphans: rows of dead attempts --


def _orphaned(campaign_id: str, now: datetime) -> Any:
    live = select(col(SendAttempt.id)).where(*live_filter(campaign_id, now))
    return or_(col(Message.claim_token).is_(None), col(Message.claim_token).not_in(live))


def adopt_orphans(
    session: Session, *, attempt_id: str, campaign_id: str, start: int, end: int, channel: str
) -> list[dict[str, Any]]:
    """Take over the range's rows left `sending` by dead attempts; returns them (with their
    claim time as `updated_at`) for the caller to resolve."""
    session.execute(
        update(Message)
        .where(
            col(Message.campaign_id) == campaign_id,
            col(Message.seq) >= start,
            col(Message.seq) < end,
            col(Message.status) == MessageStatus.sending,
            _orphaned(campaign_id, utcnow()),
        )
        .values(claim_token=attempt_id)
        .execution_options(synchronize_session=False)
    )
    return _claimed_rows(session, attempt_id, channel)


def known_provider_ids(session: Session, provider_ids: list[str]) -> set[str]:
    """Which of these provider ids some message already carries (a lookup must not reuse one)."""
    if not provider_ids:
        return set()
    return set(
        session.execute(
            select(col(Message.provider_message_id)).where(col(Message.provider_message_id).in_(provider_ids))
        ).scalars()
    )


UNKNOWN_MESSAGE = "the request may have reached the provider, which cannot be asked; not resent"


def fail_orphans(session: Session, *, campaign_id: str) -> int:
    """Fail every orphan of a stopped campaign as outcome_unknown (charged; retryable)."""
    now = utcnow()
    result = session.execute(
        update(Message)
        .where(
            col(Message.campaign_id) == campaign_id,
            col(Message.status) == MessageStatus.sending,
            _orphaned(campaign_id, now),
        )
        .values(
            status=MessageStatus.failed,
            error_code=ErrorCode.outcome_unknown,
            error_message=UNKNOWN_MESSAGE,
            retryable=True,
            claim_token=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    failed = int(result.rowcount)  # type: ignore[attr-defined]
    if failed:
        webhooks.report_failures(
            session, col(Message.campaign_id) == campaign_id, col(Message.updated_at) == now
        )
    return failed


def finalize_stopped(session: Session, *, campaign_id: str, cancelled: bool) -> bool:
    """After a campaign stopped for good: once no attempt can still send, fail its orphans and,
    if it was cancelled, its pending messages (`cancelled`; a failed one keeps them pending for
    a retry of its run), and settle its credits. False while a live attempt remains (the run or
    the reconciler tries again)."""
    if has_live_attempts(session, campaign_id=campaign_id):
        return False
    fail_orphans(session, campaign_id=campaign_id)
    if cancelled:
        now = utcnow()
        result = session.execute(
            update(Message)
            .where(col(Message.campaign_id) == campaign_id, col(Message.status) == MessageStatus.pending)
            .values(
                status=MessageStatus.failed,
                error_code=ErrorCode.cancelled,
                error_message="not sent: campaign cancelled",
                retryable=True,
                updated_at=now,
            )
        )
        if result.rowcount:  # type: ignore[attr-defined]
            webhooks.report_failures(
                session, col(Message.campaign_id) == campaign_id, col(Message.updated_at) == now
            )
    credits.settle(session, campaign_id=campaign_id)
    refresh_counts(session, campaign_id=campaign_id)
    return True


def unsent_in_range(
    session: Session, campaign_id: str, start: int, end: int, zones: Sequence[str] | None = None
) -> int:
    """Messages of a seq range not yet handed to the provider (pending or claimed); with
    `zones`, only those of recipients in these time zones."""
    return int(
        session.execute(
            select(func.count()).where(
                col(Message.campaign_id) == campaign_id,
                col(Message.seq) >= start,
                col(Message.seq) < end,
                col(Message.status).in_([MessageStatus.pending, MessageStatus.sending]),
                *_zone_filter(zones),
            )
        ).scalar_one()
    )


def open_ranges(
    session: Session, *, campaign_id: str, chunk_size: int, zones: Sequence[str] | None = None
) -> list[tuple[int, int]]:
    """The seq ranges of `chunk_size` that still hold unsent messages (a re-run skips done ones);
    with `zones`, only ranges holding some of those zones' recipients."""
    total = session.execute(
        select(func.count()).select_from(Message).where(col(Message.campaign_id) == campaign_id)
    ).scalar_one()
    in_zones = _zone_filter(zones)
    open_seqs = session.execute(
        select(func.distinct(col(Message.seq) // chunk_size)).where(
            col(Message.campaign_id) == campaign_id,
            col(Message.status).in_([MessageStatus.pending, MessageStatus.sending]),
            *in_zones,
        )
    ).scalars()
    return [(k * chunk_size, min((k + 1) * chunk_size, total)) for k in sorted(int(k) for k in open_seqs)]


def open_zones(session: Session, *, campaign_id: str, window: dict[str, str] | None) -> list[str] | None:
    """The time zones of unsent messages whose send window is open now (None: no window)."""
    if not window:
        return None
    now = utcnow()
    return [z for z in waiting_zones(session, campaign_id=campaign_id) if zones.is_open(window, z, now)]


def waiting_zones(session: Session, *, campaign_id: str) -> dict[str, int]:
    """Unsent messages per recipient time zone (campaigns with a send window)."""
    rows = session.execute(
        select(col(Message.zone), func.count())
        .where(
            col(Message.campaign_id) == campaign_id,
            col(Message.status).in_([MessageStatus.pending, MessageStatus.sending]),
        )
        .group_by(col(Message.zone))
    ).all()
    return {str(zone or "UTC"): int(n) for zone, n in rows}

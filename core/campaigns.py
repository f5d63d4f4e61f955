"""Campaign lifecycle: create (validate, price, hold), read, cancel, and the run's state machine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, update
from sqlmodel import Session, col, select

from core import audience, contacts, credits, sender_ids
from core.db import session_scope
from core.errors import Conflict, NotFound, ValidationFailed
from core.ids import new_id
from core.render import check_placeholders
from core.timeutil import as_utc, utcnow
from core.validation import BODY_LIMITS
from models import Campaign, CampaignStatus, Message, MessageStatus, SenderIdStatus
from models.enums import FINAL_CAMPAIGN_STATUSES
from models.schemas import CampaignCreate

OPEN_STATUSES = (
    CampaignStatus.draft,
    CampaignStatus.scheduled,
    CampaignStatus.processing,
    CampaignStatus.sent,
)
# A scheduled time this close to now counts as "now", not as the past (client clock skew).
PAST_TOLERANCE = timedelta(seconds=5)


def _template_texts(template: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    for component in template.get("components", []) or []:
        for parameter in component.get("parameters", []) or []:
            if isinstance(parameter, dict) and isinstance(parameter.get("text"), str):
                texts.append(parameter["text"])
    return texts


def validate_content(data: CampaignCreate) -> None:
    """The 422 checks on body/template/schedule, in SPEC order after the sender check."""
    channel = data.channel.value
    if data.body is None and data.template is None:
        raise ValidationFailed("either body or template is required", {"field": "body"})
    if data.template is not None and channel != "whatsapp":
        raise ValidationFailed("template is only supported on the whatsapp channel", {"field": "template"})
    if data.scheduled_at is not None and as_utc(data.scheduled_at) < utcnow() - PAST_TOLERANCE:
        raise ValidationFailed("scheduled_at is in the past", {"field": "scheduled_at"})
    if data.body is not None:
        if not data.body.strip():
            raise ValidationFailed("body must not be empty", {"field": "body"})
        limit = BODY_LIMITS[channel]
        if len(data.body) > limit:
            raise ValidationFailed(
                f"body is {len(data.body)} characters; {channel} allows at most {limit}",
                {"field": "body", "limit": limit},
            )
        check_placeholders(data.body)
    if data.template is not None:
        for text in _template_texts(data.template.model_dump()):
            check_placeholders(text)
    if data.subject is not None:
        check_placeholders(data.subject)


@dataclass(frozen=True)
class PreparedCampaign:
    """A validated and priced campaign, not yet stored."""

    account_id: str
    data: CampaignCreate
    sender_value: str
    audience: audience.Audience


def prepare_campaign(session: Session, *, account_id: str, data: CampaignCreate) -> PreparedCampaign:
    """Every check of a create (404 list, 422 sender/content) and the price; reads only, so the
    API runs it on a read-only connection (pricing a big list streams it)."""
    channel = data.channel.value
    contacts.get_list(session, account_id=account_id, list_id=data.contact_list_id)
    sender = sender_ids.find_for_campaign(session, account_id=account_id, channel=channel, ref=data.sender_id)
    if sender is None or sender.status != SenderIdStatus.approved:
        state = "not registered" if sender is None else f"{sender.status}, not approved"
        raise ValidationFailed(
            f"sender ID {data.sender_id!r} is {state} for channel {channel}",
            {"field": "sender_id"},
        )
    validate_content(data)
    priced = audience.estimate(
        session, account_id=account_id, list_id=data.contact_list_id, channel=channel, body=data.body
    )
    return PreparedCampaign(account_id, data, sender.value, priced)


def insert_campaign(session: Session, prepared: PreparedCampaign) -> Campaign:
    """Store a prepared campaign and hold its cost atomically (InsufficientCredits: nothing stored)."""
    data = prepared.data
    channel = data.channel.value
    campaign = Campaign(
        id=new_id("cmp"),
        account_id=prepared.account_id,
        name=data.name,
        channel=channel,
        contact_list_id=data.contact_list_id,
        sender_id=data.sender_id,
        sender_value=prepared.sender_value,
        body=data.body,
        template=data.template.to_cloud_api() if data.template is not None else None,
        subject=(data.subject or data.name) if channel == "email" else data.subject,
        status=CampaignStatus.scheduled if data.scheduled_at else CampaignStatus.draft,
        scheduled_at=as_utc(data.scheduled_at) if data.scheduled_at else None,
        created_at=utcnow(),
        total_recipients=prepared.audience.recipients,
        skipped_count=prepared.audience.skipped,
    )
    session.add(campaign)
    session.flush()
    credits.hold(
        session, account_id=prepared.account_id, campaign_id=campaign.id, amount=prepared.audience.cost
    )
    session.flush()
    session.refresh(campaign)
    return campaign


def create_campaign(session: Session, *, account_id: str, data: CampaignCreate) -> Campaign:
    """Validate, price and hold credits for a new campaign, all in the caller's transaction."""
    return insert_campaign(session, prepare_campaign(session, account_id=account_id, data=data))


def get_campaign(session: Session, *, account_id: str, campaign_id: str) -> Campaign:
    """A campaign of this account, or NotFound."""
    campaign = session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None or campaign.account_id != account_id:
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign


def load(session: Session, campaign_id: str) -> Campaign:
    """A campaign by id whatever its account (pipeline use)."""
    campaign = session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign


def list_campaigns(
    session: Session,
    *,
    account_id: str,
    page: int,
    per_page: int,
    status: str | None = None,
    channel: str | None = None,
) -> tuple[list[Campaign], int]:
    """A page of campaigns, newest first, optionally filtered."""
    filters = [col(Campaign.account_id) == account_id]
    if status:
        filters.append(col(Campaign.status) == status)
    if channel:
        filters.append(col(Campaign.channel) == channel)
    rows = session.exec(
        select(Campaign)
        .where(*filters)
        .order_by(col(Campaign.created_at).desc(), col(Campaign.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    total = session.exec(select(func.count()).select_from(Campaign).where(*filters)).one()
    return list(rows), int(total)


# Up to this many recipients, counts are computed live on every read (exact, and cheap).
LIVE_COUNT_LIMIT = 50_000


def campaign_counts(session: Session, rows: Sequence[Campaign]) -> dict[str, dict[str, int]]:
    """Messages per status for each campaign: live for small ones, stored for big ones."""
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


def list_messages(
    session: Session,
    *,
    account_id: str,
    campaign_id: str,
    status: str | None,
    page: int,
    per_page: int,
) -> tuple[list[Message], int]:
    """A page of a campaign's per-recipient records, newest first."""
    get_campaign(session, account_id=account_id, campaign_id=campaign_id)
    filters = [col(Message.campaign_id) == campaign_id]
    if status:
        filters.append(col(Message.status) == status)
    rows = session.exec(
        select(Message)
        .where(*filters)
        .order_by(col(Message.seq).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    total = session.exec(select(func.count()).select_from(Message).where(*filters)).one()
    return list(rows), int(total)


def _transition(session: Session, campaign_id: str, allowed: Sequence[str], **values: Any) -> bool:
    result = session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign_id, col(Campaign.status).in_(allowed))
        .values(**values)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def cancel_campaign(session: Session, *, account_id: str, campaign_id: str) -> Campaign:
    """Cancel a campaign that is not final. Unstarted ones are settled (fully released) here;
    a running one is settled by its flow run or the reconciler once sending has stopped."""
    campaign = get_campaign(session, account_id=account_id, campaign_id=campaign_id)
    previous = campaign.status
    if not _transition(
        session, campaign_id, OPEN_STATUSES, status=CampaignStatus.cancelled, cancelled_at=utcnow()
    ):
        raise Conflict(
            f"campaign {campaign_id} is {campaign.status} and cannot be cancelled",
            {"status": campaign.status},
        )
    if previous in (CampaignStatus.draft, CampaignStatus.scheduled):
        finalize_stopped(session, campaign_id=campaign_id, pending_code="cancelled")
    return get_campaign(session, account_id=account_id, campaign_id=campaign_id)


def finalize_stopped(session: Session, *, campaign_id: str, pending_code: str | None) -> None:
    """After a run stopped for good: resolve in-flight messages, optionally fail pending ones,
    and settle credits (idempotent)."""
    now = utcnow()
    session.execute(
        update(Message)
        .where(col(Message.campaign_id) == campaign_id, col(Message.status) == MessageStatus.sending)
        .values(
            status=MessageStatus.failed,
            error_code="outcome_unknown",
            error_message="the run stopped while this message was in flight; not resent",
            updated_at=now,
        )
    )
    if pending_code is not None:
        session.execute(
            update(Message)
            .where(col(Message.campaign_id) == campaign_id, col(Message.status) == MessageStatus.pending)
            .values(
                status=MessageStatus.failed,
                error_code=pending_code,
                error_message=f"not sent: campaign {pending_code}",
                updated_at=now,
            )
        )
    credits.settle(session, campaign_id=campaign_id)
    refresh_counts(session, campaign_id=campaign_id)


def start_run(session: Session, *, campaign_id: str, flow_run_id: str | None) -> str:
    """Mark a campaign processing when its run starts; returns the status to act on.

    A failed campaign whose flow run is retried from the Prefect UI is reopened."""
    now = utcnow()
    campaign = load(session, campaign_id)
    values: dict[str, Any] = {"status": CampaignStatus.processing}
    if campaign.started_at is None:
        values["started_at"] = now
    if flow_run_id:
        values["flow_run_id"] = flow_run_id
    if _transition(session, campaign_id, (CampaignStatus.draft, CampaignStatus.scheduled), **values):
        return CampaignStatus.processing
    if campaign.status == CampaignStatus.failed and _transition(
        session,
        campaign_id,
        (CampaignStatus.failed,),
        **values,
        failure_reason=None,
        settled_at=None,
        completed_at=None,
    ):
        return CampaignStatus.processing
    return campaign.status


def record_flow_run(session: Session, *, campaign_id: str, flow_run_id: str) -> None:
    """Remember which flow run carries a campaign."""
    session.execute(update(Campaign).where(col(Campaign.id) == campaign_id).values(flow_run_id=flow_run_id))


def release_for_resume(session: Session, *, campaign_id: str, flow_run_id: str) -> bool:
    """Detach a campaign from a run that stopped without finishing it (worker shutdown or
    crash), so that the reconciler starts a new run (new idempotency key) that resumes it."""
    result = session.execute(
        update(Campaign)
        .where(
            col(Campaign.id) == campaign_id,
            col(Campaign.flow_run_id) == flow_run_id,
            col(Campaign.status).in_(OPEN_STATUSES),
        )
        .values(flow_run_id=None, resume_count=Campaign.resume_count + 1, heartbeat_at=None)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def resume_or_fail(
    session: Session, *, campaign_id: str, flow_run_id: str, reason: str, max_resumes: int
) -> str:
    """A crashed run: resume the campaign in a new run, or fail it after `max_resumes` tries.
    Returns "resumed", "failed" or "" (nothing to do: already final or another run)."""
    campaign = load(session, campaign_id)
    # Only the run the campaign is attached to counts: another reconciler (or the hook) may have
    # handled this crash already and detached it.
    if campaign.status not in OPEN_STATUSES or campaign.flow_run_id != flow_run_id:
        return ""
    if campaign.resume_count < max_resumes and release_for_resume(
        session, campaign_id=campaign_id, flow_run_id=flow_run_id
    ):
        return "resumed"
    return "failed" if fail(session, campaign_id=campaign_id, reason=reason) else ""


def beat(session: Session, *, campaign_id: str) -> None:
    """The running flow is alive."""
    session.execute(update(Campaign).where(col(Campaign.id) == campaign_id).values(heartbeat_at=utcnow()))


def launch_key(campaign: Campaign) -> str:
    """The idempotency key of the campaign's current flow run."""
    return campaign.id if campaign.resume_count == 0 else f"{campaign.id}:resume-{campaign.resume_count}"


def take_snapshot(session: Session, *, campaign_id: str) -> Campaign:
    """Freeze the recipients into message rows, once; a re-run keeps the first snapshot."""
    campaign = load(session, campaign_id)
    if campaign.snapshot_at is not None:
        return campaign
    result = audience.snapshot(
        session,
        campaign_id=campaign.id,
        account_id=campaign.account_id,
        list_id=campaign.contact_list_id,
        channel=campaign.channel,
        body=campaign.body,
    )
    return _record_snapshot(session, campaign_id, result)


def _record_snapshot(session: Session, campaign_id: str, result: audience.Audience) -> Campaign:
    session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign_id)
        .values(snapshot_at=utcnow(), total_recipients=result.recipients, skipped_count=result.skipped)
    )
    return load(session, campaign_id)


def take_snapshot_in_batches(engine: Engine, read_engine: Engine, *, campaign_id: str) -> Campaign:
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
        result = audience.snapshot(
            reader,
            campaign_id=campaign.id,
            account_id=campaign.account_id,
            list_id=campaign.contact_list_id,
            channel=campaign.channel,
            body=campaign.body,
            sink=write,
        )
    with session_scope(engine) as session:
        return _record_snapshot(session, campaign_id, result)


def adjust_hold(session: Session, *, campaign_id: str) -> int:
    """Make the campaign's reservation equal the cost of its unpaid messages; returns it.

    Raises InsufficientCredits if the snapshot costs more than the account can cover."""
    campaign = load(session, campaign_id)
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


def mark_dispatched(session: Session, *, campaign_id: str) -> bool:
    """processing → sent: everything handed to the provider, receipts may still arrive."""
    return _transition(
        session, campaign_id, (CampaignStatus.processing,), status=CampaignStatus.sent, dispatched_at=utcnow()
    )


def complete(session: Session, *, campaign_id: str) -> bool:
    """→ completed (every message final) and settle credits, in one transaction."""
    done = _transition(
        session,
        campaign_id,
        (CampaignStatus.processing, CampaignStatus.sent),
        status=CampaignStatus.completed,
        completed_at=utcnow(),
    )
    if done:
        credits.settle(session, campaign_id=campaign_id)
        refresh_counts(session, campaign_id=campaign_id)
    return done


def fail(session: Session, *, campaign_id: str, reason: str) -> bool:
    """→ failed with a reason; in-flight messages become outcome_unknown; credits settle.

    Pending messages stay pending so a retry of the flow run can resume them."""
    done = _transition(
        session,
        campaign_id,
        OPEN_STATUSES,
        status=CampaignStatus.failed,
        failure_reason=reason[:2000],
        completed_at=utcnow(),
    )
    if done:
        finalize_stopped(session, campaign_id=campaign_id, pending_code=None)
    return done


def is_final(status: str) -> bool:
    """True for completed, failed and cancelled."""
    return status in FINAL_CAMPAIGN_STATUSES


def status_of(session: Session, campaign_id: str) -> str:
    """The current status, read fresh."""
    value = session.exec(select(Campaign.status).where(Campaign.id == campaign_id)).first()
    if value is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return value

"""Campaigns as the account sees them: create (validate, price, hold), edit, read, list."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, func, select

from core import audience, contacts, credits, lifecycle, sender_ids
from core.errors import Conflict, InvalidRequest, NotFound, RateLimited, ValidationFailed
from core.ids import new_id
from core.lifecycle import Event
from core.render import check_placeholders, template_texts
from core.timeutil import as_utc, utcnow
from core.validation import BODY_LIMITS
from models import Campaign, CampaignStatus, Message, SenderId, SenderIdStatus
from models.schemas import MAX_HTML_BYTES, CampaignCreate, CampaignUpdate

# A scheduled time this close to now counts as "now", not as the past (client clock skew).
PAST_TOLERANCE = timedelta(seconds=5)
# Retry-After of a create over CAMPAIGNS_API__MAX_OPEN_CAMPAIGNS: campaigns take minutes to end.
OPEN_CAP_RETRY_AFTER_S = 60


def validate_content(data: CampaignCreate) -> None:
    """The 422 checks on body/template/schedule, in SPEC order after the sender check."""
    channel = data.channel.value
    if data.body is None and data.template is None:
        raise ValidationFailed("either body or template is required", {"field": "body"})
    if data.template is not None and channel != "whatsapp":
        raise ValidationFailed("template is only supported on the whatsapp channel", {"field": "template"})
    if data.html is not None:
        check_html(channel, data.html)
    if data.send_window is not None and data.send_window.start >= data.send_window.end:
        raise ValidationFailed(
            f"send_window start {data.send_window.start} must be before its end {data.send_window.end}",
            {"field": "send_window"},
        )
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
        check_placeholders(data.body, channel)
    if data.template is not None:
        for parameter in template_texts(data.template.to_cloud_api()):
            check_placeholders(parameter["text"], channel)
    if data.subject is not None:
        check_placeholders(data.subject, channel)


def check_html(channel: str, html: str) -> None:
    """The 422 checks of an HTML part: email only, not empty, within Gmail's clipping size."""
    if channel != "email":
        raise ValidationFailed("html is only supported on the email channel", {"field": "html"})
    if not html.strip():
        raise ValidationFailed("html must not be empty", {"field": "html"})
    size = len(html.encode("utf-8", "surrogatepass"))
    if size > MAX_HTML_BYTES:
        raise ValidationFailed(
            f"html is {size} bytes; email allows at most {MAX_HTML_BYTES} (Gmail clips bigger messages)",
            {"field": "html", "limit": MAX_HTML_BYTES},
        )
    check_placeholders(html, channel)


@dataclass(frozen=True)
class PreparedCampaign:
    """A validated and priced campaign, not yet stored."""

    account_id: str
    data: CampaignCreate
    sender_id: str  # the sid_ id of the sender the reference resolved to
    sender_value: str
    audience: audience.Audience


def check_campaign(session: Session, *, account_id: str, data: CampaignCreate) -> SenderId:
    """The checks of a create before pricing, in SPEC order (404 list, 422 sender/content);
    returns the sender ID the reference names."""
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
    return sender


def prepare_campaign(session: Session, *, account_id: str, data: CampaignCreate) -> PreparedCampaign:
    """Every check of a create (404 list, 422 sender/content) and the price; reads only, so the
    API runs it on a read-only connection (pricing a big list streams it)."""
    channel = data.channel.value
    sender = check_campaign(session, account_id=account_id, data=data)
    priced = audience.estimate(
        session, account_id=account_id, list_id=data.contact_list_id, channel=channel, body=data.body
    )
    if priced.recipients == 0:
        # It would cost nothing and send nothing, yet take a run and the reconciler's attention.
        raise ValidationFailed(
            f"contact list {data.contact_list_id} has no active contact with an address for {channel}",
            {"field": "contact_list_id", "skipped": priced.skipped},
        )
    return PreparedCampaign(account_id, data, sender.id, sender.value, priced)


def check_open_cap(session: Session, *, account_id: str, max_open: int) -> None:
    """RateLimited when the account already has `max_open` campaigns that are not final."""
    open_count = session.exec(
        select(func.count())
        .select_from(Campaign)
        .where(col(Campaign.account_id) == account_id, col(Campaign.status).in_(lifecycle.OPEN_STATUSES))
    ).one()
    if open_count >= max_open:
        raise RateLimited(
            f"the account has {open_count} open campaigns, the most it may have at once ({max_open}); "
            "wait for some to finish or cancel some",
            retry_after=OPEN_CAP_RETRY_AFTER_S,
        )


def insert_campaign(
    session: Session,
    prepared: PreparedCampaign,
    *,
    max_open: int | None = None,
    hold: bool = True,
    **extra: Any,
) -> Campaign:
    """Store a prepared campaign and hold its cost atomically (InsufficientCredits: nothing
    stored); with `max_open`, RateLimited if the account already has that many open;
    `hold=False` stores it without a hold (a campaign about to be failed)."""
    if max_open is not None:
        check_open_cap(session, account_id=prepared.account_id, max_open=max_open)
    data = prepared.data
    channel = data.channel.value
    campaign = Campaign(
        id=new_id("cmp"),
        account_id=prepared.account_id,
        name=data.name,
        channel=channel,
        contact_list_id=data.contact_list_id,
        sender_id=prepared.data.sender_id,  # as the client gave it (value or sid_ id), echoed back
        sender_value=prepared.sender_value,
        body=data.body,
        template=data.template.to_cloud_api() if data.template is not None else None,
        subject=(data.subject or data.name) if channel == "email" else data.subject,
        html=data.html,
        send_window=data.send_window.model_dump() if data.send_window is not None else None,
        status=CampaignStatus.scheduled if data.scheduled_at else CampaignStatus.draft,
        scheduled_at=as_utc(data.scheduled_at) if data.scheduled_at else None,
        created_at=utcnow(),
        total_recipients=prepared.audience.recipients,
        skipped_count=prepared.audience.skipped,
        **extra,
    )
    session.add(campaign)
    session.flush()
    if hold:
        credits.hold(
            session, account_id=prepared.account_id, campaign_id=campaign.id, amount=prepared.audience.cost
        )
    session.flush()
    session.refresh(campaign)
    return campaign


def create_campaign(
    session: Session, *, account_id: str, data: CampaignCreate, max_open: int | None = None
) -> Campaign:
    """Validate, price and hold credits for a new campaign, all in the caller's transaction."""
    return insert_campaign(
        session, prepare_campaign(session, account_id=account_id, data=data), max_open=max_open
    )


# -- edit (PATCH) --


def edited(campaign: Campaign, data: CampaignUpdate) -> CampaignCreate:
    """The campaign as it would be after the edit, as a create body (same validation)."""
    changes = data.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] is None:
        raise InvalidRequest("name: must not be null", {"field": "name"})
    current: dict[str, Any] = {
        "name": campaign.name,
        "channel": campaign.channel,
        "contact_list_id": campaign.contact_list_id,
        "sender_id": campaign.sender_id,
        "body": campaign.body,
        "template": campaign.template,
        "subject": campaign.subject,
        "html": campaign.html,
        "send_window": campaign.send_window,
        "scheduled_at": campaign.scheduled_at,
    }
    return CampaignCreate.model_validate({**current, **changes})


def prepare_edit(
    session: Session, *, account_id: str, campaign_id: str, data: CampaignUpdate
) -> tuple[Campaign, PreparedCampaign]:
    """Checks and price of an edit, reading only (the same checks as a create)."""
    campaign = get_campaign(session, account_id=account_id, campaign_id=campaign_id)
    if not lifecycle.allowed(Event.edit, campaign.status):
        raise Conflict(
            f"campaign {campaign_id} is {campaign.status}; only draft and scheduled campaigns can be edited",
            {"status": campaign.status},
        )
    merged = edited(campaign, data)
    if "scheduled_at" not in data.model_fields_set:
        # An unchanged time is not checked again (it may have just passed).
        merged = merged.model_copy(update={"scheduled_at": None})
    return campaign, prepare_campaign(session, account_id=account_id, data=merged)


def apply_edit(
    session: Session, *, campaign: Campaign, data: CampaignUpdate, prepared: PreparedCampaign
) -> Campaign:
    """Store an edit and move the credit hold to the new price, in one transaction
    (InsufficientCredits or a lost race: nothing changes)."""
    merged = edited(campaign, data)
    values: dict[str, Any] = {
        "name": merged.name,
        "body": merged.body,
        "template": merged.template.to_cloud_api() if merged.template is not None else None,
        "subject": (merged.subject or merged.name) if campaign.channel == "email" else merged.subject,
        "html": merged.html,
        "send_window": merged.send_window.model_dump() if merged.send_window is not None else None,
        "total_recipients": prepared.audience.recipients,
        "skipped_count": prepared.audience.skipped,
    }
    if "scheduled_at" in data.model_fields_set:
        values["scheduled_at"] = as_utc(merged.scheduled_at) if merged.scheduled_at else None
    fresh = lifecycle.load(session, campaign.id)
    if not lifecycle.edit(session, campaign=fresh, values=values):
        raise Conflict(f"campaign {campaign.id} is no longer editable", {"status": fresh.status})
    delta = prepared.audience.cost - fresh.credits_reserved
    if delta > 0:
        credits.hold(session, account_id=fresh.account_id, campaign_id=fresh.id, amount=delta)
    elif delta < 0:
        credits.release(session, account_id=fresh.account_id, campaign_id=fresh.id, amount=-delta)
    return lifecycle.load(session, campaign.id)


# -- reads --


def get_campaign(session: Session, *, account_id: str, campaign_id: str) -> Campaign:
    """A campaign of this account, or NotFound."""
    campaign = session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None or campaign.account_id != account_id:
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
    schedule_id: str | None = None,
) -> tuple[list[Campaign], int]:
    """A page of campaigns, newest first, optionally filtered."""
    filters = [col(Campaign.account_id) == account_id]
    if status:
        filters.append(col(Campaign.status) == status)
    if channel:
        filters.append(col(Campaign.channel) == channel)
    if schedule_id:
        filters.append(col(Campaign.schedule_id) == schedule_id)
    rows = session.exec(
        select(Campaign)
        .where(*filters)
        .order_by(col(Campaign.created_at).desc(), col(Campaign.id).desc())
        .offset((page - 1) * per_page)
        .limit(per_page)
    ).all()
    total = session.exec(select(func.count()).select_from(Campaign).where(*filters)).one()
    return list(rows), int(total)


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

"""Flow `launch-campaign`: create a campaign exactly as the API does, then start it.

Its parameters are the fields of POST /v1/campaigns plus `account_id`, typed and described so
the Prefect UI's run form explains itself; a schedule of its deployment is a recurring campaign
(SPEC §8: the schedule's parameters add `schedule_id`). Parameters are validated here, not by
Prefect, so a bad run fails with the message the API would have given."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Failed
from pydantic import BaseModel, ValidationError

from core import launches, runs
from core.db import get_engine, session_scope
from core.errors import DomainError
from core.settings import get_settings
from core.timeutil import as_utc, utcnow
from core.validation import schema_error
from flows.launcher import PrefectLauncher
from models import CampaignStatus, Channel
from models.schemas import CampaignCreate, SendWindow, WhatsAppTemplate

# A run started up to this much after its scheduled time still keeps that time (runners pick
# scheduled runs up to 10 s early; later than this, "now" is the honest time).
LATE_S = 5.0


class LaunchRefused(Exception):
    """The API would have refused this campaign: its error code and message."""

    def __init__(self, error: DomainError) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


def _run_name() -> str:
    """'Spring sale · sch_…' for a schedule's run, 'Spring sale' for a run from the form."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters or {}
    name = str(parameters.get("name") or "campaign")[:100]
    schedule_id = parameters.get("schedule_id")
    return f"launch {name} · {schedule_id}" if schedule_id else f"launch {name}"


def _raw(value: Any) -> Any:
    return value.model_dump(exclude_unset=True) if isinstance(value, BaseModel) else value


def _fire_time(scheduled_at: datetime | None) -> datetime | None:
    """When this run's campaign sends: the time given, else the time Prefect scheduled the run
    for (a schedule's run starts a few seconds early and must not send early)."""
    if scheduled_at is not None:
        return scheduled_at
    from prefect.runtime import flow_run

    when = flow_run.scheduled_start_time
    if when is None or as_utc(when) <= utcnow():
        return None
    return as_utc(when)


async def _tag_own_run(flow_run_id: str, tags: list[str]) -> None:
    """Add the campaign's tags to this run, so the UI filters launches like sends."""
    from uuid import UUID

    from prefect import get_client

    try:
        async with get_client() as client:
            run = await client.read_flow_run(UUID(flow_run_id))
            await client.update_flow_run(UUID(flow_run_id), tags=sorted({*run.tags, *tags}))
    except Exception as exc:  # tags are for people; never fail a launch for them
        get_run_logger().warning("could not tag run %s: %s", flow_run_id, exc)


async def _schedule_active(schedule_id: str) -> bool:
    """A run the schedule planned before a pause (late, or already pending: Prefect removes
    only future ones) launches nothing while the schedule is paused."""
    from flows.schedules import PrefectScheduler

    try:
        return await PrefectScheduler().is_active(schedule_id)
    except Exception as exc:  # Prefect runs this flow, so this is rare: launch rather than drop
        get_run_logger().warning("could not read schedule %s (%s); launching", schedule_id, exc)
        return True


def _record(campaign_id: str, flow_run_id: str) -> None:
    with session_scope(get_engine(get_settings())) as session:
        runs.record_flow_run(session, campaign_id=campaign_id, flow_run_id=flow_run_id)


@flow(
    name="launch-campaign",
    flow_run_name=_run_name,
    validate_parameters=False,
    log_prints=True,
    persist_result=False,
)
async def launch_campaign(
    account_id: str,
    name: str,
    channel: Channel,
    contact_list_id: str,
    sender_id: str,
    body: str | None = None,
    template: WhatsAppTemplate | None = None,
    subject: str | None = None,
    html: str | None = None,
    send_window: SendWindow | None = None,
    scheduled_at: datetime | None = None,
    schedule_id: str | None = None,
) -> Any:
    """Create a campaign (validation, pricing and credit hold as POST /v1/campaigns) and run it.

    Args:
        account_id: The account (acc_…) that owns and pays for the campaign.
        name: The campaign's name, 1-200 characters.
        channel: The channel to send on.
        contact_list_id: The contact list (lst_…): its active contacts with an address for the
            channel are the recipients.
        sender_id: The sender ID's value (e.g. MYBRAND, the WhatsApp phone-number id, an email
            address) or its sid_ id; registered and approved for the channel.
        body: The message. {{name}}, {{first_name}}, {{phone}}, {{email}} and
            {{attributes.KEY}} are replaced per recipient. Required unless a WhatsApp template
            is given.
        template: WhatsApp only: an approved template (name, language, components).
        subject: Email only; default: the campaign's name.
        html: Email only: an HTML part (body is then the text part); {{unsubscribe_url}} is
            each recipient's one-click unsubscribe link.
        send_window: Quiet hours: send only between start and end ("09:00", "20:00") of each
            recipient's local time.
        scheduled_at: When to start sending (UTC); empty: now.
        schedule_id: Set by a recurring schedule (sch_…) on its runs; leave empty in the form.
    """
    from prefect.runtime import flow_run

    logger = get_run_logger()
    settings = get_settings()
    raw = {
        "name": name,
        "channel": _raw(channel),
        "contact_list_id": contact_list_id,
        "sender_id": sender_id,
        "body": body,
        "template": _raw(template),
        "subject": subject,
        "html": html,
        "send_window": _raw(send_window),
        "scheduled_at": _fire_time(scheduled_at) if schedule_id else scheduled_at,
    }
    try:
        data = CampaignCreate.model_validate({k: v for k, v in raw.items() if v is not None})
    except ValidationError as exc:
        raise LaunchRefused(schema_error(exc)) from None
    own_run = str(flow_run.id) if flow_run.id else None
    if schedule_id and not await _schedule_active(schedule_id):
        logger.info("schedule %s is paused or deleted: nothing to launch", schedule_id)
        return None
    try:
        launched = await asyncio.to_thread(
            launches.create_for_run,
            get_engine(settings),
            account_id=account_id,
            data=data,
            schedule_id=schedule_id,
            run_key=own_run,
            max_open=settings.api.max_open_campaigns,
        )
    except DomainError as exc:
        raise LaunchRefused(exc) from None
    if launched is None:
        logger.info("schedule %s was deleted: nothing to launch", schedule_id)
        return None
    tags = [f"account:{account_id}", f"channel:{launched.channel}"]
    if schedule_id:
        tags.append(f"schedule:{schedule_id}")
    if own_run:
        await _tag_own_run(own_run, tags)
    if launched.status == CampaignStatus.failed:
        logger.error("campaign %s created failed: insufficient credits", launched.campaign_id)
        return Failed(message=f"campaign {launched.campaign_id} failed: insufficient_credits")
    flow_run_id = await PrefectLauncher().launch(
        campaign_id=launched.campaign_id,
        account_id=account_id,
        channel=launched.channel,
        scheduled_at=launched.scheduled_at,
        schedule_id=schedule_id,
        name=name,
    )
    await asyncio.to_thread(_record, launched.campaign_id, flow_run_id)
    logger.info("campaign %s created; flow run %s", launched.campaign_id, flow_run_id)
    return launched.campaign_id

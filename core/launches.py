"""What a launch-campaign flow run does with its parameters: create the campaign exactly as
POST /v1/campaigns would, once per run (a retried or restarted run finds the campaign it
created), tagged with the schedule that fired it. A run that finds too few credits creates
the campaign `failed` with `failure_reason` insufficient_credits (SPEC §8), so the account
sees it; a run of a schedule deleted meanwhile creates nothing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from core import accounts, campaigns, idempotency, lifecycle, schedules
from core.db import session_scope
from core.errors import InsufficientCredits, NotFound
from core.lifecycle import FailureReason
from models.schemas import CampaignCreate


@dataclass(frozen=True)
class Launched:
    """The campaign a launch created (or had created before a restart)."""

    campaign_id: str
    channel: str
    status: str
    scheduled_at: datetime | None
    created_now: bool


def _key(run_key: str) -> str:
    return f"launch:{run_key}"


def _launched(campaign: Any, created_now: bool) -> Launched:
    return Launched(campaign.id, campaign.channel, campaign.status, campaign.scheduled_at, created_now)


def create_for_run(
    engine: Engine,
    *,
    account_id: str,
    data: CampaignCreate,
    schedule_id: str | None = None,
    run_key: str | None = None,
    max_open: int | None = None,
) -> Launched | None:
    """Create the run's campaign (validation, pricing and credit hold as the API does).
    None when `schedule_id` names a schedule that no longer exists."""
    # Not scheduled_at: a schedule's run restarted after its fire time asks for "now" instead.
    asked = data.model_dump(mode="json", exclude={"scheduled_at"})
    digest = idempotency.request_hash("LAUNCH", "launch-campaign", asked)

    def _existing(session: Any) -> Launched | None:
        if run_key is None:
            return None
        record = idempotency.find(session, account_id=account_id, key=_key(run_key), digest=digest)
        if record is None:
            return None
        return _launched(lifecycle.load(session, record.response["id"]), False)

    def _remember(session: Any, campaign_id: str) -> None:
        if run_key is not None:
            idempotency.store(
                session,
                account_id=account_id,
                key=_key(run_key),
                digest=digest,
                status_code=201,
                response={"id": campaign_id},
            )

    with session_scope(engine) as session:
        if accounts.get_account(session, account_id) is None:
            raise NotFound(f"account {account_id} not found")
        if (found := _existing(session)) is not None:
            return found
        if schedule_id is not None and not schedules.exists(session, schedule_id=schedule_id):
            return None
    try:
        with session_scope(engine) as session:
            campaign = campaigns.insert_campaign(
                session,
                campaigns.prepare_campaign(session, account_id=account_id, data=data),
                max_open=max_open,
                schedule_id=schedule_id,
            )
            _remember(session, campaign.id)
            return _launched(campaign, True)
    except InsufficientCredits:
        pass  # rolled back: nothing held
    with session_scope(engine) as session:
        campaign = campaigns.insert_campaign(
            session,
            campaigns.prepare_campaign(session, account_id=account_id, data=data),
            hold=False,
            schedule_id=schedule_id,
        )
        lifecycle.fail(session, campaign_id=campaign.id, reason=FailureReason.insufficient_credits)
        _remember(session, campaign.id)
        return _launched(lifecycle.load(session, campaign.id), True)

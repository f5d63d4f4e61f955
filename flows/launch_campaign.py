"""Flow `launch-campaign`: create a campaign exactly as the API does, then start it.

Its parameters are the fields of POST /v1/campaigns plus `account_id`, so an operator can start
a campaign from the Prefect UI's run form, and a scheduled deployment of it is a recurring
campaign."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger

from core import accounts, campaigns, runs
from core.db import get_engine, session_scope
from core.errors import NotFound
from core.settings import get_settings
from flows.launcher import PrefectLauncher
from models.schemas import CampaignCreate


def _create(account_id: str, data: CampaignCreate) -> dict[str, Any]:
    with session_scope(get_engine(get_settings())) as session:
        if accounts.get_account(session, account_id) is None:
            raise NotFound(f"account {account_id} not found")
        settings = get_settings()
        campaign = campaigns.create_campaign(
            session, account_id=account_id, data=data, max_open=settings.api.max_open_campaigns
        )
        return {"id": campaign.id, "channel": campaign.channel, "scheduled_at": campaign.scheduled_at}


def _record(campaign_id: str, flow_run_id: str) -> None:
    with session_scope(get_engine(get_settings())) as session:
        runs.record_flow_run(session, campaign_id=campaign_id, flow_run_id=flow_run_id)


@flow(name="launch-campaign", log_prints=True, persist_result=False)
async def launch_campaign(
    account_id: str,
    name: str,
    channel: str,
    contact_list_id: str,
    sender_id: str,
    body: str | None = None,
    template: dict[str, Any] | None = None,
    subject: str | None = None,
    scheduled_at: datetime | None = None,
) -> str:
    """Create a campaign (validation, pricing and credit hold as in the API) and run it."""
    logger = get_run_logger()
    data = CampaignCreate.model_validate(
        {
            "name": name,
            "channel": channel,
            "contact_list_id": contact_list_id,
            "sender_id": sender_id,
            "body": body,
            "template": template,
            "subject": subject,
            "scheduled_at": scheduled_at,
        }
    )
    created = await asyncio.to_thread(_create, account_id, data)
    flow_run_id = await PrefectLauncher().launch(
        campaign_id=created["id"],
        account_id=account_id,
        channel=created["channel"],
        scheduled_at=created["scheduled_at"],
    )
    await asyncio.to_thread(_record, created["id"], flow_run_id)
    logger.info("campaign %s created; flow run %s", created["id"], flow_run_id)
    return str(created["id"])

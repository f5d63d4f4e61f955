"""The reconciler: the Prefect flow-run state is the source of truth for campaign status.

Hooks are the fast path; this loop covers what hooks cannot: a runner killed together with its
flow (no hook runs, the run stays Running or is later marked Crashed), a scheduled run cancelled
in the UI (no hook), a flow run that could not be created when the campaign was (Prefect down),
and a run that a worker shutdown stopped (relaunched to resume)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlmodel import Session, col, select

from core import campaigns
from core.db import get_engine, session_scope
from core.launcher import Launcher
from core.settings import Settings
from core.timeutil import as_utc, utcnow
from models import Campaign, CampaignStatus

log = logging.getLogger("campaigns.reconciler")
LAUNCH_GRACE = timedelta(seconds=10)


@dataclass
class ReconcileReport:
    launched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)


def _open_campaigns(session: Session) -> list[Campaign]:
    return list(
        session.exec(
            select(Campaign)
            .where(
                col(Campaign.status).in_(campaigns.OPEN_STATUSES)
                | ((col(Campaign.status) == CampaignStatus.cancelled) & col(Campaign.settled_at).is_(None))
            )
            .limit(5000)
        ).all()
    )


async def _flow_run_states(ids: list[str]) -> dict[str, Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    states: dict[str, Any] = {}
    async with get_client() as client:
        for start in range(0, len(ids), 200):
            batch = [uuid.UUID(i) for i in ids[start : start + 200]]
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=batch)))
            states.update({str(run.id): run.state for run in runs})
    return states


async def reconcile_once(settings: Settings, launcher: Launcher) -> ReconcileReport:
    """One pass over the campaigns that are not final (and cancelled ones not yet settled)."""
    engine = get_engine(settings)
    report = ReconcileReport()

    def _tx(fn: Any, *args: Any, **kwargs: Any) -> Any:
        with session_scope(engine) as session:
            return fn(session, *args, **kwargs)

    rows: list[Campaign] = await asyncio.to_thread(_tx, _open_campaigns)
    now = utcnow()
    for campaign in rows:
        if (
            campaign.flow_run_id is None
            and campaign.status in campaigns.OPEN_STATUSES
            and as_utc(campaign.created_at) < now - LAUNCH_GRACE
        ):
            try:
                run_id = await launcher.launch(
                    campaign_id=campaign.id,
                    account_id=campaign.account_id,
                    channel=campaign.channel,
                    scheduled_at=campaign.scheduled_at,
                    key=campaigns.launch_key(campaign),
                )
            except Exception as exc:
                log.warning("could not launch %s yet: %s", campaign.id, exc)
                continue
            await asyncio.to_thread(
                _tx, campaigns.record_flow_run, campaign_id=campaign.id, flow_run_id=run_id
            )
            report.launched.append(campaign.id)

    tracked = [c for c in rows if c.flow_run_id]
    states = await _flow_run_states([c.flow_run_id for c in tracked if c.flow_run_id]) if tracked else {}
    for campaign in tracked:
        state = states.get(str(campaign.flow_run_id))
        if state is None:
            continue
        await _apply(campaign, state, _tx, report)
    for campaign in rows:
        if campaign.status == CampaignStatus.cancelled and campaign.flow_run_id is None:
            await asyncio.to_thread(
                _tx, campaigns.finalize_stopped, campaign_id=campaign.id, pending_code="cancelled"
            )
            report.settled.append(campaign.id)
    return report


async def _apply(campaign: Campaign, state: Any, _tx: Any, report: ReconcileReport) -> None:
    kind = state.type.value if state is not None else None
    if kind in ("FAILED", "CRASHED"):
        reason = f"{state.name}: {state.message or 'flow run ended'}"
        if campaign.status in campaigns.OPEN_STATUSES and await asyncio.to_thread(
            _tx, campaigns.fail, campaign_id=campaign.id, reason=reason
        ):
            report.failed.append(campaign.id)
        elif campaign.status == CampaignStatus.cancelled:
            await asyncio.to_thread(
                _tx, campaigns.finalize_stopped, campaign_id=campaign.id, pending_code="cancelled"
            )
            report.settled.append(campaign.id)
    elif kind == "CANCELLED":
        if "shutting down" in str(state.message or "").lower() and campaign.status in campaigns.OPEN_STATUSES:
            await asyncio.to_thread(
                _tx,
                campaigns.release_for_resume,
                campaign_id=campaign.id,
                flow_run_id=str(campaign.flow_run_id),
            )
            return
        if campaign.status in campaigns.OPEN_STATUSES:
            await asyncio.to_thread(
                _tx, campaigns.cancel_campaign, account_id=campaign.account_id, campaign_id=campaign.id
            )
            report.cancelled.append(campaign.id)
        await asyncio.to_thread(
            _tx, campaigns.finalize_stopped, campaign_id=campaign.id, pending_code="cancelled"
        )
        report.settled.append(campaign.id)
    elif kind == "COMPLETED":
        if campaign.status in (CampaignStatus.processing, CampaignStatus.sent):
            # The run ended without completing the campaign (it must not, but never hang).
            if await asyncio.to_thread(
                _tx,
                campaigns.fail,
                campaign_id=campaign.id,
                reason="flow run completed before the campaign did",
            ):
                report.failed.append(campaign.id)
        elif campaign.status == CampaignStatus.cancelled:
            await asyncio.to_thread(
                _tx, campaigns.finalize_stopped, campaign_id=campaign.id, pending_code="cancelled"
            )
            report.settled.append(campaign.id)


async def reconcile_forever(settings: Settings, launcher: Launcher) -> None:
    """Run reconcile_once every CAMPAIGNS_RECONCILE_INTERVAL_S seconds until cancelled."""
    while True:
        try:
            report = await reconcile_once(settings, launcher)
            if report.launched or report.failed or report.cancelled:
                log.info("reconciled: %s", report)
        except Exception:
            log.exception("reconcile pass failed; retrying next interval")
        await asyncio.sleep(settings.reconcile_interval_s)

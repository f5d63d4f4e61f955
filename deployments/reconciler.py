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
from core.db import get_engine, run_in_session
from core.launcher import Launcher
from core.settings import Settings
from core.timeutil import as_utc, utcnow
from flows.hooks import stopped_by_shutdown
from models import Campaign, CampaignStatus

log = logging.getLogger("campaigns.reconciler")
LAUNCH_GRACE = timedelta(seconds=10)


@dataclass
class ReconcileReport:
    launched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
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


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        log.warning("campaign flow_run_id %r is not a Prefect flow-run id; ignored", value)
        return False
    return True


async def _flow_run_states(ids: list[str]) -> dict[str, Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    states: dict[str, Any] = {}
    ids = [i for i in ids if _is_uuid(i)]
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
        return run_in_session(engine, fn, *args, **kwargs)

    rows: list[Campaign] = await asyncio.to_thread(_tx, _open_campaigns)
    now = utcnow()
    for campaign in rows:
        if (
            campaign.flow_run_id is None
            and campaign.status in campaigns.OPEN_STATUSES
            # A new campaign's own request is still creating its run; a resumed one waits for us.
            and (campaign.resume_count > 0 or as_utc(campaign.created_at) < now - LAUNCH_GRACE)
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
        await _apply(campaign, state, settings, _tx, report)
    for campaign in rows:
        if campaign.status == CampaignStatus.cancelled and campaign.flow_run_id is None:
            await asyncio.to_thread(
                _tx, campaigns.finalize_stopped, campaign_id=campaign.id, pending_code="cancelled"
            )
            report.settled.append(campaign.id)
    return report


async def _crash_run(flow_run_id: str, message: str) -> None:
    from prefect import get_client
    from prefect.states import Crashed

    async with get_client() as client:
        await client.set_flow_run_state(uuid.UUID(flow_run_id), Crashed(message=message), force=True)


def _is_silent(campaign: Campaign, state: Any, settings: Settings) -> bool:
    """A Running run whose flow stopped writing heartbeats (runner and flow killed together)."""
    last = as_utc(state.timestamp)
    if campaign.heartbeat_at is not None:
        last = max(last, as_utc(campaign.heartbeat_at))
    return (utcnow() - last).total_seconds() > settings.stale_after_s


async def _apply(
    campaign: Campaign, state: Any, settings: Settings, _tx: Any, report: ReconcileReport
) -> None:
    kind = state.type.value
    open_ = campaign.status in campaigns.OPEN_STATUSES
    run_id = str(campaign.flow_run_id)
    if kind == "RUNNING" and open_ and _is_silent(campaign, state, settings):
        message = f"no heartbeat from the flow for {settings.stale_after_s:.0f} s (worker killed?)"
        await _crash_run(run_id, message)
        kind, state = "CRASHED", type("S", (), {"name": "Crashed", "message": message})()
    if kind == "CRASHED" and open_:
        outcome = await asyncio.to_thread(
            _tx,
            campaigns.resume_or_fail,
            campaign_id=campaign.id,
            flow_run_id=run_id,
            reason=f"Crashed: {state.message or 'flow run crashed'}",
            max_resumes=settings.max_resumes,
        )
        {"resumed": report.resumed, "failed": report.failed}.get(outcome, []).append(campaign.id)
    elif kind == "FAILED" and open_:
        reason = f"{state.name}: {state.message or 'flow run failed'}"
        if await asyncio.to_thread(_tx, campaigns.fail, campaign_id=campaign.id, reason=reason):
            report.failed.append(campaign.id)
    elif kind == "CANCELLED" and open_:
        if stopped_by_shutdown(state):
            # A worker stopped cleanly: another run picks the campaign up where it stopped.
            if await asyncio.to_thread(
                _tx, campaigns.release_for_resume, campaign_id=campaign.id, flow_run_id=run_id
            ):
                report.resumed.append(campaign.id)
            return
        await asyncio.to_thread(
            _tx, campaigns.cancel_campaign, account_id=campaign.account_id, campaign_id=campaign.id
        )
        report.cancelled.append(campaign.id)
    elif kind == "COMPLETED" and campaign.status in (CampaignStatus.processing, CampaignStatus.sent):
        # The run ended without completing the campaign (it must not, but never hang).
        reason = "flow run completed before the campaign did"
        if await asyncio.to_thread(_tx, campaigns.fail, campaign_id=campaign.id, reason=reason):
            report.failed.append(campaign.id)
    final_run = kind in ("CRASHED", "FAILED", "CANCELLED", "COMPLETED")
    if (
        final_run
        and await asyncio.to_thread(_tx, campaigns.status_of, campaign.id) == CampaignStatus.cancelled
    ):
        await asyncio.to_thread(
            _tx, campaigns.finalize_stopped, campaign_id=campaign.id, pending_code="cancelled"
        )
        report.settled.append(campaign.id)


async def reconcile_forever(settings: Settings, launcher: Launcher) -> None:
    """Run reconcile_once every CAMPAIGNS_RECONCILE_INTERVAL_S seconds until cancelled."""
    while True:
        try:
            report = await reconcile_once(settings, launcher)
            if report.launched or report.failed or report.cancelled or report.resumed:
                log.info("reconciled: %s", report)
        except Exception:
            log.exception("reconcile pass failed; retrying next interval")
        await asyncio.sleep(settings.reconcile_interval_s)

"""The reconciler: the Prefect flow-run state is the source of truth for a campaign's run.

Hooks are the fast path; this loop covers what hooks cannot: a runner killed together with its
flow (no hook runs, the run stays Running or is later marked Crashed), a scheduled run cancelled
in the UI (no hook), a flow run that could not be created when the campaign was (Prefect down),
a run that a worker shutdown stopped (relaunched to resume), a resume whose Prefect call was
lost, and sender slots or settlements a dead process left behind. What becomes of a campaign is
decided by `core.lifecycle`; this module only observes and reports."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from core import ledger, lifecycle, runs, schedules, slots
from core.db import get_engine, in_session
from core.launcher import Launcher
from core.runs import RunEnd
from core.schedules import Scheduler, SyncPlan
from core.settings import Settings
from core.timeutil import as_utc, utcnow
from flows.hooks import stopped_by_shutdown
from models import Campaign, CampaignStatus

log = logging.getLogger("campaigns.reconciler")
LAUNCH_GRACE = timedelta(seconds=10)
LOST_RESUME = timedelta(seconds=15)
PAGE = 1000  # campaigns per read; a pass reads every page
S = CampaignStatus


@dataclass
class ReconcileReport:
    launched: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    settled: list[str] = field(default_factory=list)

    def add(self, outcome: str, campaign_id: str) -> None:
        """File a runs.run_ended outcome."""
        target = {"resumed": self.resumed, "failed": self.failed, "cancelled": self.cancelled}.get(outcome)
        if target is not None:
            target.append(campaign_id)


def watched_page(
    session: Session, *, after: tuple[datetime, str] | None = None, limit: int = PAGE
) -> list[Campaign]:
    """Open campaigns, and stopped ones whose credits are not settled yet, oldest first: the
    page after the (created_at, id) key `after`. A keyset in a total order, so every pass sees
    every campaign however many one account keeps open."""
    query = select(Campaign).where(
        col(Campaign.status).in_(lifecycle.OPEN_STATUSES)
        | (col(Campaign.status).in_([S.cancelled, S.failed]) & col(Campaign.settled_at).is_(None))
    )
    if after is not None:
        created_at, campaign_id = after
        query = query.where(
            (col(Campaign.created_at) > created_at)
            | ((col(Campaign.created_at) == created_at) & (col(Campaign.id) > campaign_id))
        )
    return list(session.exec(query.order_by(col(Campaign.created_at), col(Campaign.id)).limit(limit)).all())


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
    if not ids:
        return states
    async with get_client() as client:
        for start in range(0, len(ids), 200):
            batch = [uuid.UUID(i) for i in ids[start : start + 200]]
            runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=batch)))
            states.update({str(run.id): run.state for run in runs})
    return states


async def reconcile_once(settings: Settings, launcher: Launcher, *, page_size: int = PAGE) -> ReconcileReport:
    """One pass over the campaigns that are not final (and stopped ones not yet settled), a
    page at a time."""
    engine = get_engine(settings)
    report = ReconcileReport()
    after: tuple[datetime, str] | None = None
    while rows := await in_session(engine, watched_page, after=after, limit=page_size):
        await _reconcile_page(engine, launcher, rows, settings, report)
        if len(rows) < page_size:
            break
        after = (rows[-1].created_at, rows[-1].id)
    await in_session(engine, slots.reap_expired)
    return report


async def _reconcile_page(
    engine: Any, launcher: Launcher, rows: list[Campaign], settings: Settings, report: ReconcileReport
) -> None:
    now = utcnow()
    for campaign in rows:
        if (
            campaign.flow_run_id is None
            and campaign.status in lifecycle.RUNNABLE
            # A new campaign's own request is still creating its run; a resumed one waits for us.
            and (campaign.resume_count > 0 or as_utc(campaign.created_at) < now - LAUNCH_GRACE)
        ):
            await _launch(engine, launcher, campaign, report)
    tracked = [c for c in rows if c.flow_run_id and not lifecycle.is_final(c.status)]
    states = await _flow_run_states([str(c.flow_run_id) for c in tracked]) if tracked else {}
    for campaign in tracked:
        state = states.get(str(campaign.flow_run_id))
        if state is not None:
            await _apply(engine, launcher, campaign, state, settings, report)
    for campaign in rows:
        if await in_session(engine, _settle_stopped, campaign.id):
            report.settled.append(campaign.id)


def _settle_stopped(session: Session, campaign_id: str) -> bool:
    """A cancelled or failed campaign not settled yet (a live attempt held it back): settle it
    now if nothing can send for it any more."""
    campaign = lifecycle.load(session, campaign_id)
    if campaign.settled_at is not None or campaign.status not in (S.cancelled, S.failed):
        return False
    return ledger.finalize_stopped(session, campaign_id=campaign_id, cancelled=campaign.status == S.cancelled)


async def _launch(engine: Any, launcher: Launcher, campaign: Campaign, report: ReconcileReport) -> None:
    try:
        run_id = await launcher.launch(
            campaign_id=campaign.id,
            account_id=campaign.account_id,
            channel=campaign.channel,
            scheduled_at=campaign.scheduled_at,
            key=runs.launch_key(campaign),
            name=campaign.name,
            schedule_id=campaign.schedule_id,
        )
    except Exception as exc:
        log.warning("could not launch %s yet: %s", campaign.id, exc)
        return
    await in_session(engine, runs.record_flow_run, campaign_id=campaign.id, flow_run_id=run_id)
    report.launched.append(campaign.id)


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


def _older(state: Any, age: timedelta) -> bool:
    return utcnow() - as_utc(state.timestamp) > age


def _run_end(kind: str, state: Any) -> RunEnd | None:
    if kind == "CANCELLED":
        return RunEnd.shutdown if stopped_by_shutdown(state) else RunEnd.cancelled
    if kind == "FAILED" and "paused and never resumed" in str(state.message or ""):
        return RunEnd.pause_expired
    return {"CRASHED": RunEnd.crashed, "FAILED": RunEnd.failed, "COMPLETED": RunEnd.completed}.get(kind)


async def _apply(
    engine: Any,
    launcher: Launcher,
    campaign: Campaign,
    state: Any,
    settings: Settings,
    report: ReconcileReport,
) -> None:
    kind = state.type.value
    run_id = str(campaign.flow_run_id)
    if kind == "RUNNING" and campaign.status != S.paused and _is_silent(campaign, state, settings):
        message = f"no heartbeat from the flow for {settings.stale_after_s:.0f} s (worker killed?)"
        await _crash_run(run_id, message)
        kind = "CRASHED"
    if (
        kind == "PAUSED"
        and campaign.status in (S.processing, S.scheduled, S.sent)
        and _older(state, LOST_RESUME)
    ):
        # Resumed through an API process that could not reach Prefect, or suspended in the UI
        # once everything was dispatched (`sent` cannot pause): resume the run now. A fresh
        # Suspend of a sending campaign is mirrored into it within a second, not this.
        if not await launcher.resume(flow_run_id=run_id, scheduled_at=campaign.scheduled_at):
            await in_session(engine, runs.detach, campaign_id=campaign.id, flow_run_id=run_id)
        report.resumed.append(campaign.id)
        return
    end = _run_end(kind, state)
    if end is None:
        return
    outcome = await in_session(
        engine,
        runs.run_ended,
        campaign_id=campaign.id,
        flow_run_id=run_id,
        end=end,
        max_resumes=settings.max_resumes,
    )
    report.add(outcome, campaign.id)


async def sync_schedules(settings: Settings, scheduler: Scheduler) -> SyncPlan:
    """Put back the parameters Prefect emptied (an update without them, e.g. the UI's pause
    toggle, empties them in 3.9: every later run would fail), take an operator's edits as our
    copy, and remove Prefect schedules that have no row (a create that failed half way)."""
    planned = await scheduler.read_all()
    if not planned:
        return SyncPlan({}, set())
    plan = await in_session(get_engine(settings), schedules.sync, planned)
    for slug, parameters in plan.restore.items():
        log.warning("schedule %s lost its parameters in Prefect; restoring them", slug)
        await scheduler.set_parameters(slug, parameters)
    for slug in plan.orphans:
        log.info("removing schedule %s: it has no row (its create failed)", slug)
        await scheduler.delete(slug)
    return plan


async def reconcile_forever(
    settings: Settings, launcher: Launcher, scheduler: Scheduler | None = None
) -> None:
    """Run reconcile_once (and the schedule sync) every CAMPAIGNS_RECONCILE_INTERVAL_S seconds
    until cancelled."""
    while True:
        try:
            report = await reconcile_once(settings, launcher)
            if report.launched or report.failed or report.cancelled or report.resumed:
                log.info("reconciled: %s", report)
        except Exception:
            log.exception("reconcile pass failed; retrying next interval")
        if scheduler is not None:
            try:
                await sync_schedules(settings, scheduler)
            except Exception as exc:
                log.warning("schedule sync failed (%s); retrying next interval", exc)
        await asyncio.sleep(settings.reconcile_interval_s)

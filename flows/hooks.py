"""Flow-run state hooks: the fast path that mirrors a run's end into its campaign.

They run outside the run context (the runner process for crashes), so they only take the
campaign id from the run's parameters and call idempotent core functions. The reconciler
covers the cases where no hook runs at all (runner and flow killed together)."""

from __future__ import annotations

import logging
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.states import State

from core import campaigns
from core.db import get_engine, session_scope
from core.settings import get_settings
from models import CampaignStatus

log = logging.getLogger("campaigns.hooks")


def stopped_by_shutdown(state: Any) -> bool:
    """A run cancelled by its worker shutting down (the Runner's "Runner is shutting down."),
    not by an operator: its campaign is resumed, not cancelled."""
    return "shutting down" in str(state.message or "").lower()


def _campaign_id(flow_run: Any) -> str | None:
    value = (flow_run.parameters or {}).get("campaign_id")
    return str(value) if value else None


def mark_failed(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Failed or Crashed run → campaign failed with the state's message; credits settle."""
    campaign_id = _campaign_id(flow_run)
    if campaign_id is None:
        return
    reason = f"{state.name}: {state.message or 'flow run ended without a message'}"
    settings = get_settings()
    with session_scope(get_engine(settings)) as session:
        if state.is_crashed():
            # The process died (killed, out of memory): resume in a new run, a few times.
            outcome = campaigns.resume_or_fail(
                session,
                campaign_id=campaign_id,
                flow_run_id=str(flow_run.id),
                reason=reason,
                max_resumes=settings.max_resumes,
            )
            log.info("campaign %s after a crash: %s", campaign_id, outcome or "unchanged")
        elif campaigns.fail(session, campaign_id=campaign_id, reason=reason):
            log.info("campaign %s failed: %s", campaign_id, reason)


def mark_cancelled(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Cancelled from the UI or the API → campaign cancelled; unsent credits released.

    A worker shutting down cancels its runs too ("Runner is shutting down."): that campaign is
    not cancelled but handed back for a new run, which resumes where this one stopped."""
    campaign_id = _campaign_id(flow_run)
    if campaign_id is None:
        return
    with session_scope(get_engine(get_settings())) as session:
        status = campaigns.status_of(session, campaign_id)
        if stopped_by_shutdown(state) and status in campaigns.OPEN_STATUSES:
            campaigns.release_for_resume(session, campaign_id=campaign_id, flow_run_id=str(flow_run.id))
            log.info("campaign %s handed back for resumption after a worker shutdown", campaign_id)
            return
        if status in campaigns.OPEN_STATUSES:
            campaigns.cancel_campaign(
                session,
                account_id=campaigns.load(session, campaign_id).account_id,
                campaign_id=campaign_id,
            )
        if campaigns.status_of(session, campaign_id) == CampaignStatus.cancelled:
            campaigns.finalize_stopped(session, campaign_id=campaign_id, pending_code="cancelled")

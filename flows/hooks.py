"""Flow-run state hooks: the fast path that mirrors a run's end into its campaign.

They run outside the run context (in the runner process for crashes and cancellations), take
the campaign id from the run's parameters and hand the end to `runs.run_ended`, which
decides. The reconciler covers the cases where no hook runs at all (runner and flow killed
together)."""

from __future__ import annotations

import logging
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.states import State

from core import attempts, ledger, lifecycle, runs
from core.db import get_engine, session_scope
from core.runs import RunEnd
from core.settings import get_settings
from models import CampaignStatus

log = logging.getLogger("campaigns.hooks")


def stopped_by_shutdown(state: Any) -> bool:
    """A run cancelled by its worker shutting down (the Runner's "Runner is shutting down."),
    not by an operator: its campaign is resumed, not cancelled."""
    return "shutting down" in str(state.message or "").lower()


def _end(flow_run: FlowRun, end: RunEnd, *, process_gone: bool) -> None:
    campaign_id = (flow_run.parameters or {}).get("campaign_id")
    if not campaign_id:
        return
    settings = get_settings()
    with session_scope(get_engine(settings)) as session:
        if process_gone:  # the runner saw the process exit: its leases end now, not in 20 s
            attempts.end_attempts_of_run(session, flow_run_id=str(flow_run.id))
        outcome = runs.run_ended(
            session,
            campaign_id=str(campaign_id),
            flow_run_id=str(flow_run.id),
            end=end,
            max_resumes=settings.max_resumes,
        )
        if lifecycle.status_of(session, str(campaign_id)) == CampaignStatus.cancelled:
            ledger.finalize_stopped(session, campaign_id=str(campaign_id), cancelled=True)
    log.info("campaign %s after its run ended %s: %s", campaign_id, end.value, outcome or "unchanged")


def mark_failed(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Failed run → campaign failed (with a reason meant for the account; the raw error is in
    the run's logs), unless the run already ended the campaign itself."""
    log.warning("flow run %s failed: %s", flow_run.id, state.message)
    _end(flow_run, RunEnd.failed, process_gone=False)


def mark_crashed(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Crashed run (process killed, out of memory) → resumed in a new run, a few times."""
    log.warning("flow run %s crashed: %s", flow_run.id, state.message)
    _end(flow_run, RunEnd.crashed, process_gone=True)


def mark_cancelled(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Cancelled from the UI → campaign cancelled; unsent credits released. A worker shutting
    down cancels its runs too ("Runner is shutting down."): that campaign is handed back for a
    new run, which resumes where this one stopped."""
    end = RunEnd.shutdown if stopped_by_shutdown(state) else RunEnd.cancelled
    _end(flow_run, end, process_gone=True)

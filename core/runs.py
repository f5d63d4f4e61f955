"""The flow runs that carry campaigns: which run a campaign is attached to, its heartbeat,
and what becomes of the campaign when its run ends (decided here for hooks and reconciler
alike, through the transitions of `core.lifecycle`)."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import update
from sqlmodel import Session, col

from core.lifecycle import (
    OPEN_STATUSES,
    Event,
    FailureReason,
    allowed,
    cancel,
    fail,
    is_final,
    load,
)
from core.timeutil import utcnow
from models import Campaign, CampaignStatus

S = CampaignStatus


def record_flow_run(session: Session, *, campaign_id: str, flow_run_id: str) -> None:
    """Remember which flow run carries a campaign."""
    session.execute(update(Campaign).where(col(Campaign.id) == campaign_id).values(flow_run_id=flow_run_id))


def detach(session: Session, *, campaign_id: str, flow_run_id: str) -> bool:
    """Detach a campaign from a run that stopped without finishing it (worker shutdown, crash,
    a pause that outlived its run), so that a new run (new idempotency key) takes it up."""
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


def beat(session: Session, *, campaign_id: str) -> None:
    """The running flow is alive."""
    session.execute(update(Campaign).where(col(Campaign.id) == campaign_id).values(heartbeat_at=utcnow()))


def launch_key(campaign: Campaign) -> str:
    """The idempotency key of the campaign's current flow run."""
    return campaign.id if campaign.resume_count == 0 else f"{campaign.id}:resume-{campaign.resume_count}"


class RunEnd(StrEnum):
    crashed = "crashed"
    failed = "failed"
    cancelled = "cancelled"
    shutdown = "shutdown"  # a worker shutting down cancelled it: resume elsewhere
    completed = "completed"
    pause_expired = "pause_expired"  # Prefect failed a pause that nobody resumed in time


def run_ended(session: Session, *, campaign_id: str, flow_run_id: str, end: RunEnd, max_resumes: int) -> str:
    """A campaign's flow run reached a final state (seen by a hook or the reconciler). Decides,
    for the run the campaign is attached to only, what becomes of the campaign; returns what
    was done ("resumed", "failed", "cancelled", "detached" or "")."""
    campaign = load(session, campaign_id)
    if is_final(campaign.status) or campaign.flow_run_id != flow_run_id:
        return ""
    if campaign.status == S.paused:
        # A paused campaign keeps waiting for its resume, which starts a new run if needed.
        return "detached" if detach(session, campaign_id=campaign_id, flow_run_id=flow_run_id) else ""
    if end in (RunEnd.shutdown, RunEnd.pause_expired):
        return "resumed" if detach(session, campaign_id=campaign_id, flow_run_id=flow_run_id) else ""
    if end == RunEnd.cancelled and allowed(Event.cancel, campaign.status):
        cancel(session, campaign=campaign)
        return "cancelled"
    if end == RunEnd.cancelled:
        # Everything was dispatched (`sent`): there is nothing left to stop, so a new run goes
        # on collecting the receipts.
        return "resumed" if detach(session, campaign_id=campaign_id, flow_run_id=flow_run_id) else ""
    if end == RunEnd.crashed and campaign.resume_count < max_resumes:
        return "resumed" if detach(session, campaign_id=campaign_id, flow_run_id=flow_run_id) else ""
    reason = {
        RunEnd.crashed: FailureReason.crashed,
        RunEnd.failed: FailureReason.internal,
        RunEnd.completed: FailureReason.ended_early,
    }[end]
    return "failed" if fail(session, campaign_id=campaign_id, reason=reason) else ""

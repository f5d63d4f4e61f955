"""The campaign life cycle (SPEC §7): the transition table, and one function per event.

Every transition is one guarded `UPDATE … WHERE status IN (…)`, so of two processes racing for
a transition exactly one wins. The API, the flows, the hooks, the reconciler and the CLI call
these functions; none of them sets a campaign status on its own. The winner of a transition that
changes the status puts `campaign.status_changed` in the webhook outbox in the same transaction
(`_announce`), before the messages it fails report theirs.

| event        | from                                     | to                         |
|--------------|------------------------------------------|----------------------------|
| `start`      | draft                                    | scheduled                  |
| `due`        | draft, scheduled                         | processing                 |
| `dispatched` | processing                               | sent                       |
| `complete`   | sent                                     | completed                  |
| `pause`      | draft, scheduled, processing             | paused                     |
| `resume`     | paused                                   | processing, scheduled      |
| `cancel`     | draft, scheduled, processing, paused     | cancelled                  |
| `edit`       | draft, scheduled                         | draft, scheduled           |
| `fail`       | any non-final                            | failed                     |
| `rerun`      | failed                                   | processing                 |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from core import credits, ledger, slots, webhooks
from core.counts import refresh_counts
from core.errors import Conflict, NotFound
from core.timeutil import as_utc, utcnow
from models import Campaign, CampaignStatus
from models.enums import FINAL_CAMPAIGN_STATUSES

S = CampaignStatus


class Event(StrEnum):
    start = "start"
    due = "due"
    dispatched = "dispatched"
    complete = "complete"
    pause = "pause"
    resume = "resume"
    cancel = "cancel"
    edit = "edit"
    fail = "fail"
    rerun = "rerun"


@dataclass(frozen=True)
class Transition:
    sources: frozenset[str]
    targets: frozenset[str]


def _t(sources: set[S], targets: set[S]) -> Transition:
    return Transition(frozenset(sources), frozenset(targets))


NON_FINAL = {S.draft, S.scheduled, S.processing, S.paused, S.sent}
TRANSITIONS: dict[Event, Transition] = {
    Event.start: _t({S.draft}, {S.scheduled}),
    Event.due: _t({S.draft, S.scheduled}, {S.processing}),
    Event.dispatched: _t({S.processing}, {S.sent}),
    Event.complete: _t({S.sent}, {S.completed}),
    Event.pause: _t({S.draft, S.scheduled, S.processing}, {S.paused}),
    Event.resume: _t({S.paused}, {S.processing, S.scheduled}),
    Event.cancel: _t({S.draft, S.scheduled, S.processing, S.paused}, {S.cancelled}),
    Event.edit: _t({S.draft, S.scheduled}, {S.draft, S.scheduled}),
    Event.fail: _t(NON_FINAL, {S.failed}),
    Event.rerun: _t({S.failed}, {S.processing}),
}
OPEN_STATUSES = tuple(sorted(NON_FINAL))
# A flow run has work to do in these (paused runs wait for a resume).
RUNNABLE = (S.draft, S.scheduled, S.processing, S.sent)


class FailureReason(StrEnum):
    """What `failure_reason` tells the account: a sentence, never internal error text."""

    insufficient_credits = "insufficient_credits"
    provider_credentials = "provider credentials rejected"
    crashed = "the run stopped unexpectedly too many times"
    internal = "sending stopped because of an internal error"
    ended_early = "the run ended before the campaign finished"
    chunk_failed = "a part of the campaign could not be sent"


def allowed(event: Event, status: str) -> bool:
    """True if `event` may happen to a campaign in `status`."""
    return status in TRANSITIONS[event].sources


def is_final(status: str) -> bool:
    """True for completed, failed and cancelled."""
    return status in FINAL_CAMPAIGN_STATUSES


def apply(session: Session, campaign_id: str, event: Event, to: str, **values: Any) -> bool:
    """The guarded transition itself: True if this caller won it."""
    transition = TRANSITIONS[event]
    assert to in transition.targets, f"{event} cannot lead to {to}"
    if event in (Event.pause, Event.resume, Event.cancel):
        values["control_version"] = Campaign.control_version + 1
    result = session.execute(
        update(Campaign)
        .where(col(Campaign.id) == campaign_id, col(Campaign.status).in_(transition.sources))
        .values(status=to, **values)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def load(session: Session, campaign_id: str) -> Campaign:
    """A campaign by id whatever its account (pipeline use)."""
    campaign = session.get(Campaign, campaign_id, populate_existing=True)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return campaign


def status_of(session: Session, campaign_id: str) -> str:
    """The current status, read fresh."""
    value = session.exec(select(Campaign.status).where(Campaign.id == campaign_id)).first()
    if value is None:
        raise NotFound(f"campaign {campaign_id} not found")
    return value


def _announce(session: Session, campaign_id: str) -> None:
    """A status change just won: `campaign.status_changed` with the campaign as it is now."""
    campaign = load(session, campaign_id)
    webhooks.enqueue(
        session, campaign.account_id, webhooks.EventType.campaign_status_changed, campaign=campaign
    )


def _conflict(campaign: Campaign, event: Event) -> Conflict:
    return Conflict(
        f"campaign {campaign.id} is {campaign.status} and cannot be {event.value}d"
        if event != Event.edit
        else f"campaign {campaign.id} is {campaign.status}; only draft and scheduled campaigns can be edited",
        {"status": campaign.status},
    )


# -- the run --


def start(session: Session, *, campaign_id: str, flow_run_id: str | None) -> str:
    """The flow run starts: remember it, and reopen a failed campaign whose run is retried
    from the Prefect UI. Returns the status the run acts on."""
    campaign = load(session, campaign_id)
    if flow_run_id and campaign.flow_run_id != flow_run_id and not is_final(campaign.status):
        session.execute(
            update(Campaign).where(col(Campaign.id) == campaign_id).values(flow_run_id=flow_run_id)
        )
    if campaign.status == S.failed and apply(
        session,
        campaign_id,
        Event.rerun,
        S.processing,
        failure_reason=None,
        settled_at=None,
        completed_at=None,
        flow_run_id=flow_run_id,
        **({"started_at": utcnow()} if campaign.started_at is None else {}),
    ):
        _announce(session, campaign_id)
        return S.processing
    if (
        campaign.status == S.draft
        and _ahead(campaign.scheduled_at)
        and apply(session, campaign_id, Event.start, S.scheduled)
    ):
        _announce(session, campaign_id)
    return status_of(session, campaign_id)


def _ahead(when: datetime | None) -> bool:
    return when is not None and as_utc(when) > utcnow()


def due(session: Session, *, campaign_id: str) -> str:
    """scheduled_at has come: draft/scheduled → processing. Returns the status to act on."""
    campaign = load(session, campaign_id)
    values: dict[str, Any] = {}
    if campaign.started_at is None:
        values["started_at"] = utcnow()
    if apply(session, campaign_id, Event.due, S.processing, **values):
        _announce(session, campaign_id)
    return status_of(session, campaign_id)


def dispatched(session: Session, *, campaign_id: str) -> bool:
    """processing → sent: everything handed to the provider, receipts may still arrive."""
    done = apply(session, campaign_id, Event.dispatched, S.sent, dispatched_at=utcnow())
    if done:
        _announce(session, campaign_id)
    return done


def complete(session: Session, *, campaign_id: str) -> bool:
    """sent → completed (every message final) and settle credits, in one transaction."""
    done = apply(session, campaign_id, Event.complete, S.completed, completed_at=utcnow())
    if done:
        credits.settle(session, campaign_id=campaign_id)
        refresh_counts(session, campaign_id=campaign_id)
        slots.release_all(session, holder=campaign_id)
        _announce(session, campaign_id)  # settled: the event shows the credits used
    return done


def fail(session: Session, *, campaign_id: str, reason: FailureReason | str) -> bool:
    """→ failed with a reason meant for the account. Pending messages stay pending (a retry of
    the flow run resumes them); credits settle once no attempt can still send."""
    done = apply(
        session, campaign_id, Event.fail, S.failed, failure_reason=str(reason), completed_at=utcnow()
    )
    if done:
        _announce(session, campaign_id)
        slots.release_all(session, holder=campaign_id)
        ledger.finalize_stopped(session, campaign_id=campaign_id, cancelled=False)
    return done


# -- control (API, Prefect UI) --


def pause(session: Session, *, campaign: Campaign) -> Campaign:
    """→ paused (a paused campaign stays as it is); Conflict from any other status."""
    if campaign.status == S.paused:
        return campaign
    if not apply(session, campaign.id, Event.pause, S.paused, paused_at=utcnow()):
        raise _conflict(load(session, campaign.id), Event.pause)
    _announce(session, campaign.id)
    return load(session, campaign.id)


def resume(session: Session, *, campaign: Campaign) -> Campaign:
    """paused → processing, or scheduled while scheduled_at is ahead (or the run never started)."""
    ahead = _ahead(campaign.scheduled_at)
    target = S.scheduled if ahead else S.processing
    values: dict[str, Any] = {"paused_at": None}
    if target == S.processing and campaign.started_at is None:
        values["started_at"] = utcnow()
    if not apply(session, campaign.id, Event.resume, target, **values):
        raise _conflict(load(session, campaign.id), Event.resume)
    _announce(session, campaign.id)
    return load(session, campaign.id)


def cancel(session: Session, *, campaign: Campaign) -> Campaign:
    """→ cancelled. Nothing more is sent; once no attempt can still send, unsent messages fail
    `cancelled` and unused credits are released (now, or by the run or the reconciler)."""
    if not apply(session, campaign.id, Event.cancel, S.cancelled, cancelled_at=utcnow()):
        raise _conflict(load(session, campaign.id), Event.cancel)
    _announce(session, campaign.id)  # before the unsent messages fail `cancelled`
    slots.release_all(session, holder=campaign.id)
    ledger.finalize_stopped(session, campaign_id=campaign.id, cancelled=True)
    return load(session, campaign.id)


def edit(session: Session, *, campaign: Campaign, values: dict[str, Any]) -> bool:
    """Apply edited fields to a draft or scheduled campaign (status follows scheduled_at)."""
    when = values.get("scheduled_at", campaign.scheduled_at)
    target = S.scheduled if when is not None else S.draft
    was = campaign.status  # read before the UPDATE, which may refresh `campaign`
    done = apply(session, campaign.id, Event.edit, target, **values)
    if done and was != target:
        _announce(session, campaign.id)
    return done

"""The life cycle (SPEC §7): the transition table, guarded transitions, and what a run's end
does to its campaign."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, update

from core import campaigns, lifecycle, runs
from core.db import session_scope
from core.errors import Conflict
from core.lifecycle import Event, FailureReason
from core.runs import RunEnd
from models import Campaign, CampaignStatus
from models.schemas import CampaignCreate
from tests.factories import make_tenant, start_campaign

S = CampaignStatus
ALL = list(S)


def _campaign(engine: Engine, status: str | None = None, **values: object) -> str:
    tenant = make_tenant(engine, contacts_n=2)
    with session_scope(engine) as session:
        cid = campaigns.create_campaign(
            session,
            account_id=tenant.account_id,
            data=CampaignCreate(
                name="c", channel="sms", contact_list_id=tenant.list_id, sender_id=tenant.sender, body="hi"
            ),
        ).id
        if status or values:
            session.execute(
                update(Campaign)
                .where(Campaign.id == cid)
                .values(**({"status": status} if status else {}), **values)
            )
    return cid


def _load(engine: Engine, cid: str) -> Campaign:
    with session_scope(engine) as session:
        return lifecycle.load(session, cid)


CONTROL = {
    Event.pause: lifecycle.pause,
    Event.resume: lifecycle.resume,
    Event.cancel: lifecycle.cancel,
}
SPEC_SOURCES = {  # SPEC §7's table
    Event.pause: {S.draft, S.scheduled, S.processing},
    Event.resume: {S.paused},
    Event.cancel: {S.draft, S.scheduled, S.processing, S.paused},
}


def test_the_table_is_the_spec() -> None:
    for event, sources in SPEC_SOURCES.items():
        assert lifecycle.TRANSITIONS[event].sources == sources
    assert lifecycle.TRANSITIONS[Event.fail].sources == {S.draft, S.scheduled, S.processing, S.paused, S.sent}
    assert lifecycle.TRANSITIONS[Event.edit].sources == {S.draft, S.scheduled}
    assert lifecycle.TRANSITIONS[Event.rerun].sources == {S.failed}
    assert lifecycle.TRANSITIONS[Event.dispatched].sources == {S.processing}
    assert lifecycle.TRANSITIONS[Event.complete].sources == {S.sent}


@pytest.mark.parametrize("event", list(CONTROL))
@pytest.mark.parametrize("status", ALL)
def test_control_events_follow_the_table_and_anything_else_is_a_conflict(
    engine: Engine, event: Event, status: S
) -> None:
    cid = _campaign(engine, status)
    with session_scope(engine) as session:
        campaign = lifecycle.load(session, cid)
        if status in SPEC_SOURCES[event]:
            after = CONTROL[event](session, campaign=campaign)
            assert after.status in lifecycle.TRANSITIONS[event].targets
            assert after.control_version == 1  # senders learn of it through the version
        elif event == Event.pause and status == S.paused:
            assert CONTROL[event](session, campaign=campaign).status == S.paused  # 200, no change
            assert lifecycle.load(session, cid).control_version == 0
        else:
            with pytest.raises(Conflict):
                CONTROL[event](session, campaign=campaign)
            assert lifecycle.load(session, cid).status == status


def test_resume_goes_back_to_scheduled_while_scheduled_at_is_ahead(engine: Engine) -> None:
    from datetime import timedelta

    from core.timeutil import utcnow

    ahead = _campaign(engine, S.paused, scheduled_at=utcnow() + timedelta(hours=1))
    due = _campaign(engine, S.paused)
    with session_scope(engine) as session:
        assert lifecycle.resume(session, campaign=lifecycle.load(session, ahead)).status == S.scheduled
        resumed = lifecycle.resume(session, campaign=lifecycle.load(session, due))
        assert resumed.status == S.processing and resumed.paused_at is None


def test_two_processes_never_both_win_a_transition(db: Engine) -> None:
    """Pause and cancel racing from many threads: exactly one transition happens first, and the
    campaign ends in one consistent state (cancel always wins eventually: it is allowed from
    paused too)."""
    cid = _campaign(db)
    start_campaign(db, cid)
    wins: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(event: Event) -> None:
        barrier.wait()
        with session_scope(db) as session:
            won = lifecycle.apply(session, cid, event, next(iter(lifecycle.TRANSITIONS[event].targets)))
        if won:
            with lock:
                wins.append(event.value)

    threads = [
        threading.Thread(target=worker, args=(Event.pause if i % 2 else Event.cancel,)) for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count("pause") <= 1 and wins.count("cancel") == 1
    assert _load(db, cid).status == S.cancelled
    assert _load(db, cid).control_version == len(wins)


def test_a_crash_resumes_then_fails_with_a_sentence(engine: Engine) -> None:
    cid = _campaign(engine)
    start_campaign(engine, cid)
    for attempt in range(3):
        run = f"run-{attempt}"
        with session_scope(engine) as session:
            runs.record_flow_run(session, campaign_id=cid, flow_run_id=run)
            assert runs.run_ended(
                session, campaign_id=cid, flow_run_id=run, end=RunEnd.crashed, max_resumes=2
            ) == ("resumed" if attempt < 2 else "failed")
    campaign = _load(engine, cid)
    assert campaign.status == S.failed and campaign.failure_reason == FailureReason.crashed
    assert campaign.settled_at is not None and campaign.credits_reserved == 0


@pytest.mark.parametrize(
    ("status", "end", "outcome", "after"),
    [
        (S.processing, RunEnd.shutdown, "resumed", S.processing),
        (S.processing, RunEnd.cancelled, "cancelled", S.cancelled),
        (S.processing, RunEnd.failed, "failed", S.failed),
        (S.processing, RunEnd.completed, "failed", S.failed),
        (S.paused, RunEnd.crashed, "detached", S.paused),  # waits for its resume
        (S.paused, RunEnd.pause_expired, "detached", S.paused),
        (S.sent, RunEnd.cancelled, "resumed", S.sent),  # everything dispatched: receipts go on
        (S.completed, RunEnd.crashed, "", S.completed),
    ],
)
def test_what_a_runs_end_does(engine: Engine, status: S, end: RunEnd, outcome: str, after: S) -> None:
    cid = _campaign(engine, status, flow_run_id="run-1")
    with session_scope(engine) as session:
        assert (
            runs.run_ended(session, campaign_id=cid, flow_run_id="run-1", end=end, max_resumes=3) == outcome
        )
        # Another run's end never touches a campaign that moved on to a new run.
        assert runs.run_ended(session, campaign_id=cid, flow_run_id="old", end=end, max_resumes=3) == ""
    campaign = _load(engine, cid)
    assert campaign.status == after
    if outcome in ("resumed", "detached"):
        assert campaign.flow_run_id is None and campaign.resume_count == 1
    if after == S.failed:
        assert campaign.failure_reason in {r.value for r in FailureReason}
